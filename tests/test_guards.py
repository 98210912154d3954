"""Guards: NonFiniteLossGuard (stop with a checkpoint of the last good weights, or skip the step) and preflight."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from dicetalk import preflight
from dicetalk.lightning.callbacks import NonFiniteLossError, NonFiniteLossGuard
from dicetalk.preflight import PreflightError, Requirement, check, check_config, load_config
from toy_training import ToyData, ToyModule, make_trainer

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
TOY = Path(__file__).with_name("toy_training.py")


class WeightRecorder(pl.Callback):
    """Weights before and after every training batch, and the optimizer step count after it."""

    def __init__(self):
        self.before: list[dict[str, torch.Tensor]] = []
        self.after: list[dict[str, torch.Tensor]] = []

    @staticmethod
    def _copy(module):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before.append(self._copy(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append(self._copy(pl_module))


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _fit(tmp_path, guard, max_steps=6, **module_kwargs):
    pl.seed_everything(0)
    model, recorder = ToyModule(**module_kwargs), WeightRecorder()
    trainer = make_trainer(tmp_path, max_steps, guard=guard, every_n_steps=100)
    trainer.callbacks.append(recorder)
    return model, trainer, recorder


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_stop_raises_clear_error_and_saves_last_good_weights(tmp_path, value):
    model, trainer, recorder = _fit(tmp_path, NonFiniteLossGuard("stop"), nan_at_batches=(3,), nan_value=value)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \((nan|inf)\) at global step 3") as info:
        trainer.fit(model, ToyData())
    ckpt = tmp_path / "checkpoints" / "nonfinite-step=3.ckpt"
    assert str(ckpt) in str(info.value)
    assert ckpt.is_file()
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 3
    # the checkpoint holds the weights after step 2, i.e. before the non-finite step touched them
    assert _equal(state["state_dict"], recorder.after[2])
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert len(recorder.after) == 3  # stopped inside batch 3


def test_skip_leaves_weights_unchanged_and_training_continues(tmp_path):
    guard = NonFiniteLossGuard("skip")
    model, trainer, recorder = _fit(tmp_path, guard, max_steps=6, nan_at_batches=(2,))
    trainer.fit(model, ToyData())
    assert _equal(recorder.before[2], recorder.after[2])  # the skipped step changed nothing
    assert not _equal(recorder.before[3], recorder.after[3])  # the next one trains again
    # Lightning still counts the skipped step (optimizer.step runs, but no parameter has a gradient)
    assert trainer.global_step == 6 and model.seen_steps == list(range(6))
    assert guard.total_skips == 1 and guard.consecutive_skips == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_stops_after_too_many_consecutive_skips(tmp_path):
    guard = NonFiniteLossGuard("skip", max_consecutive_skips=2)
    model, trainer, _ = _fit(tmp_path, guard, nan_at_batches=tuple(range(1, 10)))
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row at global step 3"):
        trainer.fit(model, ToyData())
    assert (tmp_path / "checkpoints" / "nonfinite-step=3.ckpt").is_file()


def test_invalid_mode_is_refused():
    with pytest.raises(ValueError, match="on_nonfinite must be 'stop' or 'skip'"):
        NonFiniteLossGuard("ignore")


# -- preflight: every missing input in one error ---------------------------------------------------------------


def test_check_lists_every_missing_requirement_once(tmp_path):
    (tmp_path / "have.ckpt").write_bytes(b"x")
    (tmp_path / "folder").mkdir()
    reqs = [Requirement("store", str(tmp_path / "store" / "manifest.jsonl"), "run prep"),
            Requirement("ckpt", str(tmp_path / "have.ckpt"), "train it"),
            Requirement("weights", str(tmp_path / "svd"), "download svd", "dir"),
            Requirement("a file, not a folder", str(tmp_path / "folder"), "fix the path")]
    with pytest.raises(PreflightError) as info:
        check(reqs, "cfg.yaml")
    lines = str(info.value).splitlines()
    assert lines[0] == "3 missing input(s) for cfg.yaml:"
    assert lines[1] == f"  - store: {tmp_path}/store/manifest.jsonl not found. run prep"
    assert lines[2] == f"  - weights: {tmp_path}/svd not found. download svd"
    assert lines[3].startswith("  - a file, not a folder:")
    check(reqs[1:2])  # all present: no error


def test_requirements_from_config_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("DICETALK_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "manifest.jsonl").write_text("{}\n")
    (tmp_path / "weights" / "whisper-tiny").mkdir(parents=True)
    config = {"data": {"init_args": {"store": "store"}},
              "model": {"init_args": {"embedder_ckpt": "emb/last.ckpt", "pretrained": "svd-xt",
                                      "whisper": "whisper-tiny"}},
              "ckpt_path": "auto"}
    with pytest.raises(PreflightError) as info:
        check_config(config)
    message = str(info.value)
    assert message.startswith("2 missing input(s):")
    assert "stage-1 embedder checkpoint (model.init_args.embedder_ckpt): emb/last.ckpt not found" in message
    assert f"{tmp_path}/weights/stable-video-diffusion-img2vid-xt not found" in message  # registry name
    assert "dicetalk weights download svd-xt" in message
    assert "store" not in message and "whisper" not in message and "ckpt_path" not in message
    config["model"]["init_args"].update(embedder_ckpt=None, pretrained=None)
    check_config(config)


def test_load_config_applies_cli_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  class_path: D\n  init_args:\n    store: a\nmodel:\n  init_args: {lr: 1}\n")
    config = load_config(path, ["--data.store", "b", "--model.init_args.embedder_ckpt=e.ckpt", "--ckpt_path",
                                "x.ckpt", "--trainer.fast_dev_run"])
    assert config["data"]["init_args"]["store"] == "b"
    assert config["model"]["init_args"] == {"lr": 1, "embedder_ckpt": "e.ckpt"}
    assert config["ckpt_path"] == "x.ckpt"
    path.write_text("data: [unclosed\n")
    with pytest.raises(PreflightError, match="c.yaml: not valid YAML"):
        load_config(path)


def test_preflight_cli(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(f"data:\n  init_args:\n    store: {tmp_path / 'nowhere'}\n")
    assert preflight.main([str(path)]) == 1
    assert "make prep-mead" in capsys.readouterr().err
    assert preflight.main([str(path), "--data.store", str(tmp_path)]) == 1
    (tmp_path / "manifest.jsonl").write_text("{}\n")
    assert preflight.main([str(path), "--data.store", str(tmp_path)]) == 0


def test_ddp_ranks_skip_and_stop_together(tmp_path):
    """2 gloo processes: a NaN on rank 1 only is skipped on both ranks; SIGTERM to rank 0 only stops both
    ranks at the same step with the same weights, and one checkpoint of that state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "LOCAL_RANK", "WORLD_"))}
    # batch 2 is NaN on rank 1, rank 0 gets SIGTERM when step 5 starts
    proc = subprocess.run([sys.executable, str(TOY), str(tmp_path), "--max-steps", "10", "--ddp", "2", "1", "5", "0"],
                          env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 143, out
    assert "non-finite loss on another rank at global step 2: step skipped" in out  # logged by rank 0
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["seen_steps"] == rank1["seen_steps"] == list(range(6))
    ckpt = torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["hpc_ckpt_1.ckpt"]
    guard_state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("NonFiniteLossGuard"))
    assert guard_state == {"total_skips": 1}
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(rank0["state_dict"][key], value) and torch.equal(rank1["state_dict"][key], value), key
