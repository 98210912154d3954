"""EmotionEmbedder: pooling maths (Eq. 4-6), modality handling, modality dropout statistics, shapes."""
import pytest
import torch

from dicetalk.models.embedder import EmbedderConfig, EmotionEmbedder, gaussian_pool


def tiny(**kw) -> EmotionEmbedder:
    cfg = dict(expression_dim=12, whisper_layers=3, whisper_dim=8, d_model=16, n_layers=2, n_heads=2, ff_dim=32,
               dropout=0.0, max_frames=10, prior_dim=6)
    return EmotionEmbedder(EmbedderConfig(**{**cfg, **kw}))


def inputs(b=3, n=5, seed=0, cfg=None):
    g = torch.Generator().manual_seed(seed)
    cfg = cfg or EmbedderConfig(expression_dim=12, whisper_layers=3, whisper_dim=8)
    return (torch.randn(b, n, cfg.expression_dim, generator=g),
            torch.randn(b, 2 * n, cfg.whisper_layers, cfg.whisper_dim, generator=g).half())


def test_gaussian_pool_matches_loop():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, generator=g, dtype=torch.float64)
    h = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    mu, sigma, a = gaussian_pool(scores, h)
    for b in range(2):
        w = [torch.exp(scores[b, t]) / torch.exp(scores[b]).sum() for t in range(4)]
        m = sum(w[t] * h[b, t] for t in range(4))
        v = sum(w[t] * (h[b, t] - m) ** 2 for t in range(4))
        torch.testing.assert_close(mu[b], m)
        torch.testing.assert_close(sigma[b], v.sqrt())
        torch.testing.assert_close(a[b], torch.stack(w))


def test_output_shapes_and_layernorm_like_priors():
    model = tiny().eval()
    out = model(*inputs())
    assert out.mu.shape == out.sigma.shape == out.prior.shape == (3, 6)
    assert out.attention.shape == (3, 5)
    torch.testing.assert_close(out.attention.sum(1), torch.ones(3))
    # every frame is LayerNorm-ed without affine, so any attention mix of frames is zero-mean
    torch.testing.assert_close(out.mu.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    assert (out.sigma > 0).all()
    # the prior is a reparameterised sample around mu
    assert not torch.allclose(out.prior, out.mu)


def test_single_modality_ignores_the_other_input():
    model = tiny().eval()
    e, w = inputs(seed=1)
    e2, w2 = inputs(seed=2)
    video = model(e, w, "video").mu
    torch.testing.assert_close(model(e, w2, "video").mu, video)
    assert not torch.allclose(model(e2, w, "video").mu, video)
    audio = model(e, w, "audio").mu
    torch.testing.assert_close(model(e2, w, "audio").mu, audio)
    assert not torch.allclose(model(e, w2, "audio").mu, audio)
    both = model(e, w).mu  # eval mode, no modality: both inputs count (fusion carries video into the audio stream)
    assert not torch.allclose(model(e2, w).mu, both) and not torch.allclose(model(e, w2).mu, both)


def test_modality_dropout_rates_and_never_both():
    model = tiny(p_drop_video=0.3, p_drop_audio=0.2)
    torch.manual_seed(0)
    keep_v, keep_a = model.modality_masks(40_000)
    assert not (~keep_v & ~keep_a).any()
    # binomial std at n = 40000 is ~0.0023: 0.01 is > 4 sigma
    assert (~keep_v).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert (~keep_a).float().mean().item() == pytest.approx(0.2, abs=0.01)


def test_training_mode_applies_dropout_eval_mode_does_not():
    model = tiny(p_drop_video=0.5, p_drop_audio=0.5)
    e, w = inputs(b=64, seed=3)
    model.eval()
    ref_both = model(e, w, "both").mu
    torch.testing.assert_close(model(e, w).mu, ref_both)
    model.train()
    torch.manual_seed(0)
    mu = model(e, w).mu
    video_only, audio_only = model(e, w, "video").mu, model(e, w, "audio").mu
    # with p_v + p_a = 1, every row is exactly the video-only or the audio-only embedding
    is_v = torch.isclose(mu, video_only, atol=1e-5).all(1)
    is_a = torch.isclose(mu, audio_only, atol=1e-5).all(1)
    assert (is_v ^ is_a).all() and is_v.any() and is_a.any()


def test_expression_stats_standardise_input():
    model = tiny().eval()
    e, w = inputs(seed=4)
    before = model(e, w, "video").mu
    model.set_expression_stats(torch.full((12,), 3.0), torch.full((12,), 2.0))
    torch.testing.assert_close(model(e * 2 + 3, w, "video").mu, before)


@pytest.mark.parametrize("bad", ["expr_dim", "whisper_len", "too_long", "modality"])
def test_bad_input_raises(bad):
    model = tiny()
    e, w = inputs(n=5)
    with pytest.raises(ValueError):
        if bad == "expr_dim":
            model(e[..., :5], w)
        elif bad == "whisper_len":
            model(e, w[:, :7])
        elif bad == "too_long":
            model(*inputs(n=11))
        else:
            model(e, w, "lips")


def test_config_validation():
    with pytest.raises(ValueError):
        EmbedderConfig(p_drop_video=0.7, p_drop_audio=0.5)
    with pytest.raises(ValueError):
        EmbedderConfig(d_model=30, n_heads=4)


def test_gradients_reach_both_encoders():
    model = tiny(p_drop_video=0.0, p_drop_audio=0.0).train()
    out = model(*inputs())
    out.prior.pow(2).sum().backward()
    for name in ("visual_in.weight", "audio_in.weight", "audio_layer_logits", "pool_score.weight", "head.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
