"""Sync-C / Sync-D (LSE-C / LSE-D) with SyncNet v2, as syncnet_python's ``evaluate`` defines them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from dicetalk.metrics.backbones import Frozen, SyncNet, injected, load_state_dict_into
from dicetalk.metrics.backbones.syncnet import FRAME_SIZE, VIDEO_WINDOW
from dicetalk.metrics.mfcc import SAMPLE_RATE, syncnet_mfcc
from dicetalk.metrics.preprocess import (SYNCNET_PAD_VALUE, as_videos, crop_resize, fixed_boxes,
                                         resize_bilinear_cv2, syncnet_boxes_from_landmarks)

FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MFCC_PER_FRAME = 4  # 100 Hz MFCC / 25 fps
AUDIO_WINDOW = 20  # MFCC steps per 5-frame window
VSHIFT = 15
PAIRWISE_EPS = 1e-6  # F.pairwise_distance's eps, added to the difference before the norm


def sync_offset_search(video_emb: Tensor, audio_emb: Tensor,
                       vshift: int = VSHIFT) -> tuple[int, float, float]:
    """Audio-visual offset, Sync-D and Sync-C of one video from its (n, D) window embeddings.

    With the audio embeddings zero-padded by ``vshift`` at both ends, d_i(k) = ||v_i - a_{i+k-vshift}
    + eps|| for k = 0..2 vshift; the mean over i gives one distance per shift. Returns
    (offset = vshift - argmin, min distance = Sync-D, median - min = Sync-C).

    All shifts at once: ||x + eps||^2 expands into squared norms, sums and a banded product v_i . a_j,
    taken as one batched matrix-vector product over overlapping windows of the padded audio (no copy);
    the (n, 2 vshift + 1) terms are combined in float64. Both inputs are first centred on the mean video
    embedding, which leaves every difference unchanged but keeps the expansion free of cancellation.
    """
    if video_emb.ndim != 2 or video_emb.shape != audio_emb.shape or video_emb.shape[0] == 0:
        raise ValueError(f"sync_offset_search: need two equal (n, D) embeddings with n >= 1, got "
                         f"{tuple(video_emb.shape)} and {tuple(audio_emb.shape)}")
    n, dim = video_emb.shape
    width = 2 * vshift + 1
    centre = video_emb.mean(0)
    v = video_emb - centre
    a = torch.empty(n + 2 * vshift, dim, dtype=v.dtype, device=v.device)
    a[:vshift] = a[vshift + n:] = -centre  # the zero padding, centred like everything else
    torch.sub(audio_emb, centre, out=a[vshift:vshift + n])
    windows = a.unfold(0, width, 1)  # (n, D, width): windows[i, :, k] = a[i + k], a view
    dots = torch.bmm(v.unsqueeze(1), windows).squeeze(1).double()  # (n, width)
    v_sq, v_sum = (v * v).sum(1, keepdim=True).double(), v.sum(1, keepdim=True).double()
    a_sq, a_sum = (a * a).sum(1).double().unfold(0, width, 1), a.sum(1).double().unfold(0, width, 1)
    sq = v_sq + a_sq - 2 * dots + 2 * PAIRWISE_EPS * (v_sum - a_sum) + dim * PAIRWISE_EPS**2
    mean_dist = sq.clamp_min(0).sqrt().mean(0)
    min_dist, best = mean_dist.min(0)  # first minimum, as numpy's argmin
    # One transfer for the three numbers: a single device sync on GPU instead of three.
    best, min_dist, median = torch.stack([best.double(), min_dist, mean_dist.median()]).tolist()
    return vshift - int(best), min_dist, median - min_dist


def sync_windows(n_frames: int, n_samples: int) -> int:
    """Number of 5-frame windows syncnet_python scores: min(frames, samples // 640) - 5."""
    return min(n_frames, n_samples // SAMPLES_PER_FRAME) - VIDEO_WINDOW


def audio_windows(audio: Tensor, n: int) -> Tensor:
    """(n, 1, 13, 20) MFCC windows; window i spans MFCC steps [4 i, 4 i + 20) = frames [i, i + 5)."""
    mfcc = syncnet_mfcc(audio)
    return mfcc.unfold(1, AUDIO_WINDOW, MFCC_PER_FRAME)[:, :n].permute(1, 0, 2).unsqueeze(1)


def to_int16_scale(audio: Tensor) -> Tensor:
    """Float audio in [-1, 1] -> int16 sample values (rounded and clipped, as writing PCM16 would)."""
    return (audio.double() * 32768).round().clamp(-32768, 32767)


def syncnet(path: str | os.PathLike | None = None, download: bool = False) -> Frozen:
    """SyncNet v2 from the registry's ``syncnet-v2`` weights (checksum-verified)."""
    net = SyncNet()
    return Frozen(net, load_state_dict_into(net, "syncnet-v2", path, download))


class SyncScore(Metric):
    """Sync-C (confidence, higher is better) and Sync-D (distance, lower is better), mean over videos.

    ``update(videos, audio, landmarks=None)``: RGB videos uint8 (B, T, 3, H, W) at 25 fps (or float in
    [0, 1], or a sequence of (T, 3, H, W)) and float audio (B, S) in [-1, 1] at 16 kHz (or a sequence of
    (S,)). Faces are cropped with the fixed ``box`` (normalised x0, y0, x1, y1; the whole frame by
    default, for our aligned outputs) or, given per-video landmarks (T, K, 2) in pixels, with
    syncnet_python's face-track crop around the landmark box; then resized to 224 (cv2 bilinear) and
    fed as BGR 0..255 windows of 5 frames. ``backbone`` (``forward_lip`` and ``forward_aud``) replaces
    SyncNet v2, e.g. for tests with ``image_size`` smaller than 224.
    """

    is_differentiable = False
    higher_is_better = True  # for sync_c, the headline number
    full_state_update = False

    def __init__(self, backbone: nn.Module | None = None, weights_path: str | os.PathLike | None = None,
                 download: bool = False, box: Sequence[float] = (0.0, 0.0, 1.0, 1.0), vshift: int = VSHIFT,
                 image_size: int = FRAME_SIZE, batch_size: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = syncnet(weights_path, download) if backbone is None else injected(backbone)
        self.box = tuple(box)
        self.vshift = vshift
        self.image_size = image_size
        self.batch_size = batch_size
        for name in ("conf_sum", "dist_sum", "offset_sum", "abs_offset_sum"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_videos", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @property
    def weights_info(self) -> dict[str, Any]:
        """Which backbone weights produced the scores (record it with the result)."""
        return self.backbone.info

    def _lip_windows(self, video: Tensor, n: int, landmarks: np.ndarray | Tensor | None) -> Tensor:
        t, _, height, width = video.shape
        if landmarks is None:
            boxes = fixed_boxes(t, height, width, self.box)
        else:
            boxes = syncnet_boxes_from_landmarks(landmarks)
        faces = crop_resize(video, boxes, self.image_size, resize_bilinear_cv2, SYNCNET_PAD_VALUE)
        faces = faces.flip(1)  # RGB -> BGR: SyncNet v2 reads frames with cv2; fed as raw 0..255 floats
        return faces.unfold(0, VIDEO_WINDOW, 1)[:n].permute(0, 1, 4, 2, 3)  # uint8 (n, 3, 5, S, S)

    def _embed(self, method: str, windows: Tensor) -> Tensor:
        # Windows stay uint8 views until their batch runs: float copies of long videos do not fit memory.
        chunks = windows.split(self.batch_size)
        out = [self.backbone.call(method, chunk.to(self.device).float()) for chunk in chunks]
        return torch.cat(out).float()

    def score_video(self, video: Tensor, audio: Tensor,
                    landmarks: np.ndarray | Tensor | None = None) -> tuple[int, float, float]:
        """(offset, Sync-D, Sync-C) of one uint8 video (T, 3, H, W) with its float audio (S,)."""
        if audio.ndim != 1:
            raise ValueError(f"SyncScore: audio must be mono (S,) per video, got {tuple(audio.shape)}")
        n = sync_windows(video.shape[0], audio.shape[0])
        if n < 1:
            raise ValueError(f"SyncScore: video of {video.shape[0]} frames / {audio.shape[0]} samples is "
                             f"too short; need at least {VIDEO_WINDOW + 1} frames of video and audio")
        lip = self._embed("forward_lip", self._lip_windows(video, n, landmarks))
        aud = self._embed("forward_aud", audio_windows(to_int16_scale(audio.cpu()), n))
        return sync_offset_search(lip, aud, self.vshift)

    def update(self, videos: Tensor | Sequence[Tensor], audio: Tensor | Sequence[Tensor],
               landmarks: Sequence[np.ndarray | Tensor | None] | None = None) -> None:
        """Score each video against its audio and add it to the running means."""
        videos = as_videos(videos, "SyncScore videos")
        audio = list(audio.unbind(0)) if isinstance(audio, Tensor) and audio.ndim == 2 else list(audio)
        landmarks = [None] * len(videos) if landmarks is None else list(landmarks)
        if not len(videos) == len(audio) == len(landmarks):
            raise ValueError(f"SyncScore: {len(videos)} videos, {len(audio)} audio tracks, "
                             f"{len(landmarks)} landmark arrays")
        for video, track, marks in zip(videos, audio, landmarks):
            offset, dist, conf = self.score_video(video, track, marks)
            self.conf_sum += conf
            self.dist_sum += dist
            self.offset_sum += offset
            self.abs_offset_sum += abs(offset)
            self.n_videos += 1

    def compute(self) -> dict[str, Tensor]:
        """Means over videos of ``sync_c``, ``sync_d``, ``offset`` and ``abs_offset`` (frames; signed
        offsets can cancel), and ``n_videos``."""
        n = int(self.n_videos)
        if n == 0:
            raise RuntimeError("SyncScore: no videos scored")
        return {"sync_c": self.conf_sum / n, "sync_d": self.dist_sum / n, "offset": self.offset_sum / n,
                "abs_offset": self.abs_offset_sum / n, "n_videos": self.n_videos.clone()}
