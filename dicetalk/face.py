"""Face landmarks, crop boxes and landmark-based expression features.

Landmarks are (T, 68, 2) float32 pixel coordinates (x, y) of the iBUG-68 layout; a frame without a face is a
row of NaN. Three backends give them through one interface (:class:`LandmarkBackend`):

* ``face_alignment``: S3FD detector + 2D-FAN from the ``face_alignment`` package (real data);
* ``sidecar``: ``{video_stem}.landmarks.npy`` next to the video, one row per *source* frame (synthetic data);
* ``precomputed``: ``{folder}/{clip_id}.npy`` produced by another tool, per source frame or per output frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

N_LANDMARKS = 68
# iBUG-68 eye contours; their centres fix the canonical in-plane rotation of the mean shape.
_LEFT_EYE = slice(36, 42)
_RIGHT_EYE = slice(42, 48)

# face_alignment 1.5.0 downloads these (exact basenames) into torch.hub.get_dir()/checkpoints.
FACE_ALIGNMENT_FILES = {
    "2DFAN4-11f355bf06.pth.tar": "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
    "s3fd-619a316812.pth": "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
}


class FaceError(RuntimeError):
    """Landmarks are missing or malformed for a clip. The message names the file."""


@dataclass(frozen=True)
class ClipFrames:
    """What a backend may look at: the clip's identity, its video and the frames chosen for the store."""

    clip_id: str
    video: Path
    source_indices: np.ndarray  # (T,) index of the source frame behind every output frame
    n_source_frames: int
    read: Callable[[np.ndarray], np.ndarray]  # output-frame positions -> (N, H, W, 3) uint8 RGB


class LandmarkBackend(Protocol):
    def __call__(self, clip: ClipFrames) -> np.ndarray:
        """(T, 68, 2) float32 pixel landmarks for the output frames, NaN rows where no face was found."""


def _per_output_frame(array: np.ndarray, clip: ClipFrames, path: Path) -> np.ndarray:
    """Pick the rows of a per-source-frame array (or accept a per-output-frame one as is)."""
    if len(array) == clip.n_source_frames:
        return array[clip.source_indices]
    if len(array) == len(clip.source_indices):
        return array
    raise FaceError(
        f"{path}: {len(array)} rows, expected {clip.n_source_frames} (source frames) or "
        f"{len(clip.source_indices)} (25 fps frames)"
    )


def _load_landmarks(path: Path) -> np.ndarray:
    try:
        array = np.load(path)
    except (OSError, ValueError) as exc:
        raise FaceError(f"{path}: cannot read landmarks ({exc})") from exc
    if array.ndim != 3 or array.shape[1] != N_LANDMARKS or array.shape[2] not in (2, 3):
        raise FaceError(f"{path}: landmarks must be (T, 68, 2|3), got {array.shape}")
    return np.asarray(array[..., :2], dtype=np.float32)


class SidecarLandmarks:
    """``{video_stem}.landmarks.npy`` next to the video, (T_source, 68, 2) pixels; NaN rows mean no face."""

    def __call__(self, clip: ClipFrames) -> np.ndarray:
        path = clip.video.with_name(f"{clip.video.stem}.landmarks.npy")
        if not path.is_file():
            raise FaceError(f"{path}: landmark sidecar not found")
        return _per_output_frame(_load_landmarks(path), clip, path)


class PrecomputedLandmarks:
    """``{folder}/{clip_id}.npy``: (T, 68, 2|3) at the source frame rate or already at 25 fps."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FaceError(f"{self.folder}: precomputed landmark folder not found")

    def __call__(self, clip: ClipFrames) -> np.ndarray:
        path = self.folder / f"{clip.clip_id}.npy"
        if not path.is_file():
            raise FaceError(f"{path}: no precomputed landmarks for {clip.clip_id}")
        return _per_output_frame(_load_landmarks(path), clip, path)


def missing_face_alignment_files(hub_dir: str | os.PathLike | None = None) -> list[Path]:
    """The face_alignment weight files absent from the torch hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub

    folder = Path(hub_dir or torch.hub.get_dir()) / "checkpoints"
    return [folder / name for name in FACE_ALIGNMENT_FILES if not (folder / name).is_file()]


def _offline() -> bool:
    return any(os.environ.get(k, "") not in ("", "0") for k in ("DICETALK_OFFLINE", "HF_HUB_OFFLINE"))


