"""Stage-2 data: clips with a distant reference frame, whisper windows, face masks and prior windows;
a batch sampler that puts emotion-set and regular-set samples 1:1 in every per-rank batch; the DataModule.

One sample, for a store clip of T frames (25 fps):
- ``num_frames`` frames at ``stride`` (25 x 2 = 12.5 fps, 49 frames of the source) from a random start;
- a reference frame of the same clip at least ``min_ref_gap`` frames before or after the span. When the
  clip is too short for any such pair, the start is drawn uniformly and the reference is the frame farthest
  from the span (0 or T-1), so short clips still train, with a closer reference;
- per generated frame f (a 25-fps index) whisper frames [2f-4, 2f+6) at 50 Hz, zeros outside the audio;
- the face mask: the union of the span's face boxes (face_box.npy), widened by ``mask_expand``;
- the emotion-prior window: ``prior_window`` contiguous frames of expression + whisper features centred on
  the span, for the frozen stage-1 embedder (the module computes the prior);
- frames as pixels in [-1, 1], or cached scaled VAE latents when every clip has latents.npy;
- labels as raw emotion / level ids (EMOTION_TO_ID, -1 / 0 when unlabelled): the module maps them to its
  classifier's classes (``dicetalk.data`` does not import the models).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from dicetalk.conditioning import face_box_mask
from dicetalk.constants import EMOTION_TO_ID
from dicetalk.data.embedder_data import read_window
from dicetalk.data.epochs import EpochBatchSampler
from dicetalk.data.store import Clip, Store
from dicetalk.media import read_frames

log = logging.getLogger(__name__)

WHISPER_BEFORE = 4  # frame f starts its window at whisper frame 2f - 4 (80 ms before)
WHISPER_WINDOW = 10  # ... and ends before 2f + 6
LatentMode = Literal["auto", "always", "never"]
Item = tuple[int, int]  # (clip index, seed)


def span_length(num_frames: int, stride: int) -> int:
    """Source frames covered by ``num_frames`` frames at ``stride``."""
    return (num_frames - 1) * stride + 1


def whisper_indices(frames: np.ndarray, window: int = WHISPER_WINDOW, before: int = WHISPER_BEFORE) -> np.ndarray:
    """(F, window) whisper-frame indices 2f - before + k, k < window, for 25-fps frame indices ``frames``."""
    return 2 * np.asarray(frames, dtype=np.int64)[:, None] - before + np.arange(window)[None, :]


def whisper_windows(
    whisper: np.ndarray, frames: np.ndarray, window: int = WHISPER_WINDOW, before: int = WHISPER_BEFORE
) -> np.ndarray:
    """Whisper windows (F, window, L, W) float32 of a clip's 50 Hz states (T50, L, W); indices outside
    [0, T50) give zeros. Reads only the rows spanned (works on memory-mapped arrays)."""
    idx = whisper_indices(frames, window, before)
    out = np.zeros((*idx.shape, *whisper.shape[1:]), np.float32)
    valid = (idx >= 0) & (idx < whisper.shape[0])
    if valid.any():
        lo, hi = int(idx[valid].min()), int(idx[valid].max()) + 1
        rows = np.asarray(whisper[lo:hi], np.float32)
        out[valid] = rows[idx[valid] - lo]
    return out


def choose_span_and_reference(n_frames: int, span: int, min_gap: int, rng: np.random.Generator) -> tuple[int, int]:
    """(start, reference): a span [start, start + span) inside the clip and a frame at least ``min_gap``
    frames from it (r <= start - min_gap or r >= start + span - 1 + min_gap), both uniform among valid
    choices; when no start allows that, a uniform start and the frame farthest from its span."""
    if n_frames < span:
        raise ValueError(f"clip of {n_frames} frames is shorter than a span of {span}")
    starts = np.arange(n_frames - span + 1)
    last = starts + span - 1
    valid = (starts >= min_gap) | (last + min_gap <= n_frames - 1)
    if not valid.any():
        start = int(rng.integers(len(starts)))
        return start, 0 if start >= n_frames - 1 - (start + span - 1) else n_frames - 1
    start = int(rng.choice(starts[valid]))
    frames = np.arange(n_frames)
    refs = frames[(frames <= start - min_gap) | (frames >= start + span - 1 + min_gap)]
    return start, int(rng.choice(refs))


def prior_window_start(n_frames: int, start: int, span: int, length: int) -> int:
    """Start of the ``length``-frame prior window centred on the span, kept inside the clip."""
    centred = start + (span - length) // 2
    return int(min(max(centred, 0), n_frames - length))


class TalkerDataset(Dataset):
    """Training samples addressed by ``(clip_index, seed)``: every random choice comes from the seed, so a
    sample depends on the sampler only, never on the worker that loads it."""

    def __init__(
        self,
        store: Store,
        clips: Sequence[Clip],
        num_frames: int = 25,
        stride: int = 2,
        min_ref_gap: int = 30,
        prior_window: int = 50,
        frame_size: int | None = None,
        use_latents: bool = False,
        mask_expand: float = 1.1,
    ):
        self.store, self.num_frames, self.stride = store, num_frames, stride
        self.min_ref_gap, self.prior_window, self.frame_size = min_ref_gap, prior_window, frame_size
        self.use_latents, self.mask_expand = use_latents, mask_expand
        self.span = span_length(num_frames, stride)
        need = max(self.span, prior_window)
        self.clips = [c for c in clips if c.n_frames >= need]
        if len(self.clips) < len(clips):
            log.info("%s: %d of %d clips are shorter than %d frames and are skipped",
                     store.root, len(clips) - len(self.clips), len(clips), need)

    def __len__(self) -> int:
        return len(self.clips)

    def _pixels(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W) in [-1, 1]
        side = self.frame_size
        if side is not None and x.shape[-2:] != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        return x

    def __getitem__(self, item: Item | int) -> dict[str, torch.Tensor]:
        # A plain index (what Lightning's SequentialSampler gives under --trainer.overfit_batches) uses the
        # index as its seed: the same window and reference every time.
        index, seed = (item, item) if isinstance(item, int) else item
        clip = self.clips[index]
        rng = np.random.default_rng(seed)
        start, ref = choose_span_and_reference(clip.n_frames, self.span, self.min_ref_gap, rng)
        frames = start + self.stride * np.arange(self.num_frames)
        sample: dict[str, torch.Tensor] = {}

        # read_frames opens its own reader per call, so this is safe in any DataLoader worker
        decoded = read_frames(self.store.path(clip, "frames"), np.append(frames, ref))
        pixels = self._pixels(decoded)
        sample["ref_pixels"] = pixels[-1]
        if self.use_latents:
            latents = self.store.array(clip, "latents")
            sample["latents"] = torch.from_numpy(np.asarray(latents[frames], np.float32))
            sample["ref_latents"] = torch.from_numpy(np.asarray(latents[ref], np.float32))
        else:
            sample["pixels"] = pixels[:-1]

        boxes = np.asarray(self.store.array(clip, "face_box")[start : start + self.span], np.float32)
        union = torch.tensor([[boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()]])
        height, width = pixels.shape[-2:]
        sample["face_mask"] = face_box_mask(union, height, width, self.mask_expand)[0]
        sample["whisper"] = torch.from_numpy(whisper_windows(self.store.array(clip, "whisper"), frames))

        prior_start = prior_window_start(clip.n_frames, start, self.span, self.prior_window)
        expression, whisper = read_window(self.store, clip, prior_start, self.prior_window)
        sample["prior_expression"] = torch.from_numpy(expression)
        sample["prior_whisper"] = torch.from_numpy(whisper.astype(np.float32))

        sample["emotion"] = torch.tensor(EMOTION_TO_ID[clip.emotion] if clip.emotion is not None else -1)
        sample["level"] = torch.tensor(clip.level or 0)
        sample["clip_index"] = torch.tensor(index)
        return sample


class BalancedBatchSampler(EpochBatchSampler[list[Item]]):
    """Per-rank batches of ``batch_size`` items: the first half from the emotion set, the second from the
    regular set, in every batch and on every rank.

    Each epoch permutes both sets with the same seed on every rank; the smaller set is repeated (fresh
    permutations) to the length of the larger one. Global batch b takes ``batch_size / 2 * num_replicas``
    items of each set; rank r its r-th slice, so ranks never share a sample within a step and all ranks have
    the same number of batches. ``skip`` batches are skipped on the first pass (a run resumed mid-epoch;
    ``__len__`` stays the full epoch). Item seeds are drawn per global batch, independent of the rank count.
    """

    def __init__(
        self,
        emotion_indices: Sequence[int],
        regular_indices: Sequence[int],
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if batch_size < 2 or batch_size % 2:
            raise ValueError(f"BalancedBatchSampler: batch_size must be even and >= 2, got {batch_size}")
        if not emotion_indices or not regular_indices:
            raise ValueError(
                f"BalancedBatchSampler: need samples of both sets, got {len(emotion_indices)} emotion-set and "
                f"{len(regular_indices)} regular-set clips"
            )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"BalancedBatchSampler: rank {rank} outside [0, {num_replicas})")
        self.sets = (np.asarray(emotion_indices), np.asarray(regular_indices))
        self.half, self.seed, self.num_replicas, self.rank = batch_size // 2, seed, num_replicas, rank

    def __len__(self) -> int:
        return max(1, max(len(s) for s in self.sets) // (self.half * self.num_replicas))

    def __iter__(self) -> Iterator[list[Item]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n_batches, per_global = len(self), self.half * self.num_replicas
        orders = []
        for indices in self.sets:
            repeats = -(-n_batches * per_global // len(indices))
            orders.append(np.concatenate([rng.permutation(indices) for _ in range(repeats)]))
        seeds = rng.integers(0, 2**63 - 1, size=(n_batches, 2, per_global))
        lo, hi = self.rank * self.half, (self.rank + 1) * self.half
        skip = self.take_skip()
        for b in range(skip, n_batches):
            batch = []
            for s, order in enumerate(orders):
                chosen = order[b * per_global : (b + 1) * per_global]
                batch += [(int(i), int(k)) for i, k in zip(chosen[lo:hi], seeds[b, s, lo:hi])]
            yield batch


def fixed_items(dataset: TalkerDataset, emotion_sets: Sequence[str], count: int, seed: int) -> list[Item]:
    """``count`` deterministic items alternating emotion-set and regular-set clips (validation)."""
    rng = np.random.default_rng(seed)
    groups = [
        [i for i, c in enumerate(dataset.clips) if (c.dataset in emotion_sets) == emotion] for emotion in (True, False)
    ]
    groups = [rng.permutation(g).tolist() for g in groups if g]
    mixed = [i for pair in itertools.zip_longest(*groups) for i in pair if i is not None]
    return [(i, int(rng.integers(0, 2**63 - 1))) for i in mixed[:count]]


class TalkerDataModule(pl.LightningDataModule):
    """Stage-2 ("talker") data from a store.

    Under DDP set ``trainer.use_distributed_sampler: false``: :class:`BalancedBatchSampler` shards by rank
    itself. ``batch_size`` is per rank and even (half emotion set, half regular set). ``latents``: "auto"
    uses cached latents.npy when every training and validation clip has one, "always" requires them,
    "never" decodes frames (the module encodes them with the frozen VAE). Validation uses
    ``val_samples`` fixed samples of the validation splits (the same on every rank).
    """

    def __init__(
        self,
        store: str,
        num_frames: int = 25,
        stride: int = 2,
        min_ref_gap: int = 30,
        prior_window: int = 50,
        frame_size: int | None = None,
        latents: LatentMode = "auto",
        mask_expand: float = 1.1,
        batch_size: int = 2,
        num_workers: int = 4,
        emotion_sets: Sequence[str] = ("mead",),
        train_splits: Sequence[str] = ("train",),
        val_splits: Sequence[str] = ("val",),
        val_samples: int = 4,
        val_batch_size: int = 2,
        seed: int = 0,
    ):
        super().__init__()
        if latents not in ("auto", "always", "never"):
            raise ValueError(f"TalkerDataModule: latents must be auto, always or never, got {latents!r}")
        self.save_hyperparameters()
        self.store: Store | None = None
        self.train_set: TalkerDataset | None = None
        self.val_set: TalkerDataset | None = None

    def _use_latents(self, clips: Sequence[Clip]) -> bool:
        mode = self.hparams.latents
        if mode == "never":
            return False
        missing = [c.clip_id for c in clips if not self.store.path(c, "latents").is_file()]
        if mode == "always" and missing:
            raise FileNotFoundError(f"{self.store.path(missing[0], 'latents')}: missing ({len(missing)} clips lack latents)")
        return not missing

    def _dataset(self, clips: Sequence[Clip], use_latents: bool) -> TalkerDataset:
        h = self.hparams
        return TalkerDataset(self.store, clips, h.num_frames, h.stride, h.min_ref_gap, h.prior_window, h.frame_size,
                             use_latents, h.mask_expand)

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if self.store is None:
            self.store = Store(h.store)
        if self.train_set is not None:
            return
        train = self.store.select(None, h.train_splits)
        val = self.store.select(None, h.val_splits)
        use_latents = self._use_latents([*train, *val])
        self.train_set = self._dataset(train, use_latents)
        self.val_set = self._dataset(val, use_latents)
        if len(self.train_set) == 0:
            raise ValueError(f"{self.store.root}: no clip of splits {list(h.train_splits)} has enough frames")

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_sampler(self, rank: int = 0, world: int = 1) -> BalancedBatchSampler:
        """The balanced batch sampler of the training set for one rank."""
        h = self.hparams
        emotion = [i for i, c in enumerate(self.train_set.clips) if c.dataset in h.emotion_sets]
        regular = [i for i, c in enumerate(self.train_set.clips) if c.dataset not in h.emotion_sets]
        return BalancedBatchSampler(emotion, regular, h.batch_size, h.seed, world, rank)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        sampler = self.train_sampler(rank, world).follow(self.trainer)
        h = self.hparams
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=h.num_workers,
                          persistent_workers=h.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        h = self.hparams
        items = fixed_items(self.val_set, h.emotion_sets, h.val_samples, h.seed)
        if not items:
            raise ValueError(f"{self.store.root}: no clip of splits {list(h.val_splits)} has enough frames")
        return DataLoader(self.val_set, batch_size=h.val_batch_size, sampler=items, num_workers=h.num_workers)
