"""Added modules and losses: shapes, retrieval, VQ gradients, classifier maths, against direct formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from dicetalk.constants import EMOTIONS
from dicetalk.diffusion.edm import loss_weight
from dicetalk.models.talker import (
    AudioProjection,
    EmotionClassifier,
    EmotionConditioner,
    PoseGuider,
    classifier_loss,
    denoising_loss,
    emotion_class,
    vq_loss,
)


def small_conditioner(**kw):
    torch.manual_seed(0)
    return EmotionConditioner(prior_dim=6, hidden_dim=16, num_tokens=3, token_dim=8, heads=2, bank_size=5, **kw)


def attend(q, k, v, heads):
    d = q.shape[-1] // heads
    return torch.cat(
        [torch.softmax(q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / math.sqrt(d), -1) @ v[:, h * d:(h + 1) * d]
         for h in range(heads)], dim=-1)


def test_audio_projection_shapes_and_errors():
    proj = AudioProjection(window=10, layers=5, channels=4, hidden_dim=16, num_tokens=3, token_dim=8)
    out = proj(torch.randn(2, 7, 10, 5, 4))
    assert out.shape == (2, 7, 3, 8)
    # LayerNorm per token: zero mean, unit variance at init (weight 1, bias 0).
    assert torch.allclose(out.mean(-1), torch.zeros(2, 7, 3), atol=1e-5)
    with pytest.raises(ValueError, match="must end in"):
        proj(torch.randn(2, 7, 10, 4, 4))


def test_bank_lookup_is_the_nearest_entry():
    cond = small_conditioner()
    with torch.no_grad():
        cond.codebook.codebook.weight.normal_()
    prior = torch.randn(9, 6)
    with torch.no_grad():
        found = cond.codebook.lookup(prior)
    entries = cond.codebook.codebook.weight.detach()
    for b in range(9):
        s = found.projected[b]
        dists = [float(((s - entries[i]) ** 2).sum()) for i in range(entries.shape[0])]
        assert found.index[b].item() == dists.index(min(dists))
        assert torch.equal(found.entry[b], entries[found.index[b]])
    assert len(set(found.index.tolist())) > 1


def expected_tokens(cond, prior, kv_rows):
    att = cond.attention
    q_tokens = cond.emo_linear(prior)
    out = []
    for b in range(prior.shape[0]):
        kv = kv_rows[b]
        q = q_tokens[b] @ att.fc_q.weight.T + att.fc_q.bias
        k = kv @ att.fc_k.weight.T + att.fc_k.bias
        v = kv @ att.fc_v.weight.T + att.fc_v.bias
        out.append(attend(q, k, v, 2))
    return torch.stack(out)


def test_training_uses_the_nearest_entry_and_eval_all_entries():
    cond = small_conditioner()
    with torch.no_grad():
        cond.codebook.codebook.weight.normal_()  # spread the entries so the nearest one differs per prior
    prior = torch.randn(4, 6)
    entries = cond.codebook.codebook.weight
    with torch.no_grad():
        train_out = cond.train()(prior)
        nearest = [cond.kv_tokens_linear(entries[i]) for i in train_out.index.tolist()]
        assert torch.allclose(train_out.tokens, expected_tokens(cond, prior, nearest), atol=1e-5)
        eval_out = cond.eval()(prior)
        every = cond.kv_tokens_linear(entries).reshape(-1, 8)  # 5 entries x 3 tokens
        assert torch.allclose(eval_out.tokens, expected_tokens(cond, prior, [every] * 4), atol=1e-5)
        assert not torch.allclose(train_out.tokens, eval_out.tokens, atol=1e-3)
        # The switch: kv_mode "nearest" keeps retrieval in eval; "all" uses every entry in training.
        cond.kv_mode = "nearest"
        assert torch.allclose(cond.eval()(prior).tokens, train_out.tokens, atol=1e-6)
        cond.kv_mode = "all"
        assert torch.allclose(cond.train()(prior).tokens, eval_out.tokens, atol=1e-6)


def test_no_bank_ablation_returns_the_query_tokens():
    cond = small_conditioner(use_bank=False)
    prior = torch.randn(3, 6)
    out = cond(prior)
    assert torch.equal(out.tokens, cond.emo_linear(prior)) and out.vq_loss.item() == 0 and out.index is None
    assert not hasattr(cond, "codebook")


def grads_after(loss, named):
    for p in named.values():
        p.grad = None
    loss.backward(retain_graph=True)
    return {n: (p.grad is not None and bool(p.grad.abs().sum() > 0)) for n, p in named.items()}


def test_vq_codebook_term_moves_only_the_bank_and_commitment_only_the_prior_path():
    cond = small_conditioner()
    prior = torch.randn(4, 6, requires_grad=True)
    found = cond.codebook.lookup(prior)
    named = {"bank": cond.codebook.codebook.weight, "fc.weight": cond.codebook.fc.weight,
             "fc.bias": cond.codebook.fc.bias, "prior": prior}

    def grads(loss):
        for p in named.values():
            p.grad = None
        loss.backward(retain_graph=True)
        return {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in named.items()}

    # beta = 0 leaves the codebook term alone: it reaches only the bank, and only the selected rows.
    codebook_only = grads(vq_loss(found.projected, found.entry, beta=0.0))
    assert codebook_only["bank"].abs().sum() > 0
    assert all(codebook_only[n].abs().sum() == 0 for n in ("fc.weight", "fc.bias", "prior"))
    moved = (codebook_only["bank"].abs().sum(1) > 0).nonzero().flatten().tolist()
    assert moved == sorted(set(found.index.tolist()))
    # The commitment term adds nothing to the bank and gives the prior path beta x d mean (s - C_k)^2.
    full = grads(vq_loss(found.projected, found.entry, beta=0.25))
    assert torch.allclose(full["bank"], codebook_only["bank"])
    reference = grads(((found.projected - found.entry.detach()) ** 2).mean())
    for n in ("fc.weight", "fc.bias", "prior"):
        assert full[n].abs().sum() > 0 and torch.allclose(full[n], 0.25 * reference[n], atol=1e-7), n
    # Value: (1 + beta) * mean (s - C_k)^2.
    diff = ((found.projected - found.entry) ** 2).mean()
    assert vq_loss(found.projected, found.entry, 0.25).item() == pytest.approx(1.25 * diff.item(), rel=1e-6)


def test_straight_through_sends_the_token_gradient_to_the_prior_path_not_the_bank():
    cond = small_conditioner().train()
    prior = torch.randn(4, 6, requires_grad=True)
    out = cond(prior)
    named = {"bank": cond.codebook.codebook.weight, "fc": cond.codebook.fc.weight, "prior": prior,
             "kv": cond.kv_tokens_linear.proj1.weight}
    assert grads_after(out.tokens.square().sum(), named) == {"bank": False, "fc": True, "prior": True, "kv": True}


def test_denoising_loss_matches_loop():
    g = torch.Generator().manual_seed(0)
    den, clean = torch.randn(3, 2, 4, 3, 3, generator=g), torch.randn(3, 2, 4, 3, 3, generator=g)
    sigma = torch.tensor([0.1, 1.0, 8.0])
    total = 0.0
    for b, s in enumerate(sigma.tolist()):
        total += (s * s + 1) / (s * s) * ((den[b] - clean[b]) ** 2).sum().item()
    assert denoising_loss(den, clean, sigma).item() == pytest.approx(total / den.numel(), rel=1e-5)
    assert torch.allclose(loss_weight(sigma), (sigma**2 + 1) / sigma**2)


def test_classifier_loss_only_on_labelled_samples():
    logits = torch.randn(5, 8, requires_grad=True)
    labels = torch.tensor([2, -1, 7, -1, 0])
    expected = 0.0
    for b in (0, 2, 4):
        row = logits[b].tolist()
        log_z = math.log(sum(math.exp(v) for v in row))
        expected += log_z - row[labels[b]]
    assert classifier_loss(logits, labels).item() == pytest.approx(expected / 3, rel=1e-5)
    classifier_loss(logits, labels).backward()
    assert bool((logits.grad[[1, 3]] == 0).all()) and bool((logits.grad[[0, 2, 4]] != 0).any())
    none = classifier_loss(logits, torch.full((5,), -1))
    assert none.item() == 0 and none.requires_grad


def test_classifier_pools_frames_and_space():
    torch.manual_seed(0)
    clf = EmotionClassifier(in_dim=6, hidden=(5, 4), num_classes=8, dropout=0.0)
    feats = torch.randn(2 * 3, 6, 2, 2)
    logits = clf(feats, num_frames=3)
    for b in range(2):
        pooled = feats[b * 3:(b + 1) * 3].mean(dim=(0, 2, 3))
        h = F.relu(pooled @ clf.fc1.weight.T + clf.fc1.bias)
        h = F.relu(h @ clf.fc2.weight.T + clf.fc2.bias)
        assert torch.allclose(logits[b], h @ clf.fc3.weight.T + clf.fc3.bias, atol=1e-6)


def test_emotion_classes():
    ids22 = {emotion_class(e, lvl, 22) for e in EMOTIONS if e != "neutral" for lvl in (1, 2, 3)}
    assert ids22 == set(range(1, 22)) and emotion_class("neutral", 1, 22) == 0
    assert emotion_class("angry", 1, 22) == 1 and emotion_class("surprised", 3, 22) == 21
    assert [emotion_class(e, 2, 8) for e in EMOTIONS] == list(range(8))
    assert emotion_class(None, None, 22) == -1
    with pytest.raises(ValueError, match="needs a level"):
        emotion_class("happy", None, 22)
    with pytest.raises(ValueError, match="unknown emotion"):
        emotion_class("bored", 1, 8)


def test_pose_guider_released_shape_and_zero_start():
    guider = PoseGuider()  # released sizes
    assert guider.downsample_factor == 8
    out = guider(torch.rand(2, 1, 64, 48))
    assert out.shape == (2, 320, 8, 6) and bool((out == 0).all())
    # The zero-initialised conv_out still receives gradient, so the guider can start learning.
    out.sum().backward()
    assert guider.conv_out.weight.grad.abs().sum() > 0
