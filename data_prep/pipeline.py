"""Prepare one raw clip into its store folder ``clips/{clip_id}/`` (or a ``failures/{clip_id}.json``).

Steps: probe -> 25 fps frame choice by timestamps -> 16 kHz audio -> landmarks -> square crop + resize ->
crop-space landmarks, face box, expression features -> whisper features -> optional VAE latents -> write.
Everything is written inside ``clips/.tmp-{clip_id}-{pid}`` and renamed into place last, so a clip folder
exists only when complete and a killed run leaves nothing that looks finished. The cropped frames are encoded
chunk by chunk as they are cut, so memory does not grow with the clip's length.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.layouts import ClipSpec
from dicetalk import face, media
from dicetalk.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

# Decoded source frames kept in memory per clip; beyond this the frames are decoded again per chunk.
_FRAME_CACHE_BYTES = 512 * 2**20
_CHUNK = 64  # frames cropped / encoded at a time


@dataclass
class PrepConfig:
    """Everything that decides what lands in the store (same config => byte-identical store)."""

    size: int = 512
    min_seconds: float = 1.0
    max_missing_face: float = 0.5  # fraction of frames without a face above which the clip fails
    audio_slack_seconds: float = 0.5  # audio may be shorter than the video by min(this, audio_slack_ratio x video)
    audio_slack_ratio: float = 0.1
    crop: face.CropConfig = field(default_factory=face.CropConfig)
    landmarks: str = "face_alignment"
    landmarks_dir: str | None = None
    expression_dir: str | None = None  # optional precomputed expression / 3DMM features {clip_id}.npy
    whisper: str = "openai/whisper-tiny"
    latents: str | None = None  # VAE folder (or an SVD folder with a vae/ subfolder)
    device: str = "cpu"


class ClipFailure(Exception):
    """A clip that cannot be prepared; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class Models:
    """The per-process models, loaded on first use (a worker loads each at most once)."""

    def __init__(self, config: PrepConfig):
        self.config = config
        self._landmarks = self._whisper = self._vae = None

    @property
    def landmarks(self) -> face.LandmarkBackend:
        if self._landmarks is None:
            self._landmarks = face.make_backend(
                self.config.landmarks, precomputed_dir=self.config.landmarks_dir, device=self.config.device)
        return self._landmarks

    @property
    def whisper(self):
        if self._whisper is None:
            from dicetalk.audio import WhisperFeatures

            self._whisper = WhisperFeatures(self.config.whisper, device=self.config.device)
        return self._whisper

    @property
    def vae(self):
        if self._vae is None and self.config.latents:
            self._vae = load_vae(self.config.latents, self.config.device)
        return self._vae


