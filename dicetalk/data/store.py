"""Read-only access to a training store written by data_prep (layout in the README / DESIGN.md).

The manifest gives one row per finished clip; per-clip arrays are opened lazily with ``np.load(mmap_mode='r')``
so that DataLoader workers read only the frames they need.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REQUIRED_KEYS = ("clip_id", "dataset", "identity", "emotion", "level", "n_frames", "split")


@dataclass(frozen=True)
class Clip:
    """One manifest row."""

    clip_id: str
    dataset: str
    identity: str
    emotion: str | None
    level: int | None
    n_frames: int
    split: str
    fps: int = 25
    source: str = ""
    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict, where: str) -> "Clip":
        """Build a Clip from a manifest/meta row; ``where`` names the row in error messages."""
        missing = [k for k in REQUIRED_KEYS if k not in row]
        if missing:
            raise ValueError(f"{where}: missing keys {missing}")
        known = {k: row[k] for k in cls.__dataclass_fields__ if k in row}
        return cls(**known)


class Store:
    """A store folder: its manifest rows and the arrays of each clip."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest = self.root / "manifest.jsonl"
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: no manifest (run `python -m data_prep index {self.root}`)")
        self.clips: list[Clip] = []
        with manifest.open() as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{manifest}:{n}: invalid JSON ({e.msg})") from None
                self.clips.append(Clip.from_row(row, f"{manifest}:{n}"))
        self._by_id = {c.clip_id: c for c in self.clips}

    def __len__(self) -> int:
        return len(self.clips)

    def clip(self, clip_id: str) -> Clip:
        """The manifest row of one clip."""
        try:
            return self._by_id[clip_id]
        except KeyError:
            raise KeyError(f"{self.root / 'manifest.jsonl'}: no clip {clip_id!r}") from None

    def select(
        self,
        datasets: Iterable[str] | None = None,
        splits: Iterable[str] | None = None,
        min_frames: int = 0,
    ) -> list[Clip]:
        """Clips of the given datasets and splits (None = all) with at least ``min_frames`` frames."""
        ds = None if datasets is None else set(datasets)
        sp = None if splits is None else set(splits)
        return [
            c
            for c in self.clips
            if (ds is None or c.dataset in ds) and (sp is None or c.split in sp) and c.n_frames >= min_frames
        ]

    def path(self, clip: Clip | str, name: str) -> Path:
        """Path of one per-clip file: ``files[name]`` from the manifest, else ``clips/<id>/<name>.npy``."""
        clip = self.clip(clip) if isinstance(clip, str) else clip
        rel = clip.files.get(name, f"clips/{clip.clip_id}/{name}.npy")
        return self.root / rel

    def array(self, clip: Clip | str, name: str) -> np.ndarray:
        """A per-clip .npy array, memory-mapped read-only (slice it to read only what is needed)."""
        path = self.path(clip, name)
        try:
            return np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: missing (store incomplete?)") from None
        except ValueError as e:
            raise ValueError(f"{path}: unreadable array ({e})") from None
