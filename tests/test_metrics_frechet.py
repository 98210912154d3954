"""Frechet distance vs scipy sqrtm and closed forms; FID / FVD statistics vs numpy."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from dicetalk.metrics import FID, FVD, frechet_distance
from dicetalk.metrics.backbones import Frozen
from dicetalk.metrics.fid import InceptionPool3
from dicetalk.metrics.fvd import I3DLogits


def scipy_frechet(mu1, s1, mu2, s2):
    """The pytorch-fid formula, directly: scipy sqrtm of the product, real part of its trace."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def random_gaussian(rng, d, n):
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) / np.sqrt(d) + rng.standard_normal(d)
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("d,n", [(16, 40), (64, 200), (256, 600)])
def test_matches_scipy_sqrtm(d, n):
    rng = np.random.default_rng(d)
    mu1, s1 = random_gaussian(rng, d, n)
    mu2, s2 = random_gaussian(rng, d, n)
    ref = scipy_frechet(mu1, s1, mu2, s2)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert abs(ours - ref) / abs(ref) < 1e-6
    assert abs(frechet_distance(mu2, s2, mu1, s1) - ours) / ours < 1e-10  # symmetric
    assert abs(frechet_distance(torch.from_numpy(mu1), torch.from_numpy(s1), mu2, s2) - ours) < 1e-12


def test_closed_forms():
    rng = np.random.default_rng(0)
    d = 5
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    # Diagonal covariances: sum (sqrt(a) - sqrt(b))^2 + ||mu1 - mu2||^2.
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # Commuting (same eigenvectors) covariances, rotated: same formula on the eigenvalues.
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    # Identical Gaussians are at distance 0, even with a singular covariance (up to the square roots of
    # rounding-level eigenvalues, ~1e-8 each, which any matrix square root has).
    low_rank = rng.standard_normal((d, 2)) @ rng.standard_normal((2, d))
    sigma = low_rank @ low_rank.T
    assert abs(frechet_distance(mu1, sigma, mu1, sigma)) < 1e-7 * np.trace(sigma)
    with pytest.raises(ValueError, match="need mu"):
        frechet_distance(mu1, np.eye(d + 1), mu2, np.eye(d))


class Flatten(nn.Module):
    """Identity feature extractor: the pixels themselves are the features."""

    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x.flatten(1)


def numpy_fid(real, fake):
    r, f = (x.reshape(len(x), -1).astype(np.float64) for x in (real, fake))
    return scipy_frechet(r.mean(0), np.cov(r, rowvar=False), f.mean(0), np.cov(f, rowvar=False))


def test_fid_identity_extractor_equals_numpy():
    rng = np.random.default_rng(1)
    real = rng.integers(0, 256, (150, 3, 4, 4), dtype=np.uint8)
    fake = np.clip(real.astype(int) + rng.integers(-40, 40, real.shape), 0, 255).astype(np.uint8)
    fid = FID(feature_extractor=Flatten(48), batch_size=32)
    fid.update(torch.from_numpy(real[:100]), real=True)
    fid.update(torch.from_numpy(real[100:]).view(5, 10, 3, 4, 4), real=True)  # videos are frames too
    fid.update(torch.from_numpy(fake).float() / 255, real=False)  # float in [0, 1]: rounded to uint8
    assert int(fid.real_n) == int(fid.fake_n) == 150
    assert float(fid.compute()) == pytest.approx(numpy_fid(real, fake), rel=1e-6)
    assert fid.counts == {"real": 150, "fake": 150}
    assert fid.weights_info["status"] == "injected"


def test_fid_merge_state_is_exact():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.integers(0, 256, (60, 3, 2, 2), dtype=np.uint8))
    whole, a, b = (FID(feature_extractor=Flatten(12)) for _ in range(3))
    whole.update(x[:30], real=True)
    whole.update(x[30:], real=False)
    a.update(x[:10], real=True)
    a.update(x[30:50], real=False)
    b.update(x[10:30], real=True)
    b.update(x[50:], real=False)
    a.merge_state(b)
    assert torch.equal(a.real_n, whole.real_n) and torch.allclose(a.fake_outer, whole.fake_outer, rtol=1e-15)
    assert float(a.compute()) == pytest.approx(float(whole.compute()), rel=1e-12)


