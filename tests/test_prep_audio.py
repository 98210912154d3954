"""Whisper features (dicetalk.audio) with a tiny random whisper of the whisper-tiny shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dicetalk.audio import WhisperError, WhisperFeatures, make_tiny_whisper, resolve_whisper


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    return WhisperFeatures(make_tiny_whisper(tmp_path_factory.mktemp("whisper"), window_seconds=1))


def _audio(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def test_tiny_whisper_has_the_whisper_tiny_encoder_shape(whisper):
    config = whisper.encoder.config
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads) == (384, 4, 6)
    assert whisper.window == 16000 and whisper.positions == 50


@pytest.mark.parametrize("n_frames", [1, 24, 25, 26, 63])
def test_shape_for_any_length(whisper, n_frames):
    out = whisper(_audio(n_frames / 25), n_frames)
    assert out.shape == (2 * n_frames, 5, 384) and out.dtype == np.float16
    assert np.isfinite(out.astype(np.float32)).all()


def test_one_window_equals_a_direct_encoder_call(whisper):
    audio = _audio(0.6)
    mel = whisper.extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        states = whisper.encoder(mel, output_hidden_states=True).hidden_states
    expected = torch.stack(states, dim=2)[0, :30].numpy().astype(np.float16)
    np.testing.assert_array_equal(whisper(audio, 15), expected)


def test_windows_follow_each_other_in_time(whisper):
    t = np.arange(16000) / 16000
    audio = np.r_[0.5 * np.sin(2 * np.pi * 200 * t), _audio(1, seed=1), 0.3 * np.sin(2 * np.pi * 1000 * t[:8000])]
    audio = audio.astype(np.float32)
    full = whisper(audio, 62).astype(np.float32)  # windows [0, 1) s, [1, 2) s, [2, 3) s with zero padding
    # Batched and single-window runs differ by float16 rounding only.
    close = dict(rtol=1e-2, atol=2e-3)
    np.testing.assert_allclose(full[50:100], whisper(audio[16000:32000], 25).astype(np.float32), **close)
    third = whisper(np.r_[audio[32000:], np.zeros(8000, np.float32)], 25).astype(np.float32)  # the padded tail
    np.testing.assert_allclose(full[100:124], third[:24], **close)
    assert np.abs(full[:50] - full[50:100]).max() > 0.1  # different audio, different features


def test_missing_weights_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(WhisperError, match="--whisper FOLDER") as info:
        resolve_whisper("openai/whisper-tiny")
    assert "config.json" in str(info.value) and "preprocessor_config.json" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WhisperError, match="not a whisper checkpoint folder"):
        resolve_whisper(tmp_path / "empty")
    with pytest.raises(WhisperError, match="no such whisper folder"):
        resolve_whisper(tmp_path / "missing")