class FaceAlignmentLandmarks:
    """S3FD + 2D-FAN (face_alignment package) on batches of frames; keeps the largest face per frame.

    Frames are shrunk so their longer side is at most ``max_side`` before detection (FAN works on a 256 px
    face crop, so 1080p input only costs time); landmarks are scaled back to source pixels.
    """

    def __init__(self, device: str = "cpu", batch_size: int = 16, max_side: int | None = 640,
                 allow_download: bool | None = None, model=None):
        self.batch_size, self.max_side, self.device = batch_size, max_side, device
        self.model = model if model is not None else self._load(device, allow_download)

    @staticmethod
    def _load(device: str, allow_download: bool | None):
        import face_alignment
        import torch.hub

        missing = missing_face_alignment_files()
        offline = _offline() if allow_download is None else not allow_download
        where = Path(torch.hub.get_dir()) / "checkpoints"
        hint = (f"face_alignment weights missing: {', '.join(p.name for p in missing)}. Download "
                + ", ".join(FACE_ALIGNMENT_FILES[p.name] for p in missing)
                + f" into {where} (or set TORCH_HOME), or use --landmarks sidecar/precomputed")
        if missing and offline:
            raise FaceError(hint)
        try:
            # torch.compile on CPU costs minutes for no gain; the library default (on) is kept for GPUs.
            return face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D, device=device, face_detector="sfd", flip_input=False,
                compile=not device.startswith("cpu"), max_batch_size=16)
        except (OSError, RuntimeError) as exc:  # a failed download surfaces as URLError (an OSError)
            if missing:
                raise FaceError(f"{hint} ({exc})") from exc
            raise

    def __call__(self, clip: ClipFrames) -> np.ndarray:
        import torch

        n = len(clip.source_indices)
        out = np.full((n, N_LANDMARKS, 2), np.nan, dtype=np.float32)
        for start in range(0, n, self.batch_size):
            frames = clip.read(np.arange(start, min(n, start + self.batch_size)))
            scale = 1.0
            if self.max_side and max(frames.shape[1:3]) > self.max_side:
                scale = self.max_side / max(frames.shape[1:3])
                frames = resize_frames(frames, round(frames.shape[2] * scale), round(frames.shape[1] * scale))
            batch = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # RGB 0..255, as S3FD's batch path wants
            landmarks, _, boxes = self.model.get_landmarks_from_batch(batch, return_bboxes=True)
            for i, (points, faces) in enumerate(zip(landmarks, boxes)):
                if len(faces) == 0 or len(points) == 0:
                    continue
                faces = np.asarray(faces)
                k = int(np.argmax((faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1])))
                out[start + i] = np.asarray(points).reshape(-1, N_LANDMARKS, 2)[k] / scale
        return out


def make_backend(name: str, *, precomputed_dir: str | None = None, device: str = "cpu") -> LandmarkBackend:
    """Build a landmark backend by its CLI name."""
    if name == "sidecar":
        return SidecarLandmarks()
    if name == "precomputed":
        if not precomputed_dir:
            raise FaceError("--landmarks precomputed needs --landmarks-dir DIR")
        return PrecomputedLandmarks(precomputed_dir)
    if name == "face_alignment":
        return FaceAlignmentLandmarks(device=device)
    raise FaceError(f"unknown landmark backend {name!r} (face_alignment, sidecar, precomputed)")


# ----------------------------------------------------------------------------------------------- geometry


def missing_frames(landmarks: np.ndarray) -> np.ndarray:
    """(T,) bool: frames without a (complete) face."""
    return ~np.isfinite(landmarks).reshape(len(landmarks), -1).all(axis=1)


def fill_missing(landmarks: np.ndarray) -> np.ndarray:
    """Linearly interpolate frames without a face from their neighbours (edges hold the nearest face)."""
    missing = missing_frames(landmarks)
    if missing.all():
        raise FaceError("no frame has a face")
    if not missing.any():
        return landmarks.astype(np.float32, copy=True)
    t = np.arange(len(landmarks))
    flat = landmarks.reshape(len(landmarks), -1)
    filled = np.stack([np.interp(t, t[~missing], flat[~missing, j]) for j in range(flat.shape[1])], axis=1)
    return filled.reshape(landmarks.shape).astype(np.float32)


@dataclass(frozen=True)
class CropConfig:
    """How the square face crop follows the landmarks."""

    scale: float = 1.8  # crop side / landmark box side (the 68 points stop at the brows)
    shift_up: float = 0.1  # move the centre up by this fraction of the landmark box (forehead room)
    smooth: float = 12.5  # Gaussian sigma of the centre track in frames; 0 = none, inf = one box per clip
    size_quantile: float = 0.9  # one side length per clip: this quantile of the per-frame box sides


def crop_boxes(landmarks: np.ndarray, width: int, height: int, config: CropConfig = CropConfig()) -> np.ndarray:
    """Square crop boxes (T, 4) = x0, y0, x1, y1 in source pixels, all of one side length, inside the frame.

    The side is constant over the clip so the face keeps its scale; the centre is smoothed in time so the
    crop does not jitter; boxes larger than the frame shrink to fit and boxes past an edge slide back in.
    """
    from scipy.ndimage import gaussian_filter1d

    points = fill_missing(landmarks)
    lo, hi = points.min(axis=1), points.max(axis=1)  # (T, 2)
    sides = (hi - lo).max(axis=1)
    centre = (lo + hi) / 2 - np.stack([np.zeros_like(sides), config.shift_up * sides], axis=1)
    if np.isinf(config.smooth):
        centre = np.broadcast_to(centre.mean(axis=0), centre.shape)
    elif config.smooth > 0:
        centre = gaussian_filter1d(centre, config.smooth, axis=0, mode="nearest")
    side = min(float(np.quantile(sides, config.size_quantile)) * config.scale, width, height)
    half = side / 2
    cx = np.clip(centre[:, 0], half, width - half)
    cy = np.clip(centre[:, 1], half, height - half)
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=1).astype(np.float32)


