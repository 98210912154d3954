"""Stage-1 data: contrastive window pairs, a key-aware batch sampler, evaluation windows, the DataModule.

Positive keys (paper 4.1): MEAD pairs share identity and emotion (optionally level); HDTF pairs are two
non-overlapping windows of the same source video (clips ``{video}_{NNN}`` of one video share the key).
A batch never holds two pairs with the same key, so no positive is ever used as a negative. With
``negatives="emotion_only"`` the loss additionally ignores same-emotion rows of other identities.
"""
from __future__ import annotations

import re
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dicetalk.constants import EMOTION_TO_ID
from dicetalk.data.epochs import EpochBatchSampler
from dicetalk.data.store import Clip, Store

_CLIP_SUFFIX = re.compile(r"_\d+$")


def video_id(clip_id: str) -> str:
    """Source video of a clip: ``WRA_AdamKinzinger0_003`` -> ``WRA_AdamKinzinger0``."""
    return _CLIP_SUFFIX.sub("", clip_id)


def positive_key(clip: Clip, same_level: bool = False) -> str:
    """Key shared by every clip that may form a positive pair with ``clip``."""
    if clip.emotion is not None:
        level = f"/{clip.level}" if same_level else ""
        return f"{clip.dataset}/{clip.identity}/{clip.emotion}{level}"
    return f"{clip.dataset}/video/{video_id(clip.clip_id)}"


