"""Sync-C / Sync-D: MFCC front end, offset search vs the reference loop, and an oracle backbone."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.fft import dct
from torch import nn

from dicetalk.metrics import SyncScore, sync_offset_search, syncnet_mfcc
from dicetalk.metrics.sync import sync_windows


def reference_mfcc(sig, sr=16000):
    """python_speech_features.mfcc(sig, sr) with its defaults, written out step by step in numpy."""
    sig = np.append(sig[0], sig[1:] - 0.97 * sig[:-1]).astype(np.float64)
    flen, step, nfft, nfilt = 400, 160, 512, 26
    nframes = 1 if len(sig) <= flen else 1 + int(math.ceil((len(sig) - flen) / step))
    sig = np.concatenate([sig, np.zeros((nframes - 1) * step + flen - len(sig))])
    frames = np.stack([sig[i * step:i * step + flen] for i in range(nframes)])
    pspec = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = pspec.sum(1)
    energy[energy == 0] = np.finfo(float).eps
    hz2mel = lambda hz: 2595 * np.log10(1 + hz / 700)  # noqa: E731
    mel2hz = lambda mel: 700 * (10 ** (mel / 2595) - 1)  # noqa: E731
    bins = np.floor((nfft + 1) * mel2hz(np.linspace(0, hz2mel(sr / 2), nfilt + 2)) / sr)
    fbank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        for i in range(int(bins[j]), int(bins[j + 1])):
            fbank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            fbank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    feat = pspec @ fbank.T
    feat[feat == 0] = np.finfo(float).eps
    feat = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :13]
    feat *= 1 + 11 * np.sin(np.pi * np.arange(13) / 22)
    feat[:, 0] = np.log(energy)
    return feat.T


@pytest.mark.parametrize("n_samples", [399, 400, 6400, 7001])
def test_mfcc_matches_python_speech_features_formulas(n_samples):
    rng = np.random.default_rng(n_samples)
    sig = np.round(rng.standard_normal(n_samples) * 3000)
    sig[:100] = 0  # silence exercises the log(0) guards
    ours = syncnet_mfcc(torch.from_numpy(sig)).numpy()
    ref = reference_mfcc(sig)
    assert ours.shape == ref.shape == (13, 1 if n_samples <= 400 else 1 + math.ceil((n_samples - 400) / 160))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def reference_offset_search(v, a, vshift):
    """syncnet_python's calc_pdist + evaluate, as their formulas read: one frame at a time."""
    width = 2 * vshift + 1
    a_pad = F.pad(a, (0, 0, vshift, vshift))
    dists = torch.stack([F.pairwise_distance(v[[i]].repeat(width, 1), a_pad[i:i + width])
                         for i in range(len(v))])
    mdist = dists.mean(0).numpy()
    minidx = int(np.argmin(mdist))
    return vshift - minidx, float(mdist[minidx]), float(np.median(mdist) - mdist[minidx])


@pytest.mark.parametrize("n,shift,vshift", [(40, 3, 15), (90, -7, 15), (1, 0, 15), (25, 2, 4), (12, 14, 15)])
def test_offset_search_equals_reference_loop(n, shift, vshift):
    g = torch.Generator().manual_seed(n)
    v = torch.randn(n + 30, 64, generator=g) * 4 + 2
    a = v.roll(-shift, 0)[:n] + 0.5 * torch.randn(n, 64, generator=g)  # audio leads by `shift` windows
    v = v[:n]
    offset, dist, conf = sync_offset_search(v, a, vshift)
    ref_offset, ref_dist, ref_conf = reference_offset_search(v, a, vshift)
    assert offset == ref_offset
    assert dist == pytest.approx(ref_dist, rel=1e-5) and conf == pytest.approx(ref_conf, rel=1e-4, abs=1e-5)
    if n > 20 and abs(shift) <= vshift:
        assert offset == shift


def test_offset_search_rejects_mismatched_embeddings():
    with pytest.raises(ValueError, match="equal"):
        sync_offset_search(torch.zeros(5, 8), torch.zeros(4, 8))


def _standardise(x):
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)


class Oracle(nn.Module):
    """Lip embedding = frame brightness pattern; audio embedding = frame log-energy (MFCC c0) pattern.

    The synthetic audio's energy follows the brightness, so the embeddings agree exactly when audio and
    video are aligned, like a perfect SyncNet.
    """

    def forward_lip(self, x):  # (N, 3, 5, S, S) BGR 0..255
        return _standardise(x.mean((1, 3, 4)))

    def forward_aud(self, x):  # (N, 1, 13, 20): c0 of the first MFCC step of each of the 5 frames
        return _standardise(x[:, 0, 0, ::4])


def synthetic_av(n_frames, delay, seed=0):
    """Frames of random brightness, and noise whose loudness follows it, delayed by `delay` frames."""
    rng = np.random.default_rng(seed)
    bright = rng.uniform(30, 220, n_frames)
    video = torch.from_numpy(np.broadcast_to(bright[:, None, None, None], (n_frames, 3, 24, 24)).round()
                             ).to(torch.uint8)
    loud = np.repeat(1e-3 * np.exp(bright / 40), 640)
    audio = rng.standard_normal(n_frames * 640) * loud
    audio = np.roll(audio, delay * 640)
    audio[:max(delay, 0) * 640] = 0  # what a delayed start sounds like
    if delay < 0:
        audio[delay * 640:] = 0
    return video, torch.from_numpy(np.clip(audio, -1, 1)).float()


@pytest.mark.parametrize("delay", [0, 4, -3])
def test_oracle_backbone_recovers_known_shift(delay):
    video, audio = synthetic_av(60, delay)
    metric = SyncScore(backbone=Oracle(), image_size=16)
    metric.update(video[None], audio[None])
    out = metric.compute()
    # Audio arriving `delay` frames late means the matching audio window is at i + delay: offset = -delay.
    assert float(out["offset"]) == -delay
    assert float(out["sync_d"]) < 0.5 and float(out["sync_c"]) > 2.0
    assert int(out["n_videos"]) == 1


def test_sync_score_means_over_videos_and_protocol():
    pairs = [synthetic_av(40, d, seed=d) for d in (1, 2)]
    metric = SyncScore(backbone=Oracle(), image_size=16)
    metric.update([p[0] for p in pairs], [p[1] for p in pairs])
    out = metric.compute()
    assert float(out["offset"]) == pytest.approx(-1.5) and float(out["abs_offset"]) == pytest.approx(1.5)
    # min(frames, samples // 640) - 5 windows, as syncnet_python.
    assert sync_windows(40, 40 * 640) == 35 and sync_windows(40, 30 * 640 + 639) == 25
    with pytest.raises(ValueError, match="too short"):
        metric.update(torch.zeros(1, 5, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 5 * 640))
    with pytest.raises(ValueError, match="2 videos, 1 audio"):
        metric.update([p[0] for p in pairs], [pairs[0][1]])


def test_landmark_crop_path_runs():
    video, audio = synthetic_av(30, 0)
    marks = np.tile(np.array([[6.0, 6.0], [18.0, 16.0]]), (30, 1, 1))
    metric = SyncScore(backbone=Oracle(), image_size=16)
    metric.update(video[None], audio[None], landmarks=[marks])
    assert float(metric.compute()["offset"]) == 0
