"""Inference pipeline: window schedule, whisper framing, guidance, overlap averaging, emotion schedules,
determinism, and `dicetalk generate` end to end on the tiny talker."""

import numpy as np
import pytest
import torch
from torch import nn

from dicetalk.pipeline import (DiceTalkPipeline, GenerationInput, SamplingConfig, frame_priors, mix_priors,
                               parse_schedule, resolve_emotion, upsample_frames, whisper_windows, window_schedule)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_window_schedule_covers_every_frame_and_shifts():
    n, window, shift = 60, 25, 7
    for step in range(6):
        windows = window_schedule(n, window, step, shift)
        assert all(len(w) == window for w in windows)
        covered = np.bincount(np.concatenate(windows), minlength=n)
        assert covered.min() >= 1 and covered.sum() == len(windows) * window
        offset = (step * shift) % window
        assert windows[0][0] == offset and list(windows[1][:2]) == [offset + window, offset + window + 1]
    assert [list(w) for w in window_schedule(10, 25, 3, 7)] == [list(range(10))]


def test_whisper_windows_follow_the_released_framing():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(20, 5, 384)).astype(np.float32)  # 10 frames at 25 fps
    frames = np.array([0, 2, 4, 9])
    out = whisper_windows(feats, frames)
    assert out.shape == (4, 10, 5, 384)
    for row, f in zip(out, frames):
        for k in range(10):
            j = 2 * f - 4 + k  # 50 Hz frame, zero outside the features
            expected = feats[j] if 0 <= j < len(feats) else np.zeros((5, 384))
            np.testing.assert_array_equal(row[k], expected)


def test_upsample_blends_between_generated_frames():
    gen = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (0, 100, 200)])
    out = upsample_frames(gen, 2, 6)
    assert [int(f[0, 0, 0]) for f in out] == [0, 50, 100, 150, 200, 200]
    assert upsample_frames(gen, 1, 2).shape[0] == 2


def test_schedule_parsing_and_frame_priors():
    assert parse_schedule("0:neutral, 2.5:happy") == [(0.0, "neutral"), (2.5, "happy")]
    for bad in ("", "x:happy", "1:happy,0.5:sad", "2"):
        with pytest.raises(ValueError):
            parse_schedule(bad)
    a, b = np.zeros(3, np.float32), np.ones(3, np.float32)
    pri = frame_priors(100, [(0.0, a), (2.0, b)], transition=0.4)  # 25 fps
    t = np.arange(100) / 25
    expected = np.clip((t - 2.0) / 0.4, 0, 1)
    np.testing.assert_allclose(pri[:, 0], expected, atol=1e-6)
    hard = frame_priors(100, [(0.0, a), (2.0, b)], transition=0)
    assert hard[49, 0] == 0 and hard[50, 0] == 1
    np.testing.assert_allclose(mix_priors(a, b, 0.25), np.full(3, 0.25))


def test_resolve_emotion_sources(tmp_path):
    np.save(tmp_path / "happy.npy", {"mu": np.arange(4, dtype=np.float32)[None]}, allow_pickle=True)
    np.testing.assert_array_equal(resolve_emotion("happy", tmp_path), np.arange(4))
    np.testing.assert_array_equal(resolve_emotion(str(tmp_path / "happy.npy")), np.arange(4))
    with pytest.raises(ValueError, match="needs a priors folder"):
        resolve_emotion("happy")
    with pytest.raises(FileNotFoundError, match="sad.npy"):
        resolve_emotion("sad", tmp_path)
    (tmp_path / "ref.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="--embedder"):
        resolve_emotion(str(tmp_path / "ref.mp4"))
    with pytest.raises(ValueError, match="not a label"):
        resolve_emotion("joyful", tmp_path)


class BranchTalker(nn.Module):
    """Fake talker: D = a constant that says which conditions a branch had, plus a per-call id; records
    the window, prior and whisper it was given."""

    VALUES = {"uncond": 1.0, "ref": 2.0, "no_emotion": 5.0, "full": 7.0}

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, noisy_latents, sigma, ref_latents, image_embeds, added_time_ids, whisper, prior, face_mask):
        values = []
        for b in range(noisy_latents.shape[0]):
            has_ref, has_audio, has_prior = (bool(t[b].abs().sum() > 0) for t in (ref_latents, whisper, prior))
            name = ("full" if has_prior else "no_emotion") if has_audio else ("ref" if has_ref else "uncond")
            values.append(self.VALUES[name])
        self.calls.append({"prior": prior[-1].clone(), "whisper": whisper[-1].clone(), "n": noisy_latents.shape[1]})
        window_id = float(len(self.calls))
        denoised = torch.tensor(values).view(-1, 1, 1, 1, 1) + window_id * 100 + torch.zeros_like(noisy_latents)

        class Out:
            pass

        out = Out()
        out.denoised = denoised
        return out

    def clear_context(self):
        pass


def fake_pipeline(**cfg):
    return DiceTalkPipeline(BranchTalker(), nn.Identity(), nn.Identity(), 1.0, SamplingConfig(**cfg), progress=False)


def sample(pipe, n, priors=None, whisper=None, seed=0):
    ref = torch.ones(1, 4, 2, 2)
    embeds = torch.ones(1, 1, 8)
    whisper = np.ones((n, 10, 5, 384), np.float32) if whisper is None else whisper
    priors = np.ones((n, 6), np.float32) if priors is None else priors
    return pipe.sample(ref, embeds, whisper, priors, torch.ones(1, 1, 4, 4), torch.Generator().manual_seed(seed))


