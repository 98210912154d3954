"""EmbedderModule: LR schedule, LightningCLI instantiation from the YAML configs, a short fit with
TensorBoard logging, checkpoint -> load_embedder, and resuming from last.ckpt."""
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from store_fixtures import make_fake_store

from dicetalk.data.embedder_data import EmbedderDataModule
from dicetalk.lightning import EmbedderModule
from dicetalk.lightning.embedder_module import warmup_cosine
from dicetalk.models.embedder import load_embedder
from dicetalk.priors import checkpoint_window

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny" / "embedder.yaml"
FULL = ROOT / "configs" / "embedder.yaml"


def test_warmup_cosine():
    assert warmup_cosine(0, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 110, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 110, 0.1) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_fake_store(tmp_path_factory.mktemp("fake") / "store", mead_ids=("M001", "M002", "W001", "W002"),
                           sentences=1, n_frames=24, hdtf_frames=48)


def cli(config: Path, *extra: str) -> LightningCLI:
    return LightningCLI(EmbedderModule, EmbedderDataModule, subclass_mode_model=True, subclass_mode_data=True,
                        args=["--config", str(config), *extra], run=False)


def test_full_config_instantiates():
    c = cli(FULL, "--trainer.accelerator", "cpu", "--trainer.precision", "32-true")
    assert c.model.embedder.config.d_model == 256 and c.model.embedder.config.prior_dim == 256
    assert c.datamodule.hparams.window == 50
    assert c.trainer.max_steps == 100_000


@pytest.mark.usefixtures("one_thread")
def test_tiny_config_fit_log_checkpoint_resume(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's relative output paths land here
    out = tmp_path / "demo" / "embedder"
    args = ["--data.store", str(store), "--data.window", "8", "--data.batch_size", "4",
            "--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.log_every_n_steps", "1"]
    c = cli(TINY, *args)
    assert isinstance(c.model, EmbedderModule) and isinstance(c.datamodule, EmbedderDataModule)
    assert c.model.embedder.config.d_model == 64
    c.trainer.fit(c.model, c.datamodule)
    assert c.trainer.global_step == 6

    metrics = c.trainer.callback_metrics
    for name in ("train/loss", "train/pos_cos", "train/neg_cos", "train/top1", "val/clustering_video_audio",
                 "val/clustering_video", "val/clustering_audio", "val/knn5_emotion_video_audio",
                 "val/identity_probe_prior", "val/identity_probe_raw_visual"):
        assert name in metrics and torch.isfinite(metrics[name]), name
    # expression statistics were fitted from the data before training
    assert not torch.allclose(c.model.embedder.expression_std, torch.ones(136))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(out.rglob("events.out.tfevents.*")).parent), size_guidance={"images": 0})
    events.Reload()
    assert "val/tsne_priors" in events.Tags()["images"]
    assert "train/loss" in events.Tags()["scalars"]

    last = out / "checkpoints" / "last.ckpt"
    model = load_embedder(str(last))
    assert checkpoint_window(last) == 8
    e, w = torch.randn(2, 8, 136), torch.randn(2, 16, 5, 384)
    c.model.embedder.eval()
    torch.testing.assert_close(model(e, w, "both").mu, c.model.embedder(e, w, "both").mu)

    resumed = cli(TINY, *[a if a != "6" else "9" for a in args])
    resumed.trainer.fit(resumed.model, resumed.datamodule, ckpt_path=str(last))
    assert resumed.trainer.global_step == 9