def test_fid_rejects_bad_input():
    fid = FID(feature_extractor=Flatten(12))
    with pytest.raises(ValueError, match=r"expected \(N, 3, H, W\)"):
        fid.update(torch.zeros(4, 2, 2, dtype=torch.uint8), real=True)
    with pytest.raises(ValueError, match=r"float input must lie in \[0, 1\]"):
        fid.update(torch.full((4, 3, 2, 2), 2.0), real=True)
    with pytest.raises(ValueError, match="pass num_features"):
        FID(feature_extractor=nn.Identity())
    with pytest.raises(RuntimeError, match="at least 2 real"):
        fid.compute()


class ClipMean(nn.Module):
    """Per-clip feature: mean of each channel over time and space, plus the per-frame means."""

    num_features = 3 + 16

    def forward(self, clips):  # uint8 (N, 16, 3, H, W)
        x = clips.double()
        return torch.cat([x.mean((1, 3, 4)), x.mean((2, 3, 4))], 1)


def test_fvd_clips_and_value():
    rng = np.random.default_rng(3)
    real = rng.integers(0, 256, (6, 40, 3, 4, 4), dtype=np.uint8)  # 40 frames -> 2 clips, 8 dropped
    fake = rng.integers(0, 200, (6, 33, 3, 4, 4), dtype=np.uint8)
    fvd = FVD(feature_extractor=ClipMean(), batch_size=5)
    fvd.update(torch.from_numpy(real), real=True)
    fvd.update([torch.from_numpy(v) for v in fake], real=False)
    assert int(fvd.real_n) == int(fvd.fake_n) == 12

    def feats(videos):
        clips = np.concatenate([v[: 32].reshape(2, 16, 3, 4, 4) for v in videos]).astype(np.float64)
        return np.concatenate([clips.mean((1, 3, 4)), clips.mean((2, 3, 4))], 1)

    r, f = feats(real), feats(fake)
    expected = scipy_frechet(r.mean(0), np.cov(r, rowvar=False), f.mean(0), np.cov(f, rowvar=False))
    assert float(fvd.compute()) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="15 frames, need at least 16"):
        fvd.update(torch.zeros(1, 15, 3, 4, 4, dtype=torch.uint8), real=True)


def test_backbone_stays_frozen_and_out_of_the_module_tree():
    net = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12))
    net.num_features = 12
    fid = FID(feature_extractor=net)
    fid.train()
    assert isinstance(fid.extractor, Frozen) and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    assert list(fid.parameters()) == [] and not any(k.startswith("extractor") for k in fid.state_dict())
    fid.to(torch.float64)  # .to() (device or dtype) still reaches the hidden network
    assert net[1].weight.dtype == torch.float64


class Recorder(nn.Module):
    """Records what a backbone receives and returns one number per sample."""

    def forward(self, x, **kwargs):
        self.x, self.kwargs = x, kwargs
        return x.flatten(1)[:, :1]


def test_default_extractors_preprocess_as_the_references():
    frames = torch.tensor([0, 128, 255], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 3, 10, 12)
    net = Recorder()
    InceptionPool3(net)(frames)
    assert net.x.shape == (3, 3, 299, 299)  # TF-graph scaling (x - 128) / 128
    assert net.x[:, 0, 0, 0].tolist() == [-1.0, 0.0, 127 / 128]
    clips = frames[None].expand(2, 3, 3, 10, 12)  # (N, T, 3, H, W)
    I3DLogits(net)(clips)
    assert net.x.shape == (2, 3, 3, 224, 224)  # (N, 3, T, 224, 224), 2 x / 255 - 1
    assert net.x[0, 0, :, 0, 0].tolist() == pytest.approx([-1.0, 128 * 2 / 255 - 1, 1.0], abs=1e-6)
    assert net.kwargs == {"rescale": False, "resize": False, "return_features": True}
