"""Condition dropout rates and exclusivity on 100k draws; the face-box mask against a pixel loop."""

import pytest
import torch

from dicetalk.conditioning import DropoutRates, apply_condition_drops, face_box_mask, sample_condition_drops

N = 100_000
# Binomial standard error at p = 0.05 over 100k draws is 0.0007; 0.004 is more than 5 of them.
TOL = 0.004


def test_rates_and_exclusive_categories():
    drops = sample_condition_drops(N, DropoutRates(), generator=torch.Generator().manual_seed(0))
    a, i, e = drops.audio, drops.image, drops.emotion
    every = a & i & e
    only = {"audio": a & ~i & ~e, "image": i & ~a & ~e, "emotion": e & ~a & ~i}
    for name, mask in {**only, "all": every}.items():
        assert abs(mask.float().mean().item() - 0.05) < TOL, name
    # One draw per sample: no sample drops exactly two conditions, 80% drop none.
    count = a.int() + i.int() + e.int()
    assert not bool((count == 2).any())
    assert abs((count == 0).float().mean().item() - 0.80) < 2 * TOL
    # Each condition is missing from 10% of the samples (its own 5% + "all").
    for mask in (a, i, e):
        assert abs(mask.float().mean().item() - 0.10) < TOL


def test_custom_rates_and_validation():
    drops = sample_condition_drops(N, DropoutRates(audio=0.2, image=0.0, emotion=0.1, all=0.0),
                                   generator=torch.Generator().manual_seed(1))
    assert abs(drops.audio.float().mean().item() - 0.2) < 2 * TOL
    assert not bool(drops.image.any())
    assert abs(drops.emotion.float().mean().item() - 0.1) < 2 * TOL
    with pytest.raises(ValueError, match="sum to <= 1"):
        DropoutRates(0.5, 0.5, 0.5, 0.0)


def test_apply_zeroes_only_the_dropped_conditions():
    drops = sample_condition_drops(4, DropoutRates(0, 0, 0, 0))
    drops.audio[:] = torch.tensor([True, False, False, True])
    drops.image[:] = torch.tensor([False, True, False, True])
    drops.emotion[:] = torch.tensor([False, False, True, True])
    whisper, ref, clip, prior = torch.rand(4, 3, 10, 5, 8) + 1, torch.rand(4, 4, 2, 2) + 1, torch.rand(4, 1, 6) + 1, torch.rand(4, 7) + 1
    w2, r2, c2, p2 = apply_condition_drops(drops, whisper=whisper, ref_latents=ref, image_embeds=clip, prior=prior)
    for b in range(4):
        assert bool((w2[b] == 0).all()) == bool(drops.audio[b]) and bool((w2[b] == whisper[b]).all()) != bool(drops.audio[b])
        assert bool((r2[b] == 0).all()) == bool(drops.image[b]) and bool((c2[b] == 0).all()) == bool(drops.image[b])
        assert bool((p2[b] == 0).all()) == bool(drops.emotion[b]) and bool((p2[b] == prior[b]).all()) != bool(drops.emotion[b])
    assert bool((whisper > 0).all())  # inputs untouched


def test_face_box_mask_matches_pixel_loop():
    boxes = torch.tensor([[0.25, 0.1, 0.75, 0.6], [0.0, 0.5, 0.3, 1.0]])
    h, w, expand = 12, 16, 1.1
    mask = face_box_mask(boxes, h, w, expand)
    assert mask.shape == (2, 1, h, w)
    for b, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * expand / 2, (y1 - y0) * expand / 2
        for i in range(h):
            for j in range(w):
                inside = abs((j + 0.5) / w - cx) <= hw and abs((i + 0.5) / h - cy) <= hh
                assert mask[b, 0, i, j].item() == float(inside), (b, i, j)
