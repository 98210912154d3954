"""Shared helpers for the stage-2 tests: a tiny store with 32 px media and a stage-1 checkpoint."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from dicetalk.models.embedder import EmbedderConfig, EmotionEmbedder
from store_fixtures import make_fake_store

PRIOR_WINDOW = 8


def make_talker_store(root: Path, mead_ids=("M001", "W001", "M002"), n_frames: int = 40) -> Path:
    """MEAD (22 clips per identity, the last identity val) + 2 HDTF videos (one val), with frames.mp4."""
    return make_fake_store(
        root, mead_ids=mead_ids, splits={mead_ids[-1]: "val", "RD_Radio1": "val"}, sentences=1,
        n_frames=n_frames, hdtf_videos=("WRA_AliceSmith0", "WDA_BobJones1", "RD_Radio1"), hdtf_clips_per_video=1,
        hdtf_frames=n_frames, media=True,
    )


def make_embedder_ckpt(path: Path, window: int = PRIOR_WINDOW, seed: int = 0) -> Path:
    """A small random embedder saved in EmbedderModule's checkpoint format (what load_embedder reads)."""
    torch.manual_seed(seed)
    config = EmbedderConfig(d_model=32, n_layers=1, n_heads=2, ff_dim=64, dropout=0.0, max_frames=32)
    model = EmotionEmbedder(config)
    state = {f"embedder.{k}": v for k, v in model.state_dict().items()}
    torch.save({"embedder_config": asdict(config), "state_dict": state, "embedder_window": window}, path)
    return path


def tiny_data_args(store: Path, **overrides) -> dict:
    """TalkerDataModule arguments for the tiny talker on the store above."""
    args = dict(store=str(store), num_frames=4, stride=2, min_ref_gap=10, prior_window=PRIOR_WINDOW, frame_size=32,
                batch_size=2, num_workers=0, val_samples=2, val_batch_size=2)
    args.update(overrides)
    return args
