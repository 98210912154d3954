"""Inference: portrait + audio + emotion -> talking video (paper 3.2 / 4.1, released-code settings).

:class:`DiceTalkPipeline` samples the talker with EDM Euler steps on Karras sigmas (25 steps, 0.002..700),
three-way guidance (reference 3.0, audio + emotion 6.0) plus an optional emotion guidance term of our own,
and handles audio of any length by denoising all frames jointly: at every step the sequence is covered by
``window``-frame windows whose start moves by ``shift`` frames per step (circularly, with ``window`` padding
frames of silence at the end so that the wrap-around never joins the last frame to the first), and the
denoised predictions of overlapping windows are averaged. Frames are generated at 25 / ``frame_stride`` fps
(12.5) and blended back to 25 fps.

Emotion is a prior per 25 fps frame, so labels, ``.npy`` priors, reference videos, mixtures of two and
time schedules all reduce to one (T, D) array (:func:`frame_priors`); each window is conditioned on the
mean prior of its frames, so a schedule's change travels smoothly through the shifting windows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dicetalk.conditioning import face_box_mask
from dicetalk.constants import EMOTIONS, FPS, SAMPLES_PER_FRAME
from dicetalk.data.talker_data import whisper_windows  # the same frame -> whisper mapping as training
from dicetalk.diffusion.edm import added_time_ids
from dicetalk.diffusion.sampler import euler_sample, karras_sigmas, three_way_guidance
from dicetalk.models.talker.step import encode_image

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


@dataclass
class SamplingConfig:
    """Sampler settings; the defaults are the released DICE-Talk inference settings."""

    steps: int = 25
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    ref_scale: float = 3.0  # s1: reference vs unconditional
    cond_scale: float = 6.0  # s2: audio + emotion vs reference only
    # Ours: + emotion_scale * (D_full - D_without_emotion), one more branch per step when non-zero.
    emotion_scale: float = 0.0
    window: int = 25
    shift: int = 7
    frame_stride: int = 2  # 2: generate 12.5 fps and blend to 25 fps; 1: generate 25 fps
    motion_bucket: float = 8.0  # added_time_ids = (25 / frame_stride, motion_bucket, motion_bucket_exp)
    motion_bucket_exp: float = 16.0
    decode_chunk: int = 10

    def __post_init__(self) -> None:
        if self.steps < 1 or self.window < 1 or self.frame_stride < 1 or self.decode_chunk < 1:
            raise ValueError(f"SamplingConfig: steps, window, frame_stride and decode_chunk must be >= 1: {self}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"SamplingConfig: need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")


# ------------------------------------------------------------------------------------------------- emotion


def resolve_emotion(
    spec: str, priors_dir: str | os.PathLike | None = None, video_prior: Callable[[Path], np.ndarray] | None = None
) -> np.ndarray:
    """Prior (D,) for an emotion spec: a label (``{priors_dir}/{label}.npy``), a ``.npy`` prior file, or a
    video (``video_prior(path)``, the stage-1 embedder)."""
    from dicetalk.official import load_prior

    path = Path(spec)
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such prior file")
        return load_prior(path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such emotion reference video")
        if video_prior is None:
            raise ValueError(f"{path}: an emotion reference video needs the stage-1 embedder (--embedder CKPT)")
        return np.asarray(video_prior(path), np.float32).reshape(-1)
    if spec in EMOTIONS:
        if priors_dir is None:
            raise ValueError(f"emotion label {spec!r} needs a priors folder (--priors DIR with {spec}.npy)")
        prior = Path(priors_dir) / f"{spec}.npy"
        if not prior.is_file():
            raise FileNotFoundError(f"{prior}: no preset prior for {spec!r}")
        return load_prior(prior)
    raise ValueError(f"emotion {spec!r}: not a label ({', '.join(EMOTIONS)}), a .npy prior or a video file")


def parse_schedule(text: str) -> list[tuple[float, str]]:
    """``"0:neutral,2.5:happy"`` -> [(0.0, "neutral"), (2.5, "happy")], times strictly increasing."""
    entries = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        time, sep, spec = item.partition(":")
        try:
            seconds = float(time)
        except ValueError:
            seconds = float("nan")
        if not sep or not spec or not np.isfinite(seconds) or seconds < 0:
            raise ValueError(f"schedule entry {item!r}: expected SECONDS:EMOTION, e.g. 2.5:happy")
        entries.append((seconds, spec.strip()))
    if not entries:
        raise ValueError(f"schedule {text!r} is empty")
    times = [t for t, _ in entries]
    if any(b <= a for a, b in zip(times, times[1:])):
        raise ValueError(f"schedule {text!r}: times must increase")
    return entries


def frame_priors(
    n_frames: int, keyframes: Sequence[tuple[float, np.ndarray]], transition: float = 0.5, fps: float = FPS
) -> np.ndarray:
    """(n_frames, D) prior per frame from a schedule of (start seconds, prior).

    Each prior holds from its start time; at every later start the previous prior cross-fades linearly
    into the next over ``transition`` seconds (0: a hard switch). Before the first start the first prior holds.
    """
    if not keyframes:
        raise ValueError("frame_priors: empty schedule")
    times = np.arange(n_frames) / fps
    current = np.broadcast_to(np.asarray(keyframes[0][1], np.float32), (n_frames, len(keyframes[0][1]))).copy()
    for start, prior in keyframes[1:]:
        if transition > 0:
            weight = np.clip((times - start) / transition, 0.0, 1.0)
        else:
            weight = (times >= start).astype(np.float32)
        current = (1 - weight[:, None]) * current + weight[:, None] * np.asarray(prior, np.float32)
    return current.astype(np.float32)


def mix_priors(a: np.ndarray, b: np.ndarray, mix: float) -> np.ndarray:
    """(1 - mix) * a + mix * b: interpolation between two emotions."""
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    return ((1 - mix) * np.asarray(a, np.float32) + mix * np.asarray(b, np.float32)).astype(np.float32)


# ------------------------------------------------------------------------------------------- frame layout


def window_schedule(n: int, window: int, step: int, shift: int) -> list[np.ndarray]:
    """Frame indices of the windows denoised at sampling step ``step`` over a (padded) sequence of ``n``.

    A sequence no longer than ``window`` is one window. Otherwise windows of ``window`` frames start at
    ``(step * shift) % window`` and follow each other circularly until every frame is covered once; the
    last may wrap to the start, where its predictions are averaged with the first window's.
    """
    if n <= window:
        return [np.arange(n)]
    offset = (step * shift) % window
    count = -(-n // window)
    return [(offset + j * window + np.arange(window)) % n for j in range(count)]


def upsample_frames(frames: np.ndarray, stride: int, n_out: int) -> np.ndarray:
    """Frames generated at every ``stride``-th output frame -> ``n_out`` frames, linear blends between."""
    if stride == 1:
        return frames[:n_out]
    out = np.empty((n_out, *frames.shape[1:]), np.uint8)
    last = len(frames) - 1
    for f in range(n_out):
        i, r = divmod(f, stride)
        if r == 0 or i >= last:
            out[f] = frames[min(i, last)]
        else:
            w = r / stride
            out[f] = np.round((1 - w) * frames[i].astype(np.float32) + w * frames[i + 1].astype(np.float32))
    return out


# ------------------------------------------------------------------------------------------------ pipeline


@dataclass
class GenerationInput:
    """Everything one video needs, at the talker's pixel size.

    reference: (H, W, 3) uint8 aligned face; face_box: (4,) x0, y0, x1, y1 in [0, 1]; whisper: (2T', 5, 384)
    at 50 Hz; priors: (T, D) per 25 fps output frame (or (D,) for a constant emotion); n_frames: T.
    """

    reference: np.ndarray
    face_box: np.ndarray
    whisper: np.ndarray
    priors: np.ndarray
    n_frames: int


class DiceTalkPipeline:
    """Talker + VAE + CLIP image encoder -> 25 fps RGB frames."""

    def __init__(self, talker: torch.nn.Module, vae: torch.nn.Module, image_encoder: torch.nn.Module,
                 vae_scaling: float = 0.18215, config: SamplingConfig | None = None,
                 device: str | torch.device = "cpu", progress: bool = True) -> None:
        self.device = torch.device(device)
        self.talker = talker.to(self.device).eval()
        self.vae = vae.to(self.device).eval()
        self.image_encoder = image_encoder.to(self.device).eval()
        self.vae_scaling = vae_scaling
        self.config = config or SamplingConfig()
        self.progress = progress
        self.dtype = next(self.talker.parameters()).dtype

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, svd_path: str | os.PathLike | None = None,
                        **kwargs) -> "DiceTalkPipeline":
        """Pipeline for a trained talker checkpoint (see :func:`load_talker_parts`)."""
        parts = load_talker_parts(path, svd_path)
        return cls(parts.talker, parts.vae, parts.image_encoder, parts.vae_scaling, **kwargs)

    # ---- conditioning ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_reference(self, image: np.ndarray) -> tuple[Tensor, Tensor]:
        """(unscaled VAE posterior mode (1, 4, h, w), CLIP image embedding (1, 1, D)) of a uint8 RGB image."""
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().to(self.device) / 127.5 - 1
        latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode()
        # the same CLIP preprocessing as training (models.talker.step.encode_image)
        return latents.to(self.dtype), encode_image(self.image_encoder, pixels).to(self.dtype)

    def _branches(self, ref: Tensor, embeds: Tensor, whisper: Tensor, prior: Tensor) -> dict[str, Tensor]:
        """Batched inputs of the guidance branches: uncond, ref (image only), full [, no_emotion]."""
        zeros_w, zeros_p = torch.zeros_like(whisper), torch.zeros_like(prior)
        rows = [(torch.zeros_like(ref), torch.zeros_like(embeds), zeros_w, zeros_p), (ref, embeds, zeros_w, zeros_p),
                (ref, embeds, whisper, prior)]
        if self.config.emotion_scale:
            rows.append((ref, embeds, whisper, zeros_p))
        return {name: torch.cat([row[i] for row in rows])
                for i, name in enumerate(("ref_latents", "image_embeds", "whisper", "prior"))}

    @torch.no_grad()
    def sample(self, ref_latents: Tensor, image_embeds: Tensor, whisper: np.ndarray, priors: np.ndarray,
               face_mask: Tensor, generator: torch.Generator) -> Tensor:
        """Denoised latents (N, 4, h, w) for N generated frames.

        whisper: (N, 10, 5, 384) windows per generated frame; priors: (N, D) per generated frame.
        """
        cfg = self.config
        n = len(whisper)
        pad = cfg.window if n > cfg.window else 0  # silent tail so the circular windows never join end to start
        whisper = np.concatenate([whisper, np.zeros((pad, *whisper.shape[1:]), np.float32)])
        priors = np.concatenate([priors, np.repeat(priors[-1:], pad, axis=0)])
        length = n + pad
        whisper_t = torch.from_numpy(whisper).to(self.device, self.dtype)
        priors_t = torch.from_numpy(priors).to(self.device, self.dtype)
        h, w = ref_latents.shape[-2:]
        noise = torch.randn((1, length, ref_latents.shape[1], h, w), generator=generator, dtype=torch.float32)
        sigmas = karras_sigmas(cfg.steps, cfg.sigma_min, cfg.sigma_max)
        noise = noise.to(self.device)
        start = ref_latents[:, None].float() * self.vae_scaling + noise * float(sigmas[0])
        branches = 4 if cfg.emotion_scale else 3
        time_ids = added_time_ids(FPS / cfg.frame_stride, cfg.motion_bucket, cfg.motion_bucket_exp, branches,
                                  device=self.device, dtype=self.dtype)
        mask = face_mask.to(self.device, self.dtype).expand(branches, -1, -1, -1)
        step = 0
        bar = _progress(cfg.steps, self.progress)

        def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
            nonlocal step
            x = x.to(self.device, self.dtype)
            total = torch.zeros_like(x, dtype=torch.float32)
            count = torch.zeros(length, device=self.device)
            for idx in window_schedule(length, cfg.window, step, cfg.shift):
                idx_t = torch.from_numpy(idx).to(self.device)
                inputs = self._branches(ref_latents, image_embeds, whisper_t[idx_t][None],
                                        priors_t[idx_t].mean(0, keepdim=True))
                out = self.talker(noisy_latents=x[:, idx_t].expand(branches, -1, -1, -1, -1),
                                  sigma=sigma.to(self.device, self.dtype).expand(branches),
                                  added_time_ids=time_ids, face_mask=mask, **inputs).denoised.float()
                guided = three_way_guidance(out[0], out[1], out[2], cfg.ref_scale, cfg.cond_scale)
                if cfg.emotion_scale:
                    guided = guided + cfg.emotion_scale * (out[2] - out[3])
                total[0].index_add_(0, idx_t, guided)
                count.index_add_(0, idx_t, torch.ones(len(idx), device=self.device))
            step += 1
            bar.update(1)
            return total / count.view(1, -1, 1, 1, 1)

        try:
            latents = euler_sample(denoiser, start, sigmas)
        finally:
            bar.close()
            self.talker.clear_context()
        return latents[0, :n]

    @torch.no_grad()
    def decode(self, latents: Tensor) -> np.ndarray:
        """VAE-decode scaled latents (N, 4, h, w) in chunks -> uint8 RGB frames (N, H, W, 3)."""
        frames = []
        for chunk in latents.split(self.config.decode_chunk):
            z = (chunk / self.vae_scaling).to(self.device, self.vae.dtype)
            pixels = self.vae.decode(z, num_frames=len(chunk)).sample.float()
            frames.append(((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
        return torch.cat(frames).numpy()

    def __call__(self, inputs: GenerationInput, seed: int = 0) -> np.ndarray:
        """(T, H, W, 3) uint8 frames at 25 fps. The same inputs and seed give the same frames."""
        cfg = self.config
        image = np.asarray(inputs.reference)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"reference must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        if inputs.n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {inputs.n_frames}")
        priors = np.asarray(inputs.priors, np.float32)
        if priors.ndim == 1:
            priors = np.broadcast_to(priors, (inputs.n_frames, len(priors)))
        if len(priors) != inputs.n_frames:
            raise ValueError(f"priors: {len(priors)} rows for {inputs.n_frames} frames")
        generated = np.arange(0, inputs.n_frames, cfg.frame_stride)
        ref_latents, image_embeds = self.encode_reference(image)
        box = torch.tensor(np.asarray(inputs.face_box, np.float32).reshape(1, 4))
        mask = face_box_mask(box, image.shape[0], image.shape[1])
        generator = torch.Generator().manual_seed(int(seed))
        latents = self.sample(ref_latents, image_embeds, whisper_windows(inputs.whisper, generated),
                              np.ascontiguousarray(priors[generated]), mask, generator)
        return upsample_frames(self.decode(latents), cfg.frame_stride, inputs.n_frames)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sampling", unit="step", disable=not enabled, leave=False)


# -------------------------------------------------------------------------------------- loading and inputs


def load_talker_parts(path: str | os.PathLike, svd_path: str | os.PathLike | None = None):
    """Talker, VAE and CLIP image encoder for a trained checkpoint -> ``TalkerParts``.

    The one place the checkpoint format is known. ``.ckpt`` (Lightning): ``TalkerModule.load_for_inference``.
    ``.safetensors`` (``Talker.save_trainable`` / ``dicetalk import-official``): the talker is rebuilt from
    the file's config on the base it names (``svd_path`` overrides; base ``tiny`` = the tiny test model,
    whose frozen VAE / CLIP are random with seed 0) and the file's weights are loaded.
    """
    import json

    from safetensors import safe_open

    from dicetalk.models.talker import TalkerConfig, build_talker

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such talker checkpoint")
    if path.suffix == ".ckpt":
        from dicetalk.lightning.talker_module import TalkerModule

        parts, _info = TalkerModule.load_for_inference(path, svd_path=svd_path)
        return parts
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for non-safetensors files
        raise ValueError(f"{path}: not a talker checkpoint ({err})") from None
    if "config" not in metadata:
        raise ValueError(f"{path}: no talker config in the metadata (not written by save_trainable?)")
    config = TalkerConfig(**json.loads(metadata["config"]))
    base = metadata.get("base", "")
    if base == "tiny" and svd_path is None:
        parts = build_talker("tiny", config=config)
    else:
        parts = build_talker("full", svd_path=svd_path or base, config=config)
    parts.talker.load_trainable(path)
    return parts


def prepare_portrait(image_path: str | os.PathLike, size: int, crop: bool = True, landmarks: str = "face_alignment",
                     device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Portrait -> (aligned (size, size, 3) uint8 RGB, face box (4,) in [0, 1]).

    ``crop``: detect landmarks (``face.make_backend(landmarks)``; ``sidecar`` reads
    ``{stem}.landmarks.npy`` beside the image) and cut the square face crop the store uses. Without it the
    image is centre-cropped to a square and resized (already aligned input); the face box then comes from
    a landmark sidecar if one exists, else it is the whole frame.
    """
    from dicetalk import face

    image_path = Path(image_path)
    image = _read_image(image_path)
    height, width = image.shape[:2]
    sidecar = image_path.with_name(f"{image_path.stem}.landmarks.npy")
    if crop or sidecar.is_file():
        clip = face.ClipFrames(image_path.stem, image_path, np.zeros(1, np.int64), 1, lambda _: image[None])
        backend = face.make_backend("sidecar" if not crop else landmarks, device=device)
        points = backend(clip)
        if face.missing_frames(points).all():
            raise face.FaceError(f"{image_path}: no face found")
    if crop:
        boxes = face.crop_boxes(points, width, height, face.CropConfig(smooth=0))
    else:
        side = min(width, height)
        x0, y0 = (width - side) / 2, (height - side) / 2
        boxes = np.array([[x0, y0, x0 + side, y0 + side]], np.float32)
    frames, pixel_boxes = face.crop_and_resize(image[None], boxes, size)
    if crop or sidecar.is_file():
        box = face.face_mask_boxes(face.to_crop_coords(points, pixel_boxes, size), size)[0]
    else:
        box = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
    return frames[0], box


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{path}: cannot read the image ({err})") from None


def video_prior_fn(embedder_ckpt: str | os.PathLike, whisper: str, landmarks: str = "face_alignment",
                   device: str = "cpu", window: int | None = None) -> Callable[[Path], np.ndarray]:
    """``path -> prior mu (D,)`` of a reference video with the stage-1 embedder.

    Features come from data_prep's own clip preparation (same crop, landmarks, expression features and
    whisper-tiny as the store), so the prior matches what the embedder saw in training.
    """
    from data_prep.pipeline import feature_extractor
    from dicetalk.models.embedder import load_embedder
    from dicetalk.priors import checkpoint_window, media_prior

    model = load_embedder(embedder_ckpt).to(device)
    window = window or checkpoint_window(embedder_ckpt)
    extract = feature_extractor(whisper, landmarks, device)
    return lambda path: media_prior(model, path, None, extract, window)[0]


def audio_frames(audio: np.ndarray) -> int:
    """Number of 25 fps frames an audio track of 16 kHz samples covers (released: samples // 640)."""
    return len(audio) // SAMPLES_PER_FRAME