def load_vae(path: str | os.PathLike, device: str = "cpu"):
    """``AutoencoderKLTemporalDecoder`` from a VAE folder or the ``vae`` subfolder of an SVD folder."""
    from diffusers import AutoencoderKLTemporalDecoder

    path = Path(path)
    sub = "vae" if (path / "vae" / "config.json").is_file() else None
    if not (path / (sub or "") / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no VAE config.json here or in {path / 'vae'}")
    return AutoencoderKLTemporalDecoder.from_pretrained(path, subfolder=sub).to(device).eval()


def nearest_frames(timestamps: np.ndarray, n_out: int, fps: float = FPS) -> np.ndarray:
    """For each output time ``t0 + k / fps`` the index of the source frame with the nearest timestamp.

    Ties go to the earlier frame. Works for any source rate (30 -> 25 drops frames, 24 -> 25 repeats some).
    """
    times = timestamps[0] + np.arange(n_out) / fps
    right = np.clip(np.searchsorted(timestamps, times), 1, len(timestamps) - 1) if len(timestamps) > 1 else None
    if right is None:
        return np.zeros(n_out, dtype=np.int64)
    left = right - 1
    take_right = timestamps[right] - times < times - timestamps[left]
    return np.where(take_right, right, left).astype(np.int64)


def video_seconds(timestamps: np.ndarray, fps: float) -> float:
    """Time span covered by frames with these start times (the last frame lasts one frame interval)."""
    step = float(np.median(np.diff(timestamps))) if len(timestamps) > 1 else 1.0 / fps
    return float(timestamps[-1] - timestamps[0]) + step


class _FrameReader:
    """Decode the source frames behind output positions; keeps them all when they fit in the cache budget."""

    def __init__(self, path: Path, source_indices: np.ndarray, width: int, height: int):
        self.path, self.source_indices = path, source_indices
        self.keep = len(np.unique(source_indices)) * width * height * 3 <= _FRAME_CACHE_BYTES
        self._all: np.ndarray | None = None

    def _decode(self, sources: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(sources, return_inverse=True)  # decode each source frame once, in order
        return media.read_frames(self.path, unique)[inverse]

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        if not self.keep:
            return self._decode(self.source_indices[positions])
        if self._all is None:
            self._all = self._decode(self.source_indices)
        return self._all[positions]

    def release(self) -> None:
        self._all = None


class Stage:
    """The step a clip is in, so a failure can be reported with where it happened."""

    def __init__(self) -> None:
        self.name = "probe"

    def __call__(self, name: str) -> None:
        self.name = name


def _load_rows(folder: str, clip: face.ClipFrames) -> np.ndarray:
    path = Path(folder) / f"{clip.clip_id}.npy"
    if not path.is_file():
        raise ClipFailure("no_expression", f"{path}: not found")
    array = np.load(path)
    for n, rows in ((clip.n_source_frames, clip.source_indices), (len(clip.source_indices), slice(None))):
        if len(array) == n:
            return np.asarray(array[rows], dtype=np.float32).reshape(len(clip.source_indices), -1)
    raise ClipFailure("no_expression", f"{path}: {len(array)} rows, expected {clip.n_source_frames} or "
                                       f"{len(clip.source_indices)}")


def prepare_clip(spec: ClipSpec, config: PrepConfig, models: Models, stage: Stage | None = None,
                 folder: Path | None = None) -> dict[str, Any]:
    """Compute the store arrays of one clip. Raises :class:`ClipFailure` for bad input.

    The cropped frames (and their VAE latents) are streamed into ``folder/frames.mp4`` chunk by chunk; without
    ``folder`` they are cut (for the crop-space landmarks) but not kept.
    """
    stage = stage or Stage()
    # --- probe
    stage("probe")
    if not spec.video.is_file() or not os.access(spec.video, os.R_OK):
        raise ClipFailure("unreadable", f"{spec.video}: not a readable file")
    try:
        info = media.probe_video(spec.video)
        timestamps = media.frame_timestamps(spec.video)
    except media.MediaError as exc:
        raise ClipFailure("corrupt_video", str(exc)) from exc
    seconds = video_seconds(timestamps, info.fps)
    if seconds < config.min_seconds:
        raise ClipFailure("too_short", f"{spec.video}: {seconds:.2f} s < {config.min_seconds} s")

    # --- audio: the separate file when there is one (MEAD m4a), else the video's own track
    stage("audio")
    audio_path = spec.audio if spec.audio is not None and spec.audio.is_file() else spec.video
    if audio_path == spec.video and not info.has_audio:
        raise ClipFailure("no_audio", f"{spec.video}: no audio track" + (f" and no {spec.audio}" if spec.audio else ""))
    try:
        audio = media.read_audio(audio_path, SAMPLE_RATE)
    except media.MediaError as exc:
        raise ClipFailure("corrupt_audio", str(exc)) from exc
    audio_seconds = len(audio) / SAMPLE_RATE
    slack = min(config.audio_slack_seconds, config.audio_slack_ratio * seconds)
    if audio_seconds < seconds - slack:
        raise ClipFailure("audio_too_short", f"{audio_path}: {audio_seconds:.2f} s of audio for {seconds:.2f} s of video")
    # Decoder timestamps are float32: allow a hundredth of a frame of rounding.
    n_frames = int(np.floor(min(seconds, audio_seconds) * FPS + 0.01))
    if n_frames < config.min_seconds * FPS:
        raise ClipFailure("too_short", f"{spec.video}: {n_frames} frames at {FPS} fps < {config.min_seconds} s")
    audio = np.pad(audio[: n_frames * SAMPLES_PER_FRAME], (0, max(0, n_frames * SAMPLES_PER_FRAME - len(audio))))

    # --- landmarks on the 25 fps frames
    stage("landmarks")
    sources = nearest_frames(timestamps, n_frames)
    reader = _FrameReader(spec.video, sources, info.width, info.height)
    clip = face.ClipFrames(spec.clip_id, spec.video, sources, info.n_frames, reader)
    try:
        landmarks = models.landmarks(clip)
    except face.FaceError as exc:
        raise ClipFailure("no_landmarks", str(exc)) from exc
    except media.MediaError as exc:
        raise ClipFailure("corrupt_video", str(exc)) from exc
    missing = face.missing_frames(landmarks).mean()
    if missing > config.max_missing_face:
        raise ClipFailure("no_face", f"{spec.video}: no face in {missing:.0%} of frames")
    landmarks = face.fill_missing(landmarks)

    # --- crop
    stage("crop")
    boxes = face.crop_boxes(landmarks, info.width, info.height, config.crop)
    pixel_boxes, latents = [], []

    def crops() -> Iterator[np.ndarray]:
        for start in range(0, n_frames, _CHUNK):
            positions = np.arange(start, min(n_frames, start + _CHUNK))
            chunk, used = face.crop_and_resize(reader(positions), boxes[positions], config.size)
            pixel_boxes.append(used)
            if models.vae is not None:
                stage("latents")
                latents.append(encode_latents(models.vae, chunk, config.device))
                stage("crop")
            yield chunk

    try:
        if folder is None:
            for _ in crops():
                pass
        else:
            media.write_video(folder / FILES["frames"], crops(), FPS)
    except media.MediaError as exc:
        raise ClipFailure("corrupt_video", str(exc)) from exc
    reader.release()  # free the source frames before the models run
    pixel_boxes = np.concatenate(pixel_boxes)
    crop_landmarks = face.to_crop_coords(landmarks, pixel_boxes, config.size)

    stage("features")
    expression = (_load_rows(config.expression_dir, clip) if config.expression_dir
                  else face.expression_features(crop_landmarks))
    out: dict[str, Any] = {
        "n_frames": n_frames,
        "audio": audio.astype(np.float32),
        "landmarks": crop_landmarks,
        "face_box": face.face_mask_boxes(crop_landmarks, config.size),
        "expression": expression,
    }
    stage("whisper")
    out["whisper"] = models.whisper(out["audio"], n_frames)
    if latents:
        out["latents"] = np.concatenate(latents)
    return out


def encode_latents(vae, frames: np.ndarray, device: str = "cpu") -> np.ndarray:
    """(T, 4, H/8, W/8) float16 latents: the posterior mode scaled by the VAE's scaling factor (0.18215)."""
    import torch

    chunks = []
    with torch.inference_mode():
        for start in range(0, len(frames), 8):
            x = torch.from_numpy(frames[start:start + 8]).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            z = vae.encode(x.to(vae.dtype)).latent_dist.mode() * vae.config.scaling_factor
            chunks.append(z.float().cpu().numpy())
    return np.concatenate(chunks).astype(np.float16)


FILES = {"frames": "frames.mp4", "audio": "audio.wav", "whisper": "whisper.npy", "landmarks": "landmarks.npy",
         "expression": "expression.npy", "face_box": "face_box.npy", "latents": "latents.npy"}


def meta_row(spec: ClipSpec, n_frames: int, files: list[str]) -> dict[str, Any]:
    """The manifest row of a finished clip, without ``split`` (assigned by ``index``)."""
    return {
        "clip_id": spec.clip_id,
        "dataset": spec.dataset,
        "identity": spec.identity,
        "emotion": spec.emotion,
        "level": spec.level,
        "source": os.path.abspath(spec.video),
        "n_frames": n_frames,
        "fps": FPS,
        "files": {key: f"clips/{spec.clip_id}/{FILES[key]}" for key in files},
    }


@contextmanager
def staging_folder(store: Path, clip_id: str) -> Iterator[Path]:
    """A fresh ``clips/.tmp-{id}-{pid}`` to fill; removed again if anything fails before :func:`write_clip`."""
    tmp = store / "clips" / f".tmp-{clip_id}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_clip(store: Path, spec: ClipSpec, arrays: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Complete the staging folder ``tmp`` (which holds frames.mp4) and rename it to ``clips/{id}`` atomically."""
    final = store / "clips" / spec.clip_id
    media.write_audio(tmp / FILES["audio"], arrays["audio"], SAMPLE_RATE)
    keys = ["frames", "audio"]
    for key in ("whisper", "landmarks", "expression", "face_box", "latents"):
        if key in arrays:
            np.save(tmp / FILES[key], arrays[key])
            keys.append(key)
    row = meta_row(spec, arrays["n_frames"], keys)
    (tmp / "meta.json").write_text(json.dumps(row, indent=1) + "\n")
    os.replace(tmp, final)  # fails if the clip already exists
    return row


def write_failure(store: Path, spec: ClipSpec, reason: str, stage: str, detail: str) -> dict[str, str]:
    """Record a failed clip in ``failures/{clip_id}.json`` (atomic)."""
    record = {"clip_id": spec.clip_id, "source": os.path.abspath(spec.video), "reason": reason, "stage": stage,
              "detail": detail}
    path = store / "failures" / f"{spec.clip_id}.json"
    with media.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return record


def process_clip(spec: ClipSpec, store: Path, config: PrepConfig, models: Models) -> dict[str, Any]:
    """Prepare one clip into the store; never raises for a bad clip. Returns {clip_id, status, ...}."""
    failure = store / "failures" / f"{spec.clip_id}.json"
    stage = Stage()
    try:
        with staging_folder(store, spec.clip_id) as tmp:
            arrays = prepare_clip(spec, config, models, stage, tmp)
            write_clip(store, spec, arrays, tmp)
    except ClipFailure as exc:
        write_failure(store, spec, exc.reason, stage.name, exc.detail)
        return {"clip_id": spec.clip_id, "status": "failed", "reason": exc.reason, "detail": exc.detail}
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # one bad clip never stops the run; the record says where it broke
        detail = f"{type(exc).__name__}: {exc}"
        write_failure(store, spec, "error", stage.name, detail)
        return {"clip_id": spec.clip_id, "status": "failed", "reason": "error", "detail": detail}
    failure.unlink(missing_ok=True)
    return {"clip_id": spec.clip_id, "status": "done", "n_frames": int(arrays["n_frames"])}


def feature_extractor(whisper: str, landmarks: str = "face_alignment", device: str = "cpu", size: int = 256):
    """``(video, audio or None) -> (expression (T, D), whisper (2T, 5, 384))`` for any video file.

    The same clip preparation as the store (crop, landmarks, expression features, whisper-tiny), so stage-1
    priors of arbitrary videos match what the embedder saw in training (``dicetalk.priors.media_prior``).
    """
    models = Models(PrepConfig(size=size, landmarks=landmarks, whisper=whisper, device=device))

    def extract(video: Path, audio: Path | None) -> tuple[np.ndarray, np.ndarray]:
        spec = ClipSpec(video.stem, "hdtf", video.stem, None, None, video, audio)
        try:
            arrays = prepare_clip(spec, models.config, models)
        except ClipFailure as err:
            raise ValueError(f"{video}: cannot compute emotion features ({err})") from None
        return arrays["expression"], arrays["whisper"]

    return extract
