"""Stage-2 conditioning helpers: condition dropout (paper 4.1) and the face-box mask."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DropoutRates:
    """Share of samples that lose audio only, image only, emotion only, or all three (paper: 5% each)."""

    audio: float = 0.05
    image: float = 0.05
    emotion: float = 0.05
    all: float = 0.05

    def __post_init__(self) -> None:
        rates = (self.audio, self.image, self.emotion, self.all)
        if min(rates) < 0 or sum(rates) > 1:
            raise ValueError(f"DropoutRates: rates must be >= 0 and sum to <= 1, got {rates}")


@dataclass
class ConditionDrops:
    """Per-sample booleans (B,): which conditions are replaced by their null value."""

    audio: Tensor
    image: Tensor
    emotion: Tensor


def sample_condition_drops(
    batch_size: int,
    rates: DropoutRates = DropoutRates(),
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> ConditionDrops:
    """One uniform draw u per sample picks exactly one category: [0, a) audio, [a, a+i) image,
    [a+i, a+i+e) emotion, [a+i+e, a+i+e+all) all three, else none. So "audio only" never also drops the
    image, and "all" is the only way two conditions go together."""
    u = torch.rand(batch_size, generator=generator, device=device)
    edges = torch.cumsum(torch.tensor([rates.audio, rates.image, rates.emotion, rates.all], device=u.device), 0)
    category = torch.bucketize(u, edges, right=True)  # 0 audio, 1 image, 2 emotion, 3 all, 4 none
    every = category == 3
    return ConditionDrops(audio=(category == 0) | every, image=(category == 1) | every, emotion=(category == 2) | every)


def _zero_where(values: Tensor, drop: Tensor) -> Tensor:
    keep = (~drop).reshape(-1, *([1] * (values.ndim - 1))).to(values.dtype)
    return values * keep


def apply_condition_drops(
    drops: ConditionDrops, *, whisper: Tensor, ref_latents: Tensor, image_embeds: Tensor, prior: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Zero the dropped conditions, as the unconditional branches at inference do: audio -> zero whisper
    features, image -> zero reference latents and zero CLIP embedding, emotion -> zero prior.
    Returns new tensors (whisper, ref_latents, image_embeds, prior); the inputs are not modified."""
    return (
        _zero_where(whisper, drops.audio),
        _zero_where(ref_latents, drops.image),
        _zero_where(image_embeds, drops.image),
        _zero_where(prior, drops.emotion),
    )


def face_box_mask(boxes: Tensor, height: int, width: int, expand: float = 1.1) -> Tensor:
    """Binary mask (B, 1, H, W) of face boxes (B, 4) = x0, y0, x1, y1 in [0, 1] of the image.

    Each box is scaled by ``expand`` about its centre (DICE-Talk uses 1.1); a pixel is inside when its
    centre is.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"face_box_mask: boxes must be (B, 4), got {tuple(boxes.shape)}")
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half_w, half_h = (boxes[:, 2] - boxes[:, 0]) * expand / 2, (boxes[:, 3] - boxes[:, 1]) * expand / 2
    xs = (torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5) / width
    ys = (torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5) / height
    inside_x = (xs[None] - centre_x[:, None]).abs() <= half_w[:, None]  # (B, W)
    inside_y = (ys[None] - centre_y[:, None]).abs() <= half_h[:, None]  # (B, H)
    return (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1).to(boxes.dtype)
