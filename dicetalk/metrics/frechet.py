"""Frechet distance between Gaussians, and the running statistics FID and FVD share."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

ArrayLike = Tensor | np.ndarray


def _psd_sqrt(sigma: Tensor) -> Tensor:
    """Symmetric square root of a positive semi-definite matrix (tiny negative eigenvalues clipped)."""
    eigvals, eigvecs = torch.linalg.eigh(sigma)
    return (eigvecs * eigvals.clamp_min(0).sqrt()) @ eigvecs.T


def trace_sqrt_product(sigma1: Tensor, sigma2: Tensor) -> Tensor:
    """tr((sigma1 sigma2)^1/2) for covariance matrices, in the dtype given (use float64).

    sigma1 sigma2 is not symmetric, so a general matrix square root (scipy sqrtm) or eigvals can return
    complex noise. It is similar to sqrt(sigma1) sigma2 sqrt(sigma1), which is symmetric PSD: its
    eigenvalues are real and non-negative, so the trace of the square root is the sum of their roots.
    """
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    inner = (inner + inner.T) / 2  # remove rounding asymmetry before eigvalsh
    return torch.linalg.eigvalsh(inner).clamp_min(0).sqrt().sum()


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^1/2), computed in float64."""
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(x).to(torch.float64) for x in (mu1, mu2, sigma1, sigma2))
    d = mu1.shape[-1]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance: need mu (d,) and sigma (d, d); got {tuple(mu1.shape)}, "
                         f"{tuple(sigma1.shape)}, {tuple(mu2.shape)}, {tuple(sigma2.shape)}")
    diff = mu1 - mu2
    value = diff @ diff + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt_product(sigma1, sigma2)
    return float(value)


class FrechetMetric(Metric):
    """Base for FID/FVD: per-side float64 feature sum, outer-product sum and count (all summed in DDP).

    Sums reduce exactly across processes and with ``merge_state``; float32 sums of 2048-d features lose
    up to ~1 FID point (metrics_references.md, 1.4). The covariance is the unbiased (N-1) estimate,
    as in pytorch-fid and torchmetrics. Subclasses turn inputs into (N, d) features and call
    :meth:`_add_features`.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0

    def __init__(self, num_features: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_features = int(num_features)
        self.counts: dict[str, int] = {}
        d = self.num_features
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_n", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def _add_features(self, features: Tensor, real: bool) -> None:
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: feature extractor returned {tuple(features.shape)}, "
                             f"expected (N, {self.num_features})")
        x = features.to(self.real_sum.device, torch.float64)
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + x.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + x.T @ x)
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + x.shape[0])

    def statistics(self, real: bool) -> tuple[Tensor, Tensor]:
        """Mean (d,) and unbiased covariance (d, d) of the real or generated features so far."""
        side = "real" if real else "fake"
        n = int(getattr(self, f"{side}_n"))
        if n < 2:
            raise RuntimeError(f"{type(self).__name__}: need at least 2 {side} samples, have {n}")
        mu = getattr(self, f"{side}_sum") / n
        cov = (getattr(self, f"{side}_outer") - n * torch.outer(mu, mu)) / (n - 1)
        return mu, cov

    def compute(self) -> Tensor:
        """Frechet distance between the real and generated feature Gaussians (float64 scalar).

        Also sets ``counts`` = {"real": N, "fake": N} over all processes (the states read after
        ``compute`` are this process's own again), since the value depends on N and must be reported with it.
        """
        mu_r, cov_r = self.statistics(real=True)
        mu_f, cov_f = self.statistics(real=False)
        self.counts = {"real": int(self.real_n), "fake": int(self.fake_n)}
        return torch.tensor(frechet_distance(mu_r, cov_r, mu_f, cov_f), dtype=torch.float64)