def test_three_way_guidance_and_emotion_scale():
    # One Euler step from sigma_max to 0 lands exactly on the guided D.
    v = BranchTalker.VALUES
    out = sample(fake_pipeline(steps=1), n=5)
    expected = v["uncond"] + 3.0 * (v["ref"] - v["uncond"]) + 6.0 * (v["full"] - v["ref"]) + 100
    torch.testing.assert_close(out, torch.full_like(out, expected))
    out = sample(fake_pipeline(steps=1, ref_scale=2.0, cond_scale=4.0, emotion_scale=1.5), n=5)
    expected = v["uncond"] + 2 * (v["ref"] - v["uncond"]) + 4 * (v["full"] - v["ref"]) + 1.5 * (v["full"] - v["no_emotion"]) + 100
    torch.testing.assert_close(out, torch.full_like(out, expected))


def test_overlapping_windows_are_averaged_and_padding_is_silent():
    pipe = fake_pipeline(steps=1, window=8, shift=3)
    n = 12  # padded to 20: windows [0..8), [8..16), [16..20)+[0..4) wrap
    out = sample(pipe, n)
    calls = pipe.talker.calls
    assert len(calls) == 3 and all(c["n"] == 8 for c in calls)
    guided = BranchTalker.VALUES["uncond"] + 3 * (2 - 1) + 6 * (7 - 2)
    per_frame = np.zeros(12)
    for f in range(12):
        ids = [k + 1 for k, w in enumerate(window_schedule(20, 8, 0, 3)) if f in w]
        per_frame[f] = guided + 100 * np.mean(ids)
    np.testing.assert_allclose(out[:, 0, 0, 0].numpy(), per_frame, rtol=1e-5)
    assert per_frame[0] != per_frame[5]  # frames 0-3 really are averaged over two windows
    assert calls[2]["whisper"][:4].abs().sum() == 0  # the wrapped window starts in the silent padding


def test_per_window_prior_follows_the_schedule():
    n, steps = 40, 3
    pipe = fake_pipeline(steps=steps, window=10, shift=3)
    priors = frame_priors(n, [(0.0, np.zeros(6, np.float32)), (0.8, np.ones(6, np.float32))], transition=0)
    sample(pipe, n, priors=priors)
    padded = np.concatenate([priors, np.repeat(priors[-1:], 10, axis=0)])
    calls = iter(pipe.talker.calls)
    for step in range(steps):
        for window in window_schedule(n + 10, 10, step, 3):
            got = next(calls)["prior"].numpy()
            np.testing.assert_allclose(got, padded[window].mean(0), atol=1e-6)
    values = {round(float(c["prior"][0]), 3) for c in pipe.talker.calls}
    assert 0.0 in values and 1.0 in values and any(0 < v < 1 for v in values)  # the change moves through windows


@pytest.fixture(scope="module")
def tiny_pipeline():
    from dicetalk.models.talker import build_talker

    torch.manual_seed(0)
    parts = build_talker("tiny")
    return DiceTalkPipeline(parts.talker, parts.vae, parts.image_encoder, parts.vae_scaling,
                            SamplingConfig(steps=2, window=4, shift=1), progress=False)


def tiny_input(n=9):
    rng = np.random.default_rng(1)
    return GenerationInput(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), np.array([0.2, 0.1, 0.8, 0.9]),
                           rng.normal(size=(2 * n, 5, 384)).astype(np.float32), rng.normal(size=256), n)


def test_same_seed_same_video(tiny_pipeline):
    a = tiny_pipeline(tiny_input(), seed=3)
    b = tiny_pipeline(tiny_input(), seed=3)
    c = tiny_pipeline(tiny_input(), seed=4)
    assert a.shape == (9, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_generate_command_end_to_end(tiny_pipeline, tmp_path):
    from PIL import Image

    from dicetalk import media
    from dicetalk.audio import make_tiny_whisper
    from dicetalk.cli_infer import add_generate_parser

    import argparse

    talker = tiny_pipeline.talker
    talker.save_trainable(tmp_path / "talker.safetensors", "new", base="tiny")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "face.png")
    media.write_audio(tmp_path / "speech.wav", 0.2 * np.sin(np.arange(int(0.5 * 16000)) / 7.0))
    for emotion in ("neutral", "happy"):
        np.save(tmp_path / f"{emotion}.npy", {"mu": np.random.default_rng(2).normal(size=(1, 256)).astype(np.float32)},
                allow_pickle=True)
    whisper = make_tiny_whisper(tmp_path / "whisper")
    parser = argparse.ArgumentParser()
    add_generate_parser(parser.add_subparsers())
    base = ["generate", "--talker", str(tmp_path / "talker.safetensors"), "--image", str(tmp_path / "face.png"),
            "--audio", str(tmp_path / "speech.wav"), "--priors", str(tmp_path), "--whisper", str(whisper),
            "--no-crop", "--size", "16", "--steps", "1", "--no-progress", "--device", "cpu"]
    out = tmp_path / "out.mp4"
    args = parser.parse_args(base + ["--schedule", "0:neutral,0.2:happy", "--out", str(out)])
    assert args.func(args) == 0
    info = media.probe_video(out)
    assert info.n_frames == 12 and info.fps == 25 and info.has_audio and (info.width, info.height) == (16, 16)
    args = parser.parse_args(base + ["--emotion", "angry", "--out", str(tmp_path / "bad.mp4")])
    assert args.func(args) == 2 and not (tmp_path / "bad.mp4").exists()
