"""Stage-2 training losses: EDM denoising, emotion classification, emotion-bank VQ (paper Eq. 15-17)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dicetalk.diffusion.edm import expand_like, loss_weight

UNLABELLED = -1  # class label of samples without an emotion label (regular-set clips)


def denoising_loss(denoised: Tensor, clean: Tensor, sigma: Tensor) -> Tensor:
    """mean over samples and elements of w(sigma) * (D(x; sigma) - x_0)^2, w = (s^2 + 1) / s^2."""
    error = (denoised.float() - clean.float()) ** 2
    return (expand_like(loss_weight(sigma.float()), error) * error).mean()


def classifier_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy averaged over labelled samples only; labels == -1 mark unlabelled ones.

    A batch without labels gives 0 that still depends on the logits, so every rank's graph has the
    classifier in it (DDP expects the same parameters to receive gradients on every rank).
    """
    labelled = labels != UNLABELLED
    if not bool(labelled.any()):
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits[labelled].float(), labels[labelled])


def vq_loss(projected: Tensor, entry: Tensor, beta: float = 0.25) -> Tensor:
    """||sg[s] - C_k||^2 + beta * ||s - sg[C_k]||^2 (each a mean over elements).

    The first (codebook) term moves only the selected bank entry towards the projected prior; the second
    (commitment) term moves only the prior path towards the entry.
    """
    codebook = F.mse_loss(entry, projected.detach())
    commitment = F.mse_loss(projected, entry.detach())
    return codebook + beta * commitment


@dataclass
class LossWeights:
    """L = L_denoise + cls * L_cls + vq * L_vq. The paper leaves lambda_cls open; 0.1 is our default."""

    cls: float = 0.1
    vq: float = 1.0


def total_loss(denoise: Tensor, cls: Tensor, vq: Tensor, weights: LossWeights) -> Tensor:
    """Weighted sum of the three terms."""
    return denoise + weights.cls * cls + weights.vq * vq


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Top-1 accuracy over labelled samples (nan when none is labelled)."""
    labelled = labels != UNLABELLED
    if not bool(labelled.any()):
        return torch.tensor(float("nan"), device=logits.device)
    return (logits[labelled].argmax(-1) == labels[labelled]).float().mean()
