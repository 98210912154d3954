"""Euler sampling on Karras sigmas for the EDM denoiser, and DICE-Talk's three-way guidance."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x (B, ...), sigma (B,)) -> D(x; sigma)


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0) -> Tensor:
    """``steps`` noise levels from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho), then a final 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def euler_sample(denoiser: Denoiser, x: Tensor, sigmas: Tensor) -> Tensor:
    """First-order Euler integration of the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma.

    ``x`` is the starting sample at ``sigmas[0]`` (e.g. noise * sigmas[0], or a noised reference latent).
    """
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        level = torch.full((x.shape[0],), sigma, device=x.device, dtype=torch.float32)
        derivative = (x - denoiser(x, level)) / sigma
        x = x + derivative * (sigma_next - sigma)
    return x


def three_way_guidance(
    uncond: Tensor, ref: Tensor, full: Tensor, ref_scale: float = 3.0, cond_scale: float = 6.0
) -> Tensor:
    """eps = eps_u + s1 (eps_ref - eps_u) + s2 (eps_full - eps_ref): unconditional, reference-only, and
    fully conditioned predictions (DICE-Talk: s1 = 3.0, s2 = 6.0). Works on denoised outputs too, since it
    is affine with weights summing to 1."""
    return uncond + ref_scale * (ref - uncond) + cond_scale * (full - ref)

