"""2-process CPU DDP (gloo) runs of the tiny embedder and the tiny talker through ``dicetalk fit``.

Each run uses configs/tiny/<stage>.yaml with only paths, sizes and the device count changed. The ranks
record their batches and weights (tests/ddp_record.py); the test checks that the run completes, every rank
ends with the same trained weights, the saved checkpoint holds exactly those, and the batch samplers keep
their promises on every rank: stage 1 never puts two pairs with the same positive key in a global batch,
stage 2 fills every per-rank batch half with emotion-set (MEAD), half with regular-set (HDTF) clips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from store_fixtures import make_fake_store
from talker_fixtures import PRIOR_WINDOW, make_embedder_ckpt, make_talker_store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
STEPS = 3


def _fit_ddp(stage: str, root: Path, model: dict, data: dict) -> list[dict]:
    """Run ``dicetalk fit`` on configs/tiny/<stage>.yaml in 2 gloo processes; return each rank's records."""
    config = yaml.safe_load((REPO / "configs" / "tiny" / f"{stage}.yaml").read_text())
    config["trainer"].update(
        devices=2, max_steps=STEPS, default_root_dir=str(root), logger=False, enable_model_summary=False,
        strategy={"class_path": "lightning.pytorch.strategies.DDPStrategy",
                  "init_args": {"process_group_backend": "gloo"}},
        callbacks=[
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": str(root / "checkpoints"), "save_last": True, "save_top_k": 0,
                           "every_n_train_steps": STEPS}},
            {"class_path": "ddp_record.RecordRank", "init_args": {"root": str(root)}},
        ],
    )
    assert config["trainer"]["use_distributed_sampler"] is False  # the samplers shard by rank themselves
    config["model"]["init_args"].update(model)
    config["data"]["init_args"].update(data)
    root.mkdir()
    path = root.parent / f"{stage}_ddp.yaml"  # not in root: the CLI saves its own config.yaml there
    path.write_text(yaml.safe_dump(config))

    # a clean launch environment (no SLURM / torchrun variables of an outer job); one thread a rank
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "LOCAL_RANK", "WORLD_"))}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")])), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "dicetalk.cli", "fit", "--config", str(path)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    ranks = []
    for r in (0, 1):
        state = torch.load(root / f"rank{r}.pt", weights_only=True)
        state["batches"] = json.loads((root / f"rank{r}.json").read_text())
        ranks.append(state)
    return ranks


def _assert_ranks_agree_with_checkpoint(ranks: list[dict], ckpt_path: Path, ema: bool = False) -> None:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == STEPS
    for rank in ranks:
        assert rank["global_step"] == STEPS
        assert [b["step"] for b in rank["batches"]] == list(range(STEPS))
        assert set(rank["final"]) == set(ckpt["state_dict"])
        for key, value in ckpt["state_dict"].items():
            assert torch.equal(rank["final"][key], value), key
        if ema:
            for key, value in ckpt["talker_ema"].items():
                assert torch.equal(rank["ema"][key], value), key
    # training moved the weights (agreeing on untouched initial weights would prove nothing)
    changed = [k for k, v in ranks[0]["final"].items() if not torch.equal(v, ranks[0]["initial"][k])]
    assert len(changed) > len(ranks[0]["final"]) // 2, changed
    # the ranks trained on different data
    assert ranks[0]["batches"] != ranks[1]["batches"]


def test_embedder_ddp(tmp_path):
    store = make_fake_store(tmp_path / "store")  # 4 train identities x 8 emotions + 3 HDTF videos: 35 keys
    ranks = _fit_ddp("embedder", tmp_path / "run", model={}, data={"store": str(store), "batch_size": 8})
    for step in range(STEPS):
        per_rank = [r["batches"][step]["keys"] for r in ranks]
        assert [len(k) for k in per_rank] == [8, 8]
        global_keys = per_rank[0] + per_rank[1]
        assert len(set(global_keys)) == len(global_keys), f"step {step}: repeated positive key {global_keys}"
    _assert_ranks_agree_with_checkpoint(ranks, tmp_path / "run" / "checkpoints" / "last.ckpt")


def test_talker_ddp(tmp_path):
    store = make_talker_store(tmp_path / "store")
    ckpt = make_embedder_ckpt(tmp_path / "embedder.ckpt")
    data = {"store": str(store), "prior_window": PRIOR_WINDOW, "min_ref_gap": 10, "batch_size": 4}
    ranks = _fit_ddp("talker", tmp_path / "run", model={"embedder_ckpt": str(ckpt)}, data=data)
    for rank in ranks:
        for batch in rank["batches"]:
            assert Counter(batch["datasets"]) == {"mead": 2, "hdtf": 2}, batch
    _assert_ranks_agree_with_checkpoint(ranks, tmp_path / "run" / "checkpoints" / "last.ckpt", ema=True)
