"""SyncNet's audio front end: python_speech_features ``mfcc`` defaults, reimplemented with torch.

13 cepstra at 100 Hz from 16 kHz int16-scaled samples: pre-emphasis 0.97, 25 ms rectangular frames every
10 ms (zero-padded at the end), 512-point power spectrum / 512, 26 triangular mel filters on FFT bins
floor(513 f / sr), log, orthonormal DCT-II, lifter 22, and c0 replaced by the log frame energy. The
energy term depends on the signal's scale, hence int16 magnitudes rather than [-1, 1].
"""

from __future__ import annotations

import math

import torch
import torchaudio.functional as AF
from torch import Tensor

SAMPLE_RATE = 16_000
N_MFCC = 13
N_FILTERS = 26
N_FFT = 512
FRAME_LEN = 400  # 25 ms
FRAME_STEP = 160  # 10 ms
PREEMPH = 0.97
CEP_LIFTER = 22
_EPS = torch.finfo(torch.float64).eps  # what the reference substitutes for log(0)


def _hz_to_mel(hz: Tensor) -> Tensor:
    return 2595 * torch.log10(1 + hz / 700)


def _mel_to_hz(mel: Tensor) -> Tensor:
    return 700 * (10 ** (mel / 2595) - 1)


def mel_filterbank(sample_rate: int = SAMPLE_RATE) -> Tensor:
    """(26, 257) triangles on integer FFT bins spaced evenly in mel from 0 Hz to Nyquist (float64).

    torchaudio's ``melscale_fbanks`` places its triangles on continuous frequencies, which gives
    different weights, so the bins are floored here as in the reference.
    """
    mels = torch.linspace(0, _hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64)).item(),
                          N_FILTERS + 2, dtype=torch.float64)
    edges = torch.floor((N_FFT + 1) * _mel_to_hz(mels) / sample_rate)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    i = torch.arange(N_FFT // 2 + 1, dtype=torch.float64)
    rising = torch.where((i >= left) & (i < centre), (i - left) / (centre - left), 0.0)
    falling = torch.where((i >= centre) & (i < right), (right - i) / (right - centre), 0.0)
    return rising + falling


def dct_matrix() -> Tensor:
    """(26, 13) orthonormal DCT-II in float64 (torchaudio's ``create_dct`` is float32: ~1e-4 off here)."""
    n = torch.arange(N_FILTERS, dtype=torch.float64)
    k = torch.arange(N_MFCC, dtype=torch.float64)[:, None]
    basis = torch.cos(math.pi / N_FILTERS * (n + 0.5) * k) * math.sqrt(2 / N_FILTERS)
    basis[0] /= math.sqrt(2)
    return basis.T


def syncnet_mfcc(audio: Tensor, sample_rate: int = SAMPLE_RATE) -> Tensor:
    """MFCC (13, n_frames) float64 of a mono signal (S,) in int16 units (e.g. ``wav_float * 32768``)."""
    if audio.ndim != 1 or audio.numel() == 0:
        raise ValueError(f"syncnet_mfcc: expected a non-empty mono signal (S,), got {tuple(audio.shape)}")
    signal = AF.preemphasis(audio.to(torch.float64), PREEMPH)
    n = signal.numel()
    n_frames = 1 if n <= FRAME_LEN else 1 + math.ceil((n - FRAME_LEN) / FRAME_STEP)
    signal = torch.nn.functional.pad(signal, (0, (n_frames - 1) * FRAME_STEP + FRAME_LEN - n))
    frames = signal.unfold(0, FRAME_LEN, FRAME_STEP)  # (n_frames, 400)
    power = torch.fft.rfft(frames, n=N_FFT).abs().square() / N_FFT  # (n_frames, 257)
    energy = power.sum(1)
    energy = torch.where(energy == 0, _EPS, energy)
    banks = power @ mel_filterbank(sample_rate).to(power.device).T
    banks = torch.where(banks == 0, _EPS, banks)
    cepstra = banks.log() @ dct_matrix().to(power.device)
    k = torch.arange(N_MFCC, dtype=torch.float64, device=power.device)
    cepstra = cepstra * (1 + CEP_LIFTER / 2 * torch.sin(math.pi * k / CEP_LIFTER))
    cepstra[:, 0] = energy.log()
    return cepstra.T
