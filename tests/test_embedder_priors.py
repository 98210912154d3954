"""Priors: whole-clip mixture, per-emotion export in the released format + safetensors, the CLI."""
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from store_fixtures import make_fake_store

from dicetalk.data.store import Store
from dicetalk.models.embedder import EmbedderConfig, EmotionEmbedder
from dicetalk.priors import (
    SAFETENSORS_NAME,
    clip_prior,
    emotion_priors,
    main,
    media_prior,
    read_prior,
    store_clip_prior,
    write_priors,
)

CFG = EmbedderConfig(d_model=16, n_layers=1, n_heads=2, ff_dim=32, dropout=0.0, max_frames=32, prior_dim=256)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return EmotionEmbedder(CFG).eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = make_fake_store(tmp_path_factory.mktemp("fake") / "store", mead_ids=("M001", "W001"),
                           splits={"W001": "val"}, sentences=1, n_frames=20, hdtf_videos=())
    return Store(root)


def test_clip_prior_is_the_window_mixture(model):
    rng = np.random.default_rng(0)
    expr = rng.normal(size=(20, 136)).astype(np.float32)
    whisper = rng.normal(size=(38, 5, 384)).astype(np.float16)  # audio 1 frame short: zero-padded
    mu, sigma = clip_prior(model, expr, whisper, window=8)
    padded = np.zeros((40, 5, 384), np.float32)
    padded[:38] = whisper
    # windows at 0, 8 and the tail window aligned to the end (12)
    with torch.no_grad():
        outs = [model(torch.from_numpy(expr[s:s + 8])[None], torch.from_numpy(padded[2 * s:2 * s + 16])[None])
                for s in (0, 8, 12)]
    mus = torch.cat([o.mu for o in outs]).double()
    vars_ = torch.cat([o.sigma for o in outs]).double() ** 2
    ref_mu = mus.mean(0)
    ref_sigma = ((vars_ + mus**2).mean(0) - ref_mu**2).sqrt()
    np.testing.assert_allclose(mu, ref_mu.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, ref_sigma.numpy(), rtol=1e-4, atol=1e-6)
    assert mu.shape == sigma.shape == (256,) and mu.dtype == np.float32
    # a clip shorter than the window is one window
    short_mu, _ = clip_prior(model, expr[:5], whisper[:10], window=8)
    direct = model(torch.from_numpy(expr[:5])[None], torch.from_numpy(whisper[:10].astype(np.float32))[None]).mu
    np.testing.assert_allclose(short_mu, direct[0].detach().numpy(), rtol=1e-5, atol=1e-6)


def test_store_and_media_priors(model, store):
    clip = store.clip("M001_fear_2_000")
    mu, sigma = store_clip_prior(model, store, clip.clip_id, window=8)
    ref = clip_prior(model, store.array(clip, "expression"), store.array(clip, "whisper"), window=8)
    np.testing.assert_allclose(mu, ref[0], rtol=1e-6)

    seen = []

    def extract(video, audio):
        seen.append((video.name, audio))
        return np.asarray(store.array(clip, "expression")), np.asarray(store.array(clip, "whisper"))

    mu2, _ = media_prior(model, "talk.mp4", None, extract, window=8)
    assert seen == [("talk.mp4", None)]
    np.testing.assert_allclose(mu2, mu, rtol=1e-6)


def test_emotion_priors_and_released_format(model, store, tmp_path):
    priors = emotion_priors(model, store, window=8, splits=["train", "val"])
    assert list(priors) == ["angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised"]
    happy = [store_clip_prior(model, store, c, 8)[0] for c in store.clips if c.emotion == "happy"]
    assert len(happy) == 6
    np.testing.assert_allclose(priors["happy"], np.mean(happy, axis=0), rtol=1e-5, atol=1e-7)

    paths = write_priors(priors, tmp_path / "priors", {"note": "test"})
    assert {p.name for p in paths} == {f"{e}.npy" for e in priors} | {SAFETENSORS_NAME}
    loaded = np.load(tmp_path / "priors" / "happy.npy", allow_pickle=True).item()["mu"]
    assert loaded.shape == (1, 256) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded[0], priors["happy"])
    np.testing.assert_array_equal(read_prior(tmp_path / "priors" / "happy.npy"), loaded)
    tensors = load_file(str(tmp_path / "priors" / SAFETENSORS_NAME))
    np.testing.assert_array_equal(tensors["sad"], priors["sad"][None])
    assert not list((tmp_path / "priors").glob(".*"))  # no temporary files left behind

    bad = tmp_path / "bad.npy"
    np.save(bad, np.array({"sigma": 1}, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="bad.npy"):
        read_prior(bad)


def test_cli_export_and_clip(model, store, tmp_path, capsys):
    ckpt = tmp_path / "emb.ckpt"
    torch.save({"embedder_config": model.config_dict(), "embedder_window": 8,
                "state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    main(["export", "--ckpt", str(ckpt), "--store", str(store.root), "--out", str(tmp_path / "p")])
    assert (tmp_path / "p" / "angry.npy").exists() and (tmp_path / "p" / SAFETENSORS_NAME).exists()
    train_only = emotion_priors(model, store, 8, ["train"])
    np.testing.assert_allclose(read_prior(tmp_path / "p" / "angry.npy")[0], train_only["angry"], rtol=1e-6)

    main(["clip", "--ckpt", str(ckpt), "--store", str(store.root), "--clip-id", "W001_sad_3_000",
          "--out", str(tmp_path / "one.npy")])
    saved = np.load(tmp_path / "one.npy", allow_pickle=True).item()
    mu, sigma = store_clip_prior(model, store, "W001_sad_3_000", 8)
    np.testing.assert_allclose(saved["mu"][0], mu, rtol=1e-6)
    np.testing.assert_allclose(saved["sigma"][0], sigma, rtol=1e-6)
    assert "one.npy" in capsys.readouterr().out
