"""Input checks, resize kernels and face crops that reproduce each metric's reference preprocessing.

Every metric takes RGB frames, uint8 or float in [0, 1]. Which kernel is used where matters: FID moves
by several points between resize kernels (metrics_references.md, 1.4), so each one here is named after
the reference it reproduces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SYNCNET_CROP_SCALE = 0.4  # syncnet_python run_pipeline crop_scale
SYNCNET_SMOOTH = 13  # median filter length over time for the box size and centre
SYNCNET_PAD_VALUE = 110  # grey used outside the frame


def to_uint8(x: Tensor, what: str = "frames") -> Tensor:
    """uint8 as is; float in [0, 1] scaled by 255 and rounded (as writing a PNG or video would)."""
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise TypeError(f"{what}: expected uint8 or float in [0, 1], got {x.dtype}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{what}: float input must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]")
    return (x * 255).round().to(torch.uint8)


def as_frames(x: Tensor, what: str = "frames") -> Tensor:
    """(N, 3, H, W) or (B, T, 3, H, W) RGB -> uint8 (N, 3, H, W)."""
    if x.ndim == 5:
        x = x.flatten(0, 1)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{what}: expected (N, 3, H, W) or (B, T, 3, H, W), got {tuple(x.shape)}")
    return to_uint8(x, what)


def as_videos(x: Tensor | Sequence[Tensor], what: str = "videos") -> list[Tensor]:
    """(B, T, 3, H, W) tensor or a sequence of (T, 3, H, W) -> list of uint8 (T, 3, H, W)."""
    videos = list(x.unbind(0)) if isinstance(x, Tensor) and x.ndim == 5 else list(x)
    for i, video in enumerate(videos):
        if not isinstance(video, Tensor) or video.ndim != 4 or video.shape[1] != 3:
            shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
            raise ValueError(f"{what}[{i}]: expected (T, 3, H, W) RGB frames, got {shape}")
    return [to_uint8(video, f"{what}[{i}]") for i, video in enumerate(videos)]


def resize_bilinear_tf1(x: Tensor, size: tuple[int, int]) -> Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres, no antialias) of (..., H, W).

    Output pixel j samples source position j * in/out: the kernel of the TF Inception graph
    (torch-fidelity's TF1-compatible resize) and of the original TF FVD code.
    """
    x = x.float()
    for axis, n_out in ((-2, size[0]), (-1, size[1])):
        n_in = x.shape[axis]
        if n_in == n_out:
            continue
        src = torch.arange(n_out, dtype=torch.float64, device=x.device) * (n_in / n_out)
        lo = src.floor().long().clamp_max(n_in - 1)
        hi = (lo + 1).clamp_max(n_in - 1)
        w = (src - lo).to(x.dtype)
        shape = [1] * x.ndim
        shape[axis] = n_out
        a, b = x.index_select(axis, lo), x.index_select(axis, hi)
        x = a + (b - a) * w.view(shape)
    return x


def resize_bilinear_cv2(x: Tensor, size: tuple[int, int]) -> Tensor:
    """cv2 INTER_LINEAR on uint8 (half-pixel centres, no antialias), rounded back to uint8."""
    y = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=False)
    return y.round().clamp(0, 255).to(torch.uint8)


def resize_nearest_pil(x: Tensor, size: tuple[int, int]) -> Tensor:
    """PIL ``Image.NEAREST`` (source pixel floor((j + 0.5) * in/out)), i.e. torch 'nearest-exact'."""
    return F.interpolate(x, size=size, mode="nearest-exact")


def medfilt(x: np.ndarray, kernel: int) -> np.ndarray:
    """scipy.signal.medfilt for 1-D (zero padding at both ends), without importing scipy.signal."""
    padded = np.pad(x, kernel // 2)
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, kernel), axis=1)


def fixed_boxes(n: int, height: int, width: int, box: Sequence[float] = (0.0, 0.0, 1.0, 1.0)) -> Tensor:
    """The same crop for all ``n`` frames: ``box`` = normalised (x0, y0, x1, y1) -> pixel (n, 4) int64.

    For our aligned 512 px outputs the face sits at a fixed place, so no landmarks are needed.
    """
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ValueError(f"crop box must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {tuple(box)}")
    pixel = torch.tensor([round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)])
    return pixel.expand(n, 4).clone()


