"""EDM maths checked against the formulas written out here and against diffusers' Euler scheduler."""

import math

import pytest
import torch
from scipy import stats

from dicetalk.diffusion import edm

SIGMAS = [0.002, 0.05, 0.3, 1.0, 2.0137, 14.6, 700.0]


def test_sigma_distribution_is_lognormal_07_16():
    g = torch.Generator().manual_seed(0)
    sigma = edm.sample_sigmas(100_000, generator=g).double().numpy()
    assert sigma.min() > 0
    log_sigma = torch.tensor(sigma).log()
    assert abs(log_sigma.mean().item() - 0.7) < 0.02
    assert abs(log_sigma.std().item() - 1.6) < 0.02
    # Kolmogorov-Smirnov against scipy's log-normal with s = P_std, scale = exp(P_mean).
    assert stats.kstest(sigma, stats.lognorm(s=1.6, scale=math.exp(0.7)).cdf).pvalue > 1e-3


def test_noise_aug_strength_distribution():
    g = torch.Generator().manual_seed(1)
    log_s = edm.sample_noise_aug_strength(50_000, generator=g).log()
    assert abs(log_s.mean().item() + 3.0) < 0.02 and abs(log_s.std().item() - 0.5) < 0.02


@pytest.mark.parametrize("s", SIGMAS)
def test_preconditioning_matches_formulas(s):
    pre = edm.precondition(torch.tensor([s], dtype=torch.float64))
    assert pre.c_skip.item() == pytest.approx(1.0 / (s * s + 1.0), rel=1e-12)
    assert pre.c_out.item() == pytest.approx(-s / math.sqrt(s * s + 1.0), rel=1e-12)
    assert pre.c_in.item() == pytest.approx(1.0 / math.sqrt(s * s + 1.0), rel=1e-12)
    assert pre.c_noise.item() == pytest.approx(0.25 * math.log(s), rel=1e-12, abs=1e-15)
    assert edm.loss_weight(torch.tensor([s], dtype=torch.float64)).item() == pytest.approx(
        (s * s + 1.0) / (s * s), rel=1e-12
    )


def test_add_noise_and_denoise_per_sample():
    g = torch.Generator().manual_seed(2)
    clean, noise, out = (torch.randn(3, 2, 4, 5, 5, generator=g, dtype=torch.float64) for _ in range(3))
    sigma = torch.tensor([0.1, 1.0, 30.0], dtype=torch.float64)
    noisy = edm.add_noise(clean, sigma, noise)
    denoised = edm.denoise(out, noisy, sigma)
    for b, s in enumerate(sigma.tolist()):
        assert torch.allclose(noisy[b], clean[b] + s * noise[b])
        expected = noisy[b] / (s * s + 1) + out[b] * (-s / math.sqrt(s * s + 1))
        assert torch.allclose(denoised[b], expected)


def test_v_target_gives_the_clean_sample():
    # With sigma_data = 1 the v-target is (sigma * x0 - n) / sqrt(sigma^2 + 1) up to the c_out sign
    # convention: F* = (x0 - c_skip x) / c_out. Plugging F* into D must return x0.
    g = torch.Generator().manual_seed(3)
    clean, noise = torch.randn(2, 6, generator=g, dtype=torch.float64), torch.randn(2, 6, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.5, 4.0], dtype=torch.float64)
    noisy = clean + sigma[:, None] * noise
    v = (noise - sigma[:, None] * clean) / torch.sqrt(sigma[:, None] ** 2 + 1)
    assert torch.allclose(edm.denoise(v, noisy, sigma), clean)


def test_matches_diffusers_euler_v_prediction():
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
        sigma_min=0.002, sigma_max=700.0, timestep_type="continuous", use_karras_sigmas=True,
        timestep_spacing="leading", steps_offset=1, num_train_timesteps=1000,
    )
    sched.set_timesteps(5)
    sigmas = sched.sigmas[:-1].double()
    # Continuous timesteps are SVD's c_noise.
    assert torch.allclose(sched.timesteps.double(), edm.precondition(sigmas).c_noise, atol=1e-5)
    g = torch.Generator().manual_seed(4)
    sample, out = torch.randn(1, 4, 3, 3, generator=g), torch.randn(1, 4, 3, 3, generator=g)
    sigma = sched.sigmas[0]
    step = sched.step(out, sched.timesteps[0], sample * 1.0)
    ours = edm.denoise(out, sample, sigma.reshape(1))
    assert torch.allclose(step.pred_original_sample, ours, atol=1e-4)


def test_augment_reference_and_added_time_ids():
    ref, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    strength = torch.tensor([0.0, 0.5])
    aug = edm.augment_reference(ref, strength, noise)
    assert torch.equal(aug[0], ref[0]) and torch.allclose(aug[1], ref[1] + 0.5 * noise[1])
    ids = edm.added_time_ids(12.5, 8, torch.tensor([0.02, 0.3]), batch_size=2)
    assert torch.allclose(ids, torch.tensor([[12.5, 8.0, 0.02], [12.5, 8.0, 0.3]]))
    with pytest.raises(ValueError, match="3 values for a batch of 2"):
        edm.added_time_ids(torch.ones(3), 8, 16, batch_size=2)


def test_karras_sigmas_formula():
    from dicetalk.diffusion.sampler import karras_sigmas

    sig = karras_sigmas(25)
    assert sig.shape == (26,) and sig[-1] == 0
    for i in range(25):
        expected = (700.0 ** (1 / 7) + i / 24 * (0.002 ** (1 / 7) - 700.0 ** (1 / 7))) ** 7
        assert sig[i].item() == pytest.approx(expected, rel=1e-5)


def test_euler_sampler_matches_diffusers_svd_scheduler():
    from diffusers import EulerDiscreteScheduler

    from dicetalk.diffusion.sampler import euler_sample, karras_sigmas

    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
        sigma_min=0.002, sigma_max=700.0, timestep_type="continuous", use_karras_sigmas=True,
        timestep_spacing="leading", steps_offset=1, num_train_timesteps=1000,
    )
    sched.set_timesteps(6)
    assert torch.allclose(sched.sigmas, karras_sigmas(6), rtol=1e-4)

    def network(x_in, t):  # any fixed function of (scaled input, c_noise) plays the UNet
        return torch.tanh(0.7 * x_in) + 0.1 * t

    g = torch.Generator().manual_seed(0)
    start = torch.randn(2, 3, 4, generator=g) * sched.init_noise_sigma
    x = start.clone()
    for t in sched.timesteps:
        x = sched.step(network(sched.scale_model_input(x, t), t), t, x).prev_sample

    def denoiser(x, sigma):
        pre = edm.precondition(sigma)
        return edm.denoise(network(edm.expand_like(pre.c_in, x) * x, pre.c_noise[0]), x, sigma)

    ours = euler_sample(denoiser, start.clone(), karras_sigmas(6))
    assert torch.allclose(ours, x, atol=1e-4, rtol=1e-4)


def test_three_way_guidance_formula():
    from dicetalk.diffusion.sampler import three_way_guidance

    u, r, f = torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([5.0])
    assert three_way_guidance(u, r, f, 3.0, 6.0).item() == 1 + 3 * (2 - 1) + 6 * (5 - 2)
