"""Procedural speech-like audio: syllables of a sawtooth voice through vowel formant resonators, consonant
noise bursts and pauses.

Prosody (pitch, pitch range, tempo, loudness, tremor, brightness) depends on the speaker and the emotion, so
the audio alone carries emotion cues; per-clip randomness and speaker differences make those cues overlap
more than the facial ones do.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy.signal import lfilter

# (F1, F2, F3) in Hz of five vowels for an adult male vocal tract; speakers scale them.
_VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410]])
_BANDWIDTHS = (90.0, 110.0, 170.0)
REFERENCE_RMS = 0.08  # RMS of a neutral vowel at unit loudness: the level that opens the mouth "normally"


@dataclass(frozen=True)
class Voice:
    """Speaker traits."""

    f0: float  # mean pitch (Hz)
    formant_scale: float  # vocal tract length: ~1.0 male, ~1.17 female
    syllable_rate: float  # syllables per second in neutral speech
    loudness: float
    breathiness: float  # noise mixed into voiced sounds


def random_voice(rng: np.random.Generator, female: bool) -> Voice:
    return Voice(
        f0=rng.uniform(185, 245) if female else rng.uniform(95, 140),
        formant_scale=rng.uniform(1.12, 1.22) if female else rng.uniform(0.95, 1.05),
        syllable_rate=rng.uniform(3.5, 5.0),
        loudness=rng.uniform(0.8, 1.2),
        breathiness=rng.uniform(0.02, 0.08),
    )


@dataclass(frozen=True)
class Prosody:
    """Emotion-dependent multipliers / additions to the speaker's neutral voice (neutral = the defaults)."""

    pitch: float = 1.0  # f0 multiplier
    pitch_range: float = 2.0  # std of per-syllable pitch accents (semitones)
    tempo: float = 1.0  # syllable-rate multiplier (also shortens pauses)
    energy: float = 1.0  # amplitude multiplier
    tremor: float = 0.0  # vibrato depth (semitones) at 6 Hz
    tilt: float = 1.0  # spectral tilt exponent: lower = brighter / harsher
    rise: float = 0.0  # pitch glide at the end of each word (semitones; surprise rises)

    def at_level(self, scale: float) -> "Prosody":
        """Interpolate from neutral (scale 0) to this prosody (scale 1)."""
        neutral = Prosody()
        mix = {f.name: (1 - scale) * getattr(neutral, f.name) + scale * getattr(self, f.name) for f in fields(self)}
        return Prosody(**mix)


EMOTION_PROSODY: dict[str, Prosody] = {
    "angry": Prosody(pitch=1.2, pitch_range=3.0, tempo=1.2, energy=1.9, tilt=0.6),
    "contempt": Prosody(pitch=0.93, pitch_range=1.6, tempo=0.88, energy=0.85, tilt=1.1),
    "disgusted": Prosody(pitch=0.9, pitch_range=2.2, tempo=0.82, energy=1.0, tilt=1.05),
    "fear": Prosody(pitch=1.3, pitch_range=2.2, tempo=1.25, energy=0.8, tremor=0.8, tilt=1.1),
    "happy": Prosody(pitch=1.2, pitch_range=4.0, tempo=1.1, energy=1.35, tilt=0.85),
    "neutral": Prosody(),
    "sad": Prosody(pitch=0.84, pitch_range=0.8, tempo=0.72, energy=0.5, tilt=1.4),
    "surprised": Prosody(pitch=1.3, pitch_range=3.5, tempo=1.0, energy=1.35, rise=5.0, tilt=0.9),
}


def _resonate(x: np.ndarray, formants: np.ndarray, sample_rate: int) -> np.ndarray:
    """Pass ``x`` through a cascade of two-pole resonators at ``formants`` (Hz): a vowel's vocal tract."""
    for f, bw in zip(formants, _BANDWIDTHS):
        r = np.exp(-np.pi * bw / sample_rate)
        x = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / sample_rate), r * r], x)
    return x