def _check_landmarks(landmarks: np.ndarray | Tensor, n_frames: int) -> np.ndarray:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 3 or points.shape[0] != n_frames or points.shape[2] != 2:
        raise ValueError(f"landmarks: expected ({n_frames}, K, 2) pixel coordinates, got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("landmarks: contain NaN or inf (interpolate missing detections first)")
    return points


def landmark_boxes(landmarks: np.ndarray | Tensor, height: int, width: int) -> Tensor:
    """EMO-AffectNet crop: min/max box of each frame's landmarks, clipped to the frame, no margin."""
    points = _check_landmarks(landmarks, len(landmarks))
    lo = np.floor(points.min(1)).astype(np.int64)
    hi = np.floor(points.max(1)).astype(np.int64)
    boxes = np.stack([lo[:, 0].clip(0, width - 1), lo[:, 1].clip(0, height - 1),
                      hi[:, 0].clip(1, width), hi[:, 1].clip(1, height)], axis=1)
    boxes[:, 2] = np.maximum(boxes[:, 2], boxes[:, 0] + 1)  # never an empty crop
    boxes[:, 3] = np.maximum(boxes[:, 3], boxes[:, 1] + 1)
    return torch.from_numpy(boxes)


def syncnet_boxes(face_boxes: np.ndarray | Tensor, crop_scale: float = SYNCNET_CROP_SCALE,
                  smooth: int = SYNCNET_SMOOTH) -> Tensor:
    """syncnet_python's face-track crop from per-frame face boxes (T, 4) x0, y0, x1, y1 -> (T, 4) int64.

    Half-size s = max(w, h) / 2 and centre are median-filtered over time (scipy ``medfilt``: zero
    padded at the ends, as the reference); the crop spans rows [cy - s, cy + s (1 + 2 cs)] and columns
    cx -/+ s (1 + cs): a square that reaches further below the face centre than above.
    """
    boxes = np.asarray(face_boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"face boxes: expected (T, 4), got {boxes.shape}")
    # The reference only sees tracks of >= 100 frames; a shorter video gets the largest odd kernel that
    # fits, so that the zero padding never becomes the median.
    kernel = max(min(smooth, len(boxes) - 1 + len(boxes) % 2), 1)
    half = medfilt(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2, kernel)
    cx = medfilt((boxes[:, 0] + boxes[:, 2]) / 2, kernel)
    cy = medfilt((boxes[:, 1] + boxes[:, 3]) / 2, kernel)
    # The reference pads the frame by p = int(s (1 + 2 cs)) and truncates coordinates in the padded
    # frame (all positive there); shifting by p reproduces that rounding in frame coordinates.
    pad = (half * (1 + 2 * crop_scale)).astype(np.int64)
    out = np.stack([(cx + pad - half * (1 + crop_scale)).astype(np.int64) - pad,
                    (cy + pad - half).astype(np.int64) - pad,
                    (cx + pad + half * (1 + crop_scale)).astype(np.int64) - pad,
                    (cy + pad + half * (1 + 2 * crop_scale)).astype(np.int64) - pad], axis=1)
    return torch.from_numpy(out)


def syncnet_boxes_from_landmarks(landmarks: np.ndarray | Tensor) -> Tensor:
    """syncnet_boxes with the landmark min/max box standing in for the S3FD detection."""
    points = _check_landmarks(landmarks, len(landmarks))
    return syncnet_boxes(np.concatenate([points.min(1), points.max(1)], axis=1))


def _span(lo: int, hi: int, n: int) -> tuple[slice, int, int]:
    """Inside part of [lo, hi) on an axis of length n, and the padding before and after it."""
    inside = slice(min(max(lo, 0), n), max(min(hi, n), 0))
    before = min(max(-lo, 0), hi - lo)
    return inside, before, (hi - lo) - before - max(inside.stop - inside.start, 0)


def crop_resize(frames: Tensor, boxes: Tensor, size: int, resize: Callable[[Tensor, tuple[int, int]], Tensor],
                pad_value: int = 0) -> Tensor:
    """Crop uint8 frames (T, 3, H, W) to integer boxes (T, 4) [x0, x1) x [y0, y1) and resize each.

    Parts of a box outside the frame are filled with ``pad_value``; ``resize(x (1,3,h,w), (s, s))``
    is one of the kernels above. Returns uint8 (T, 3, size, size).
    """
    if boxes.shape != (frames.shape[0], 4):
        raise ValueError(f"crop boxes: expected ({frames.shape[0]}, 4), got {tuple(boxes.shape)}")
    height, width = frames.shape[-2:]
    out = []
    for frame, (x0, y0, x1, y1) in zip(frames, boxes.tolist()):
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"crop box {(x0, y0, x1, y1)} is empty")
        rows, top, bottom = _span(y0, y1, height)
        cols, left, right = _span(x0, x1, width)
        inner = frame[:, rows, cols]
        pads = (left, right, top, bottom)
        if any(pads):
            inner = F.pad(inner, pads, value=pad_value)
        out.append(resize(inner[None], (size, size)).to(torch.uint8))
    return torch.cat(out)
