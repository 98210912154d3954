"""The tiny talker end to end on CPU: forward/backward, trainable selections, checkpoints, gradient checkpointing."""

import copy
import json
import time

import pytest
import torch

from diffusers.models.attention_processor import AttnProcessor2_0

from dicetalk.models.talker import build_talker, classifier_loss, denoising_loss, tiny_talker_config, total_loss
from dicetalk.models.talker.config import TalkerConfig
from dicetalk.models.talker.losses import LossWeights
from dicetalk.models.talker.talker import Talker

from test_talker_attention import tiny_inputs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    return build_talker("tiny", config=tiny_talker_config(classifier_dropout=0.0))


def step(talker, x, labels=torch.tensor([3, -1])):
    out = talker(**x)
    clean = torch.zeros_like(x["noisy_latents"])
    loss = total_loss(denoising_loss(out.denoised, clean, x["sigma"]), classifier_loss(out.logits, labels),
                      out.vq_loss, LossWeights())
    loss.backward()
    return out, loss


def test_forward_backward_shapes_gradients_and_time(parts):
    talker = parts.talker.train()
    talker.set_trainable("new")
    talker.zero_grad()
    x = tiny_inputs(batch=2, frames=4, size=16)  # 32 px frames -> 16 x 16 latents
    step(talker, x)  # warm-up
    talker.zero_grad()
    start = time.perf_counter()
    out, loss = step(talker, x)
    elapsed = time.perf_counter() - start
    assert out.denoised.shape == (2, 4, 4, 16, 16) and out.logits.shape == (2, 22) and out.bank_index.shape == (2,)
    assert torch.isfinite(loss)
    for name, module in talker.added_modules().items():
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), name
    assert all(p.grad is None for n, p in talker.unet.named_parameters() if ".processor." not in n)
    # ~0.5 s on one idle core (2 x 4 frames x 32 px); the bound only catches a pathological slowdown on a
    # shared 2-core machine, where oversubscribed threads make wall time swing 10x.
    assert elapsed < 30, f"tiny step took {elapsed:.1f} s"


def test_trainable_modes_nest(parts):
    talker = parts.talker
    new, attention, every = (set(talker.trainable_named_parameters(m)) for m in ("new", "attention", "all"))
    assert new < attention < every and every == {n for n, _ in talker.named_parameters()}
    assert all(n.startswith(("audio_proj.", "emotion.", "pose_guider.", "classifier.")) or ".processor.to_" in n for n in new)
    assert any(".attn1.to_q." in n for n in attention - new) and not any("conv" in n and "pose_guider" not in n for n in attention)
    chosen = talker.set_trainable("attention")
    assert {id(p) for p in chosen} == {id(p) for p in talker.parameters() if p.requires_grad}
    with pytest.raises(ValueError, match="trainable mode"):
        talker.trainable_parameters("lora")
    talker.set_trainable("new")


def test_save_and_load_trainable_weights(parts, tmp_path):
    talker = parts.talker
    path = tmp_path / "talker.safetensors"
    talker.save_trainable(path, "new", base="tiny")
    fresh = build_talker("tiny", config=tiny_talker_config(classifier_dropout=0.0)).talker
    meta = fresh.load_trainable(path)
    assert meta["base"] == "tiny" and meta["mode"] == "new"
    own, other = talker.state_dict(), fresh.state_dict()
    saved = set(talker.trainable_named_parameters("new"))
    assert all(torch.equal(own[k], other[k]) for k in saved)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == saved  # the trainable weights, and nothing of the base
    assert path.stat().st_size < 0.5 * sum(t.numel() * 4 for t in own.values())
    bad = build_talker("tiny", config=tiny_talker_config(audio_tokens=2)).talker
    with pytest.raises(ValueError, match=r"talker.safetensors: audio_proj.proj3.(weight|bias) has shape"):
        bad.load_trainable(path)
    with pytest.raises(ValueError, match="missing.safetensors: cannot read a talker checkpoint"):
        fresh.load_trainable(tmp_path / "missing.safetensors")
    assert TalkerConfig(**json.loads(meta["config"])) == fresh.config
    assert not list(tmp_path.glob("*.tmp*"))


def test_gradient_checkpointing_gives_the_same_gradients(parts):
    plain = copy.deepcopy(parts.talker).train()  # deepcopy (as an EMA copy does) keeps hooks and processors wired
    ckpt = copy.deepcopy(parts.talker).train()
    ckpt.unet.enable_gradient_checkpointing()
    x = tiny_inputs(batch=2, frames=3, size=8, seed=5)
    grads = []
    for talker in (plain, ckpt):
        talker.zero_grad()
        step(talker, x)
        grads.append({n: p.grad.clone() for n, p in talker.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4), name
    # Copies share nothing: the copy's processors read the copy's context.
    assert plain.stream_processors[next(iter(plain.stream_processors))].context is plain.context
    assert plain.context is not parts.talker.context


def test_bad_mask_size_is_a_clear_error(parts):
    x = tiny_inputs(batch=2, frames=2, size=16)
    x["face_mask"] = torch.ones(2, 1, 16, 16)
    with pytest.raises(ValueError, match="pose-guider map"):
        parts.talker(**x)


def test_talker_without_bank_or_mask_runs():
    talker = build_talker("tiny", config=tiny_talker_config(use_bank=False)).talker
    x = tiny_inputs(batch=2, frames=2, size=8)
    x["face_mask"] = None
    out = talker(**x)
    assert out.bank_index is None and out.vq_loss.item() == 0 and isinstance(talker, Talker)


def test_checkpointed_backward_needs_the_context(parts):
    # Recomputation in backward re-runs the processors; a context cleared after forward breaks it,
    # which is why the talker keeps it until the next forward or clear_context() after backward.
    talker = copy.deepcopy(parts.talker).train()
    talker.unet.enable_gradient_checkpointing()
    out = talker(**tiny_inputs(batch=2, frames=2, size=8))
    talker.clear_context()
    with pytest.raises(torch.utils.checkpoint.CheckpointError):
        out.denoised.square().mean().backward()


def test_full_path_loads_a_local_svd_folder(parts, tmp_path):
    # The "full" branch reads unet/, vae/, image_encoder/ with from_pretrained; a tiny folder stands in.
    parts.vae.save_pretrained(tmp_path / "vae")
    parts.image_encoder.save_pretrained(tmp_path / "image_encoder")
    stock = build_talker("tiny").talker.unet
    stock.set_attn_processor(AttnProcessor2_0())  # save the plain UNet, as in the real svd-xt folder
    stock.save_pretrained(tmp_path / "unet")
    loaded = build_talker("full", svd_path=tmp_path, config=tiny_talker_config())
    assert isinstance(loaded.talker, Talker) and loaded.vae_scaling == 0.18215
    assert not any(p.requires_grad for p in loaded.image_encoder.parameters())
    with pytest.raises(FileNotFoundError, match="nowhere/unet: missing config.json"):
        build_talker("full", svd_path=tmp_path / "nowhere")
