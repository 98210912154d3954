"""One stage-2 denoising step and the frozen encoders around it, shared by training, the benchmark and sampling.

- :func:`diffusion_step`: EDM noise level per sample -> noisy latents -> talker -> the three loss terms;
- :func:`encode_image`: CLIP image embedding of the reference frame, as the SVD pipeline computes it;
- :func:`vae_encode` / :func:`vae_decode`: frames <-> unscaled VAE latents in chunks (memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dicetalk.diffusion.edm import add_noise, sample_sigmas

from .losses import LossWeights, classifier_loss, denoising_loss, total_loss
from .talker import Talker, TalkerOutput

# CLIP ViT image normalisation (the constants of the CLIP image processor SVD ships).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class StepResult:
    """Weighted total ``loss`` and its terms, the talker output and the noise levels used."""

    loss: Tensor
    denoise: Tensor
    cls: Tensor
    vq: Tensor
    output: TalkerOutput
    sigma: Tensor


def diffusion_step(
    talker: Talker,
    clean: Tensor,
    *,
    ref_latents: Tensor,
    image_embeds: Tensor,
    added_time_ids: Tensor,
    whisper: Tensor,
    prior: Tensor,
    face_mask: Tensor | None,
    labels: Tensor,
    weights: LossWeights,
    generator: torch.Generator | None = None,
) -> StepResult:
    """Denoising loss of ``clean`` scaled latents (B, F, 4, h, w) at sigma ~ LogNormal, plus classifier
    and VQ terms. ``generator`` (on the latents' device) fixes sigma and noise, e.g. for validation."""
    batch = clean.shape[0]
    sigma = sample_sigmas(batch, device=clean.device, generator=generator)
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    noisy = add_noise(clean, sigma, noise)
    out = talker(noisy, sigma, ref_latents, image_embeds, added_time_ids, whisper, prior, face_mask)
    denoise = denoising_loss(out.denoised, clean, sigma)
    cls = classifier_loss(out.logits, labels)
    loss = total_loss(denoise, cls, out.vq_loss, weights)
    return StepResult(loss, denoise, cls, out.vq_loss, out, sigma)


def encode_image(image_encoder: nn.Module, pixels: Tensor) -> Tensor:
    """CLIP image embeddings (B, 1, D) of frames (B, 3, H, W) in [-1, 1]: resized (antialiased bicubic)
    to the encoder's input size and normalised with the CLIP mean and std, as the SVD pipeline does."""
    side = image_encoder.config.image_size
    x = pixels.float()
    if x.shape[-2:] != (side, side):
        x = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False, antialias=True)
    x = ((x + 1) / 2).clamp(0, 1)
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    weight_dtype = next(image_encoder.parameters()).dtype
    embeds = image_encoder(pixel_values=((x - mean) / std).to(weight_dtype)).image_embeds
    return embeds.unsqueeze(1)


def vae_encode(vae: nn.Module, pixels: Tensor, chunk: int = 16, sample: bool = True) -> Tensor:
    """Unscaled VAE latents (N, 4, h, w) of frames (N, 3, H, W) in [-1, 1], ``chunk`` frames at a time.

    ``sample``: draw from the posterior (training targets); else its mode (the conditioning frame, as the
    SVD pipeline encodes it).
    """
    weight_dtype = next(vae.parameters()).dtype
    parts = []
    for piece in pixels.split(chunk):
        dist = vae.encode(piece.to(weight_dtype)).latent_dist
        parts.append(dist.sample() if sample else dist.mode())
    return torch.cat(parts)


def vae_decode(vae: nn.Module, latents: Tensor, chunk: int = 8) -> Tensor:
    """Frames (B, F, 3, H, W) in [-1, 1] from unscaled latents (B, F, 4, h, w); the temporal decoder
    sees ``chunk`` consecutive frames of one video at a time."""
    weight_dtype = next(vae.parameters()).dtype
    videos = []
    for video in latents:
        frames = [vae.decode(p.to(weight_dtype), num_frames=p.shape[0]).sample for p in video.split(chunk)]
        videos.append(torch.cat(frames))
    return torch.stack(videos).float().clamp(-1, 1)