def read_window(store: Store, clip: Clip, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Expression (length, D) float32 and whisper (2*length, L, W) float16 of frames [start, start+length).

    Whisper frames past the end of the audio are zero (audio may be slightly shorter than the video).
    """
    expr = np.array(store.array(clip, "expression")[start : start + length], dtype=np.float32)
    if expr.shape[0] != length:
        raise ValueError(f"{store.path(clip, 'expression')}: {expr.shape[0]} frames from {start}, need {length}")
    whisper_all = store.array(clip, "whisper")
    whisper = np.zeros((2 * length, *whisper_all.shape[1:]), dtype=np.float16)
    part = whisper_all[2 * start : 2 * (start + length)]
    whisper[: part.shape[0]] = part
    return expr, whisper


@dataclass(frozen=True)
class PairGroup:
    key: str
    clips: tuple[Clip, ...]
    # same emotion (and level, with same_level) from other identities: positives when crossing identities
    cross: tuple[Clip, ...] = ()


class PairDataset(Dataset):
    """Contrastive pairs drawn from groups of clips sharing a positive key.

    ``cross_identity`` (default 0, the paper's setting) is the probability that a MEAD pair takes its
    positive from another identity with the same emotion (and level, with ``same_level``): this teaches the
    prior to ignore identity. When it is > 0 (or ``negatives="emotion_only"``) the loss mask key of a MEAD
    pair is its emotion, so same-emotion rows of other identities are never negatives.

    Items are addressed by ``(group_index, seed)`` (what KeyAwareBatchSampler yields), so the windows drawn
    depend only on the sampler's seed, never on the worker that loads them.
    """

    def __init__(self, store: Store, clips: Sequence[Clip], window: int, same_level: bool = False,
                 negatives: str = "all", cross_identity: float = 0.0):
        if negatives not in ("all", "emotion_only"):
            raise ValueError(f"negatives must be 'all' or 'emotion_only', got {negatives!r}")
        if not 0.0 <= cross_identity <= 1.0:
            raise ValueError(f"cross_identity must be a probability, got {cross_identity}")
        self.store, self.window, self.cross_identity = store, window, cross_identity
        by_key: dict[str, list[Clip]] = defaultdict(list)
        by_emotion: dict[tuple, list[Clip]] = defaultdict(list)
        for c in clips:
            if c.n_frames >= window:
                by_key[positive_key(c, same_level)].append(c)
                if c.emotion is not None:
                    by_emotion[(c.dataset, c.emotion, c.level if same_level else None)].append(c)

        def cross(cs: list[Clip]) -> tuple[Clip, ...]:
            c0 = cs[0]
            if c0.emotion is None:
                return ()
            pool = by_emotion[(c0.dataset, c0.emotion, c0.level if same_level else None)]
            return tuple(c for c in pool if c.identity != c0.identity)

        self.groups = [
            PairGroup(k, tuple(cs), cross(cs))
            for k, cs in sorted(by_key.items())
            if len(cs) >= 2 or cs[0].n_frames >= 2 * window
        ]
        if not self.groups:
            raise ValueError(f"{store.root}: no clip group can form a pair of {window}-frame windows")
        by_emotion_mask = negatives == "emotion_only" or cross_identity > 0
        mask_names = [
            f"emotion/{g.clips[0].emotion}" if by_emotion_mask and g.clips[0].emotion else g.key for g in self.groups
        ]
        names = sorted(set(mask_names))
        self.mask_keys = [names.index(m) for m in mask_names]

    def __len__(self) -> int:
        return len(self.groups)

    def _draw(self, group: PairGroup, rng: np.random.Generator) -> list[tuple[Clip, int]]:
        n = self.window

        def window_in(clip: Clip) -> tuple[Clip, int]:
            return clip, int(rng.integers(0, clip.n_frames - n + 1))

        if group.cross and rng.random() < self.cross_identity:
            anchor = group.clips[rng.integers(len(group.clips))]
            return [window_in(anchor), window_in(group.cross[rng.integers(len(group.cross))])]
        if len(group.clips) >= 2:
            picks = rng.choice(len(group.clips), size=2, replace=False)
            return [window_in(group.clips[i]) for i in picks]
        clip = group.clips[0]  # one clip: two non-overlapping windows
        first = int(rng.integers(0, clip.n_frames - 2 * n + 1))
        second = int(rng.integers(first + n, clip.n_frames - n + 1))
        return [(clip, first), (clip, second)] if rng.random() < 0.5 else [(clip, second), (clip, first)]

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        group_index, seed = item
        (ca, sa), (cp, sp) = self._draw(self.groups[group_index], np.random.default_rng(seed))
        ea, wa = read_window(self.store, ca, sa, self.window)
        ep, wp = read_window(self.store, cp, sp, self.window)
        return {
            "anchor_expression": torch.from_numpy(ea),
            "anchor_whisper": torch.from_numpy(wa),
            "positive_expression": torch.from_numpy(ep),
            "positive_whisper": torch.from_numpy(wp),
            "key": torch.tensor(group_index),
            "mask_key": torch.tensor(self.mask_keys[group_index]),
        }


class KeyAwareBatchSampler(EpochBatchSampler[list[tuple[int, int]]]):
    """Batches of ``(group_index, seed)`` in which no group (= positive key) appears twice.

    Every epoch each group appears ``repeats`` times. Global batches of ``batch_size * num_replicas``
    distinct groups are formed (the same on every rank: same seed and epoch) and rank r takes the r-th
    slice, so the rows gathered across ranks are also key-distinct and every rank has the same number of
    equal-size batches (all_gather in the loss needs equal shapes). The last incomplete batch is dropped.
    Resumable mid-epoch (``skip``, see :class:`EpochBatchSampler`).
    """

    def __init__(self, n_groups: int, batch_size: int, repeats: int = 1, seed: int = 0, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0):
        global_batch = batch_size * num_replicas
        if n_groups < global_batch:
            raise ValueError(
                f"only {n_groups} distinct positive keys for a global batch of {global_batch} "
                f"({batch_size} x {num_replicas} ranks): lower batch_size"
            )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.n_groups, self.batch_size, self.repeats = n_groups, batch_size, repeats
        self.seed, self.shuffle, self.num_replicas, self.rank = seed, shuffle, num_replicas, rank

    def _global_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = np.concatenate([
            rng.permutation(self.n_groups) if self.shuffle else np.arange(self.n_groups) for _ in range(self.repeats)
        ]).tolist()
        size = self.batch_size * self.num_replicas
        pending, batches = deque(order), []
        while True:
            batch, seen, skipped = [], set(), []
            while pending and len(batch) < size:
                g = pending.popleft()
                if g in seen:
                    skipped.append(g)  # its key is already in this batch: keep it for the next one
                else:
                    batch.append(g)
                    seen.add(g)
            pending.extendleft(reversed(skipped))
            if len(batch) < size:
                return batches
            batches.append(batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        skip = self.take_skip()
        for b, batch in enumerate(self._global_batches()):
            seeds = rng.integers(0, 2**63 - 1, size=len(batch))  # drawn for the global batch: rank-independent
            if b >= skip:
                yield [(g, int(s)) for g, s in zip(batch[lo:hi], seeds[lo:hi])]

    def __len__(self) -> int:
        return len(self._global_batches())


class EvalWindowDataset(Dataset):
    """Fixed, evenly spaced windows of labelled (emotion) clips, for clustering / kNN / probes."""

    def __init__(self, store: Store, clips: Sequence[Clip], window: int, windows_per_clip: int = 2):
        self.store, self.window = store, window
        usable = [c for c in clips if c.emotion is not None and c.n_frames >= window]
        self.clip_ids = [c.clip_id for c in usable]
        self.identities = sorted({c.identity for c in usable})
        self.items = [
            (i, int(s))
            for i, c in enumerate(usable)
            for s in np.unique(np.linspace(0, c.n_frames - window, windows_per_clip).round().astype(int))
        ]
        self.clips = usable

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip_index, start = self.items[index]
        clip = self.clips[clip_index]
        expr, whisper = read_window(self.store, clip, start, self.window)
        return {
            "expression": torch.from_numpy(expr),
            "whisper": torch.from_numpy(whisper),
            "emotion": torch.tensor(EMOTION_TO_ID[clip.emotion]),
            "level": torch.tensor(clip.level or 0),
            "identity": torch.tensor(self.identities.index(clip.identity)),
            "clip": torch.tensor(clip_index),
        }


class EmbedderDataModule(pl.LightningDataModule):
    """Pairs for InfoNCE training and labelled windows of held-out identities for validation.

    Under DDP set ``trainer.use_distributed_sampler: false``: the batch sampler shards by rank itself, and
    validation runs the full (small) evaluation set on every rank so that every rank logs the same figures.
    """

    def __init__(
        self,
        store: str,
        window: int = 50,
        batch_size: int = 64,
        num_workers: int = 4,
        datasets: Sequence[str] = ("mead", "hdtf"),
        train_splits: Sequence[str] = ("train",),
        val_splits: Sequence[str] = ("val",),
        same_level: bool = False,
        negatives: str = "all",
        cross_identity: float = 0.0,
        repeats: int = 4,
        windows_per_clip: int = 2,
        val_batch_size: int = 128,
        stats_max_clips: int = 2000,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.store: Store | None = None
        self.train_set: PairDataset | None = None
        self.val_set: EvalWindowDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if self.store is None:
            self.store = Store(h.store)
        if stage in (None, "fit") and self.train_set is None:
            clips = self.store.select(h.datasets, h.train_splits)
            self.train_set = PairDataset(self.store, clips, h.window, h.same_level, h.negatives, h.cross_identity)
        if stage in (None, "fit", "validate") and self.val_set is None:
            clips = self.store.select(["mead"], h.val_splits)
            self.val_set = EvalWindowDataset(self.store, clips, h.window, h.windows_per_clip)
            if len(self.val_set) == 0:
                raise ValueError(f"{self.store.root}: no labelled MEAD clips in splits {list(h.val_splits)}")

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        h = self.hparams
        sampler = KeyAwareBatchSampler(len(self.train_set), h.batch_size, h.repeats, h.seed, True, world, rank)
        sampler.follow(self.trainer)
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=h.num_workers,
                          persistent_workers=h.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        h = self.hparams
        return DataLoader(self.val_set, batch_size=h.val_batch_size, shuffle=False, num_workers=h.num_workers)

    def expression_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and std of expression features over (up to stats_max_clips) training clips."""
        self.setup("fit")
        clips = sorted({c.clip_id: c for g in self.train_set.groups for c in g.clips}.values(), key=lambda c: c.clip_id)
        rng = np.random.default_rng(self.hparams.seed)
        if len(clips) > self.hparams.stats_max_clips:
            clips = [clips[i] for i in sorted(rng.choice(len(clips), self.hparams.stats_max_clips, replace=False))]
        frames = np.concatenate([np.asarray(self.store.array(c, "expression"), dtype=np.float64) for c in clips])
        return torch.from_numpy(frames.mean(0)).float(), torch.from_numpy(frames.std(0)).float()
