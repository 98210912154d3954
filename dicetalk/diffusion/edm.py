"""EDM preconditioning and noise schedule as Stable Video Diffusion trains it.

SVD uses v-prediction with sigma_data = 1 (sgm ``VScalingWithEDMcNoise``): the network F sees
``c_in * x`` and ``c_noise`` and the denoiser is ``D(x; sigma) = c_skip * x + c_out * F``. Training draws
sigma from a log-normal (P_mean 0.7, P_std 1.6) and weights the squared error of D by (sigma^2 + 1) / sigma^2,
which makes every sigma contribute a v-prediction error of unit scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

P_MEAN = 0.7
P_STD = 1.6
# Reference-frame noise augmentation strength, as SVD fine-tuning scripts draw it (log-normal -3.0, 0.5).
AUG_P_MEAN = -3.0
AUG_P_STD = 0.5


def sample_log_normal(
    n: int,
    p_mean: float,
    p_std: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``n`` values of exp(p_mean + p_std * N(0, 1)) as float32."""
    normal = torch.randn(n, generator=generator, device=device, dtype=torch.float32)
    return torch.exp(p_mean + p_std * normal)


def sample_sigmas(
    n: int,
    *,
    p_mean: float = P_MEAN,
    p_std: float = P_STD,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Training noise levels, one per sample: sigma ~ LogNormal(p_mean, p_std)."""
    return sample_log_normal(n, p_mean, p_std, device=device, generator=generator)


def sample_noise_aug_strength(
    n: int,
    *,
    p_mean: float = AUG_P_MEAN,
    p_std: float = AUG_P_STD,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Reference-frame noise augmentation strengths, one per sample (log-normal)."""
    return sample_log_normal(n, p_mean, p_std, device=device, generator=generator)


@dataclass(frozen=True)
class Preconditioning:
    """EDM coefficients for a batch of sigmas, each shaped like ``sigma``."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


def precondition(sigma: Tensor) -> Preconditioning:
    """v-prediction EDM coefficients with sigma_data = 1.

    c_skip = 1/(s^2+1), c_out = -s/sqrt(s^2+1), c_in = 1/sqrt(s^2+1), c_noise = ln(s)/4 (the UNet's timestep).
    """
    denom = sigma**2 + 1
    return Preconditioning(
        c_skip=1.0 / denom,
        c_out=-sigma * torch.rsqrt(denom),
        c_in=torch.rsqrt(denom),
        c_noise=0.25 * torch.log(sigma),
    )


def loss_weight(sigma: Tensor) -> Tensor:
    """EDM loss weight (s^2 + 1) / s^2 for sigma_data = 1."""
    return (sigma**2 + 1) / sigma**2


def expand_like(values: Tensor, target: Tensor) -> Tensor:
    """Reshape per-sample ``values`` (B,) so they broadcast against ``target`` (B, ...)."""
    return values.reshape(values.shape[0], *([1] * (target.ndim - 1))).to(target.dtype)


def add_noise(clean: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
    """x_sigma = x_0 + sigma * n, with one sigma per sample."""
    return clean + expand_like(sigma, clean) * noise


def denoise(model_output: Tensor, noisy: Tensor, sigma: Tensor) -> Tensor:
    """D(x; sigma) = c_skip * x + c_out * F(c_in * x, c_noise) from the network output F."""
    pre = precondition(sigma)
    return expand_like(pre.c_skip, noisy) * noisy + expand_like(pre.c_out, noisy) * model_output


def augment_reference(reference: Tensor, strength: Tensor, noise: Tensor | None = None) -> Tensor:
    """Noise augmentation of the conditioning frame: ref + strength * N(0, 1), one strength per sample.

    SVD adds it to the reference pixels before VAE encoding; with cached latents it can be applied to the
    latents instead (a different but common approximation; the strength then is in latent units).
    """
    if noise is None:
        noise = torch.randn_like(reference)
    return reference + expand_like(strength, reference) * noise


def added_time_ids(
    fps: float | Tensor,
    motion_bucket_id: float | Tensor,
    third: float | Tensor,
    batch_size: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """SVD micro-conditioning (B, 3) = [fps, motion_bucket_id, third].

    The third slot is SVD's noise_aug_strength; DICE-Talk's inference reuses it for a second motion bucket
    (16). Values are passed verbatim: the stock SVD pipeline passes fps - 1, DICE-Talk passes 12.5.
    """
    columns = []
    for value in (fps, motion_bucket_id, third):
        column = torch.as_tensor(value, dtype=dtype, device=device).reshape(-1)
        if column.numel() not in (1, batch_size):
            raise ValueError(f"added_time_ids: got {column.numel()} values for a batch of {batch_size}")
        columns.append(column.expand(batch_size))
    return torch.stack(columns, dim=1)
