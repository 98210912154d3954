"""A small fake training store in the exact on-disk format data_prep writes (see the README / brief).

Features are synthetic but structured like the real ones, so that learning can be measured:
- expression.npy: flattened 68x2 landmarks = mean shape + a strong identity offset (face shape, from a
  few shared modes) + an emotion pattern growing with the level (plus a small per-identity twist) +
  audio-driven mouth motion + noise;
- whisper.npy: 5 layers x 384 at 50 Hz = per-layer rescalings of (speaker timbre from a few shared modes
  + a weaker, speaker-dependent emotion prosody + per-frame phonetic content);
- landmarks.npy, face_box.npy; optionally frames.mp4 and audio.wav (``media=True``, slower).
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dicetalk.constants import EMOTIONS, WHISPER_DIM, WHISPER_LAYERS

N_POINTS = 68
MOUTH = slice(48, 68)
DEFAULT_MEAD_IDS = ("M001", "M002", "M003", "W001", "W002", "W003")


class _World:
    """Fixed random traits shared by every clip of one seed."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.mean_shape = rng.uniform(0.2, 0.8, (N_POINTS, 2))
        self.emotion_pattern = {e: rng.normal(0, 0.05, (N_POINTS, 2)) for e in EMOTIONS if e != "neutral"}
        self.emotion_pattern["neutral"] = np.zeros((N_POINTS, 2))
        self.mouth_open = np.zeros((N_POINTS, 2))
        self.mouth_open[MOUTH, 1] = rng.uniform(0.02, 0.05, 20)
        self.prosody = {e: rng.normal(0, 1, WHISPER_DIM) for e in EMOTIONS}
        # identities vary along a few shared modes (like a 3DMM identity basis / voice space), so invariance
        # learnt from a handful of training identities can carry over to unseen ones
        self.shape_modes = rng.normal(0, 1, (4, N_POINTS, 2))
        self.timbre_modes = rng.normal(0, 1, (4, WHISPER_DIM))
        # each "layer" is a rescaled, shifted copy of one latent (cheap; enough to test the layer mixing)
        self.layer_scale = rng.uniform(0.5, 4.0, (WHISPER_LAYERS, WHISPER_DIM)).astype(np.float32)
        self.layer_shift = rng.normal(0, 1.0, (WHISPER_LAYERS, WHISPER_DIM)).astype(np.float32)

    def identity(self, name: str) -> dict:
        rng = np.random.default_rng([self.seed, _stable_hash(name)])
        return {
            # identity dominates raw landmarks, as on real faces
            "shape": np.tensordot(rng.normal(0, 0.12, 4), self.shape_modes, axes=1),
            "twist": {e: rng.normal(0, 0.01, (N_POINTS, 2)) for e in EMOTIONS},
            "timbre": np.tensordot(rng.normal(0, 1.0, 4), self.timbre_modes, axes=1),
            "prosody_gain": rng.uniform(0.5, 1.0),
        }


def _stable_hash(text: str) -> int:
    return int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little")


def _envelope(rng: np.random.Generator, n: int) -> np.ndarray:
    """A smooth syllable-like envelope in [0, 1] at 50 Hz."""
    raw = rng.uniform(0, 1, n // 6 + 2)
    return np.clip(np.interp(np.arange(n) / 6, np.arange(raw.size), raw), 0, 1)


def _clip_features(world: _World, ident: dict, emotion_mix: Mapping[str, float], n_frames: int, rng) -> dict:
    env50 = _envelope(rng, 2 * n_frames)
    env25 = env50[::2]
    expr_offset = sum(w * (world.emotion_pattern[e] + ident["twist"][e]) for e, w in emotion_mix.items())
    landmarks = (
        world.mean_shape
        + ident["shape"]
        + expr_offset
        + env25[:, None, None] * world.mouth_open
        + rng.normal(0, 0.004, (n_frames, N_POINTS, 2))
    )
    prosody = sum(w * world.prosody[e] for e, w in emotion_mix.items()) * ident["prosody_gain"]
    latent = ident["timbre"] + 0.25 * prosody + rng.normal(0, 1.0, (2 * n_frames, WHISPER_DIM)) * (0.5 + env50[:, None])
    whisper = latent.astype(np.float32)[:, None] * world.layer_scale + world.layer_shift  # (2T, L, W)
    size = 128
    xy = landmarks * size
    box = np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1) / size
    centred = landmarks - landmarks.mean(axis=1, keepdims=True)
    return {
        "expression": centred.reshape(n_frames, -1).astype(np.float32),
        "whisper": whisper.astype(np.float16),
        "landmarks": xy.astype(np.float32),
        "face_box": np.clip(box, 0, 1).astype(np.float32),
        "env50": env50,
    }