def resize_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize (T, H, W, 3) uint8 frames; area averaging when shrinking (no aliasing), bicubic when growing."""
    import cv2

    if frames.shape[1:3] == (height, width):
        return frames
    shrink = width < frames.shape[2] or height < frames.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (width, height), interpolation=interp) for f in frames])


def crop_and_resize(frames: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut the square boxes out of (T, H, W, 3) frames and resize them to ``size``.

    Returns the crops (T, size, size, 3) uint8 and the integer pixel boxes actually used (T, 4), which map
    source coordinates to crop coordinates: ``(p - box[:2]) * size / (box[2] - box[0])``.
    """
    side = max(1, int(round(float(boxes[0, 2] - boxes[0, 0]))))
    height, width = frames.shape[1:3]
    x0 = np.clip(np.round(boxes[:, 0]).astype(np.int64), 0, width - side)
    y0 = np.clip(np.round(boxes[:, 1]).astype(np.int64), 0, height - side)
    crops = np.stack([f[y:y + side, x:x + side] for f, x, y in zip(frames, x0, y0)])
    pixel_boxes = np.stack([x0, y0, x0 + side, y0 + side], axis=1).astype(np.float32)
    return resize_frames(crops, size, size), pixel_boxes


def to_crop_coords(landmarks: np.ndarray, pixel_boxes: np.ndarray, size: int) -> np.ndarray:
    """Source-pixel landmarks -> crop-pixel landmarks for the boxes from :func:`crop_and_resize`."""
    scale = size / (pixel_boxes[:, 2] - pixel_boxes[:, 0])
    return ((landmarks - pixel_boxes[:, None, :2]) * scale[:, None, None]).astype(np.float32)


def face_mask_boxes(landmarks: np.ndarray, size: int, forehead: float = 0.3, margin: float = 0.1) -> np.ndarray:
    """Face box per frame (T, 4) x0, y0, x1, y1 in [0, 1] of the crop, from crop-pixel landmarks.

    The landmark box is raised by ``forehead`` x its height (68 points stop at the brows) and grown by
    ``margin`` of its size on every side, then clipped to the crop.
    """
    lo, hi = landmarks.min(axis=1), landmarks.max(axis=1)
    extent = hi - lo
    lo = lo - margin * extent - np.stack([np.zeros(len(extent)), forehead * extent[:, 1]], axis=1)
    hi = hi + margin * extent
    return np.clip(np.concatenate([lo, hi], axis=1) / size, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------- expression features


def _normalise(shapes: np.ndarray) -> np.ndarray:
    """Centre each (..., 68, 2) shape on its centroid and scale it to unit Frobenius norm."""
    centred = shapes - shapes.mean(axis=-2, keepdims=True)
    return centred / np.linalg.norm(centred, axis=(-2, -1), keepdims=True)


def align_to(shapes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Similarity-align every normalised shape (T, N, 2) to a normalised ``reference`` (N, 2).

    Orthogonal Procrustes per frame (rotation without reflection, batched SVD) plus the least-squares scale.
    """
    cov = np.einsum("tni,nj->tij", shapes, reference)  # (T, 2, 2) = X^T Y
    u, s, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))  # -1 would be a reflection: flip the weakest axis instead
    u[:, :, -1] *= d[:, None]
    s[:, -1] *= d
    rotation = u @ vt
    scale = s.sum(axis=1)  # = trace(R^T X^T Y) for unit-norm shapes
    return scale[:, None, None] * shapes @ rotation


def _canonical(shape: np.ndarray) -> np.ndarray:
    """Rotate a normalised (N, 2) shape so the line from the left to the right eye centre is horizontal."""
    eyes = shape[_RIGHT_EYE].mean(axis=0) - shape[_LEFT_EYE].mean(axis=0)
    angle = np.arctan2(eyes[1], eyes[0])
    c, s = np.cos(angle), np.sin(angle)
    return shape @ np.array([[c, -s], [s, c]])


def expression_features(landmarks: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Pose-normalised landmarks (T, 136): every frame Procrustes-aligned to the clip's mean shape.

    The mean shape comes from generalised Procrustes over the clip and is put in a canonical pose (centred,
    unit norm, eyes horizontal), so features of different clips share one frame of reference. Head
    translation, in-plane rotation and distance to the camera are removed; expression and face shape remain.
    """
    shapes = _normalise(fill_missing(landmarks).astype(np.float64))
    reference = _canonical(shapes[0])
    for _ in range(iterations):
        aligned = align_to(shapes, reference)
        reference = _canonical(_normalise(aligned.mean(axis=0)))
    return align_to(shapes, reference).reshape(len(shapes), -1).astype(np.float32)