def _syllables(rng: np.random.Generator, rate: float, tempo: float, n_samples: int, sr: int) -> list[tuple]:
    """(start, length, ends_word) of each syllable: words of 1-4 syllables separated by pauses."""
    out, pos = [], int(rng.uniform(0.04, 0.2) * sr)
    while pos < n_samples:
        n_syl = int(rng.integers(1, 5))
        for k in range(n_syl):
            length = int(sr / rate * rng.uniform(0.7, 1.3))
            if pos < n_samples:
                out.append((pos, min(length, n_samples - pos), k == n_syl - 1))
            pos += length
        pos += int(rng.uniform(0.06, 0.3) / tempo * sr)
    return out


def synth_speech(
    rng: np.random.Generator, voice: Voice, prosody: Prosody, n_samples: int, sample_rate: int
) -> np.ndarray:
    """Float32 mono speech-like audio of ``n_samples`` samples in [-1, 1]."""
    sr = sample_rate
    syllables = _syllables(rng, voice.syllable_rate * prosody.tempo, prosody.tempo, n_samples, sr)
    t = np.arange(n_samples) / sr
    env = np.zeros(n_samples)  # vowel amplitude
    hiss_env = np.zeros(n_samples)  # consonant noise-burst amplitude
    semitones = -1.5 * t / max(n_samples / sr, 1e-6)  # phrases drift down in pitch
    semitones += prosody.tremor * np.sin(2 * np.pi * 6.0 * t)
    vowels = rng.integers(len(_VOWELS), size=len(syllables))
    for (s, n, word_end) in syllables:
        local = np.arange(n) / sr
        cons = 0.05 if rng.random() < 0.7 else 0.0  # 70% of syllables open with a consonant
        attack, release = np.clip((local - cons) / 0.02, 0, 1), np.clip((n / sr - local) / 0.04, 0, 1)
        env[s : s + n] = attack * release * rng.uniform(0.7, 1.0)
        if cons:
            hiss_env[s : s + n] = 0.5 * np.clip(1 - np.abs(local - cons / 2) / (cons / 2), 0, 1)
        semitones[s : s + n] += rng.normal(0, prosody.pitch_range)  # accent
        if word_end:
            semitones[s : s + n] += prosody.rise * (local / (n / sr)) ** 2
    f0 = voice.f0 * prosody.pitch * 2 ** (semitones / 12)
    k = max(1, int(0.02 * sr))  # 20 ms moving average: the pitch glides between syllables
    f0 = np.convolve(np.pad(f0, (k // 2, k - 1 - k // 2), mode="edge"), np.ones(k) / k, mode="valid")
    # Source: a sawtooth at f0 (all harmonics, 1/h), darkened by a one-pole low-pass (higher tilt = darker).
    # Breath noise joins the source so the vocal tract shapes it too.
    pole = float(np.clip(0.45 * prosody.tilt, 0.0, 0.9))
    noise = rng.standard_normal(n_samples)
    source = lfilter([1 - pole], [1, -pole], 2 * np.mod(np.cumsum(f0) / sr, 1.0) - 1) + voice.breathiness * noise
    tone = np.zeros(n_samples)
    for (s, n, _), v in zip(syllables, vowels):
        seg = _resonate(source[s : s + n], _VOWELS[v] * voice.formant_scale, sr)
        tone[s : s + n] = seg / (np.sqrt(np.mean(seg**2)) + 1e-9)  # unit RMS whatever the vowel and pitch
    hiss = np.diff(noise, prepend=0.0)  # high-passed noise for fricatives
    level = REFERENCE_RMS * voice.loudness * prosody.energy
    audio = level * (env * tone + hiss_env * hiss) + 0.002 * noise
    return np.clip(audio, -1, 1).astype(np.float32)


def frame_rms(audio: np.ndarray, sample_rate: int, fps: float, n_frames: int) -> np.ndarray:
    """RMS of the audio under each video frame: frame i covers samples [i*sr/fps, (i+1)*sr/fps)."""
    edges = np.round(np.arange(n_frames + 1) * sample_rate / fps).astype(int)
    sq = np.concatenate([[0.0], np.cumsum(np.asarray(audio, np.float64) ** 2)])
    edges = np.minimum(edges, len(audio))
    counts = np.maximum(edges[1:] - edges[:-1], 1)
    return np.sqrt((sq[edges[1:]] - sq[edges[:-1]]) / counts)