def _write_media(clip_dir: Path, feats: dict, n_frames: int) -> None:
    from dicetalk.constants import SAMPLE_RATE, SAMPLES_PER_FRAME
    from dicetalk.media import write_audio, write_video

    size = 32
    frames = np.zeros((n_frames, size, size, 3), np.uint8)
    pts = np.clip(feats["landmarks"] / 128 * size, 0, size - 1).astype(int)
    for t in range(n_frames):
        frames[t, pts[t, :, 1], pts[t, :, 0]] = 255
    write_video(clip_dir / "frames.mp4", frames, 25)
    t = np.arange(n_frames * SAMPLES_PER_FRAME) / SAMPLE_RATE
    env = np.interp(t * 50, np.arange(feats["env50"].size), feats["env50"])
    write_audio(clip_dir / "audio.wav", 0.3 * env * np.sin(2 * np.pi * 180 * t))


def make_fake_store(
    root: str | Path,
    mead_ids: Sequence[str] = DEFAULT_MEAD_IDS,
    splits: Mapping[str, str] | None = None,
    sentences: int = 2,
    n_frames: int = 40,
    hdtf_videos: Sequence[str] = ("WRA_AliceSmith0", "RD_Radio1", "WDA_BobJones1"),
    hdtf_clips_per_video: int = 2,
    hdtf_frames: int = 80,
    seed: int = 0,
    media: bool = False,
) -> Path:
    """Write a fake store under ``root`` and return its path.

    ``splits`` maps a MEAD identity or an HDTF video name to its split; unnamed ones are train. Default
    (None): the last two MEAD identities are val. MEAD has 8 emotions x levels 1-3 (neutral: level 1) x
    ``sentences`` clips per identity.
    """
    root = Path(root)
    world = _World(seed)
    if splits is None:
        splits = {i: "val" for i in mead_ids[-2:]}
    rows = []

    def write_clip(clip_id, dataset, identity, emotion, level, mix, n, split, ident, rng):
        feats = _clip_features(world, ident, mix, n, rng)
        clip_dir = root / "clips" / clip_id
        clip_dir.mkdir(parents=True)
        files = {}
        for name in ("expression", "whisper", "landmarks", "face_box"):
            np.save(clip_dir / f"{name}.npy", feats[name])
            files[name] = f"clips/{clip_id}/{name}.npy"
        if media:
            _write_media(clip_dir, feats, n)
            files.update(frames=f"clips/{clip_id}/frames.mp4", audio=f"clips/{clip_id}/audio.wav")
        source = f"raw/{clip_id}.mp4"
        row = dict(clip_id=clip_id, dataset=dataset, identity=identity, emotion=emotion, level=level,
                   source=source, n_frames=n, fps=25, files=files)
        (clip_dir / "meta.json").write_text(json.dumps(row))
        rows.append({**row, "split": split})

    for ident_name in mead_ids:
        ident = world.identity(ident_name)
        split = splits.get(ident_name, "train")
        for e_idx, emotion in enumerate(EMOTIONS):
            for level in (1,) if emotion == "neutral" else (1, 2, 3):
                for s in range(sentences):
                    clip_id = f"{ident_name}_{emotion}_{level}_{s:03d}"
                    rng = np.random.default_rng([seed, _stable_hash(ident_name), e_idx, level, s])
                    mix = {emotion: 0.5 + 0.25 * level}
                    write_clip(clip_id, "mead", ident_name, emotion, level, mix, n_frames, split, ident, rng)

    for v_idx, video in enumerate(hdtf_videos):
        speaker = re.sub(r"^(WRA|RD|WDA)_", "", re.sub(r"\d+$", "", video))
        ident = world.identity(speaker)
        rng_v = np.random.default_rng([seed, 99, v_idx])
        mix = {e: w for e, w in zip(EMOTIONS, rng_v.dirichlet(np.ones(len(EMOTIONS))) * 0.8)}
        for c in range(hdtf_clips_per_video):
            rng = np.random.default_rng([seed, 99, v_idx, c])
            write_clip(f"{video}_{c:03d}", "hdtf", speaker, None, None, mix, hdtf_frames,
                       splits.get(video, "train"), ident, rng)

    with open(root / "manifest.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    (root / "failures.jsonl").write_text("")
    (root / "prep.log").write_text("fake store written by tests/store_fixtures.py\n")
    return root


def batches_by_epoch(loader, epochs: Sequence[int]) -> list[list]:
    """The batch sampler's batches after Lightning's own epoch hook (what the fit loop calls at every epoch
    start: set_epoch on dataloader.sampler and dataloader.batch_sampler.sampler) for each of ``epochs``."""
    from lightning.fabric.utilities.data import _set_sampler_epoch

    orders = []
    for epoch in epochs:
        _set_sampler_epoch(loader, epoch)
        orders.append(list(loader.batch_sampler))
    return orders


def fake_trainer(batches_done: int = 0, overfit_batches: int = 0):
    """What EpochBatchSampler.follow reads from a Trainer: its overfit setting and epoch progress."""
    from types import SimpleNamespace

    progress = SimpleNamespace(is_last_batch=False, current=SimpleNamespace(processed=batches_done))
    return SimpleNamespace(overfit_batches=overfit_batches,
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))
