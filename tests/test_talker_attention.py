"""Decoupled attention processors against a plain per-frame / per-position loop, and the stock UNet."""

import math

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.attention_processor import Attention

from dicetalk.diffusion.edm import denoise, precondition
from dicetalk.models.talker import ConditioningContext, DecoupledCrossAttnProcessor, build_talker
from dicetalk.models.talker.build import TINY_UNET_CONFIG

B, F, C, HEADS, D, N = 2, 3, 8, 2, 6, 5


pytestmark = pytest.mark.usefixtures("one_thread")


def attend(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head, written out."""
    d = q.shape[-1] // heads
    outs = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        weights = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(d), dim=-1)
        outs.append(weights @ v[:, sl])
    return torch.cat(outs, dim=-1)


def make_layer(temporal, seed=0):
    torch.manual_seed(seed)
    attn = Attention(query_dim=C, cross_attention_dim=D, heads=HEADS, dim_head=C // HEADS, bias=False).double()
    ctx = ConditioningContext(batch_size=B, num_frames=F, latent_hw=(6, 8), scales={"audio": 0.7, "emotion": 1.3})
    proc = DecoupledCrossAttnProcessor(attn, ctx, temporal=temporal).double()
    # Initialised as copies of to_k / to_v; make the two streams differ so a mix-up shows.
    assert torch.equal(proc.to_k_ip[0].weight, attn.to_k.weight) and torch.equal(proc.to_v_ip[1].weight, attn.to_v.weight)
    with torch.no_grad():
        for lin in [*proc.to_k_ip, *proc.to_v_ip]:
            lin.weight.add_(0.5 * torch.randn_like(lin.weight))
    attn.set_processor(proc)
    ctx.audio = torch.randn(B, F, N, D, dtype=torch.float64)
    ctx.emotion = torch.randn(B, N, D, dtype=torch.float64)
    ctx.face_mask = (torch.rand(B, 1, 12, 16) > 0.4).double()
    return attn, proc, ctx


def out_proj(attn, x):
    return x @ attn.to_out[0].weight.T + attn.to_out[0].bias


def test_spatial_streams_match_loop():
    attn, proc, ctx = make_layer(temporal=False)
    hw = 12  # grid (3, 4): one stride-2 level below latent_hw (6, 8)
    hidden = torch.randn(B * F, hw, C, dtype=torch.float64)
    enc = torch.randn(B * F, 1, D, dtype=torch.float64)
    got = attn(hidden, encoder_hidden_states=enc)
    # Face mask (12 x 16) averaged over 4 x 4 blocks -> the 3 x 4 token grid.
    grid_mask = ctx.face_mask.reshape(B, 1, 3, 4, 4, 4).mean(dim=(3, 5)).reshape(B, hw, 1)
    for b in range(B):
        for f in range(F):
            x = hidden[b * F + f]
            q = x @ attn.to_q.weight.T
            base = attend(q, enc[b * F + f] @ attn.to_k.weight.T, enc[b * F + f] @ attn.to_v.weight.T, HEADS)
            audio = attend(q, ctx.audio[b, f] @ proc.to_k_ip[0].weight.T, ctx.audio[b, f] @ proc.to_v_ip[0].weight.T, HEADS)
            emo = attend(q, ctx.emotion[b] @ proc.to_k_ip[1].weight.T, ctx.emotion[b] @ proc.to_v_ip[1].weight.T, HEADS)
            expected = out_proj(attn, base + (0.7 * audio + 1.3 * emo) * grid_mask[b])
            assert torch.allclose(got[b * F + f], expected, atol=1e-10), (b, f)


def test_temporal_streams_match_loop():
    attn, proc, ctx = make_layer(temporal=True)
    hw = 48  # full latent grid (6, 8)
    hidden = torch.randn(B * hw, F, C, dtype=torch.float64)
    enc = torch.randn(B * hw, 1, D, dtype=torch.float64)
    got = attn(hidden, encoder_hidden_states=enc)
    for b in range(B):
        audio_mean = ctx.audio[b].mean(dim=0)  # tokens averaged over the window's frames
        for s in range(0, hw, 7):
            r = b * hw + s
            q = hidden[r] @ attn.to_q.weight.T
            base = attend(q, enc[r] @ attn.to_k.weight.T, enc[r] @ attn.to_v.weight.T, HEADS)
            audio = attend(q, audio_mean @ proc.to_k_ip[0].weight.T, audio_mean @ proc.to_v_ip[0].weight.T, HEADS)
            emo = attend(q, ctx.emotion[b] @ proc.to_k_ip[1].weight.T, ctx.emotion[b] @ proc.to_v_ip[1].weight.T, HEADS)
            expected = out_proj(attn, base + 0.7 * audio + 1.3 * emo)  # no face mask in temporal layers
            assert torch.allclose(got[r], expected, atol=1e-10), (b, s)


def test_unknown_grid_is_a_clear_error():
    attn, _, _ = make_layer(temporal=False)
    with pytest.raises(ValueError, match="no UNet level"):
        attn(torch.randn(B * F, 13, C, dtype=torch.float64), encoder_hidden_states=torch.randn(B * F, 1, D, dtype=torch.float64))


def tiny_inputs(batch=2, frames=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        noisy_latents=torch.randn(batch, frames, 4, size, size, generator=g),
        sigma=torch.tensor([0.7, 3.0])[:batch],
        ref_latents=torch.randn(batch, 4, size, size, generator=g),
        image_embeds=torch.randn(batch, 1, 32, generator=g),
        added_time_ids=torch.tensor([[12.5, 8.0, 16.0]] * batch),
        whisper=torch.randn(batch, frames, 10, 5, 384, generator=g),
        prior=torch.randn(batch, 256, generator=g),
        face_mask=(torch.rand(batch, 1, 2 * size, 2 * size, generator=g) > 0.5).float(),
    )


def test_processors_on_every_attn2_of_the_tiny_unet():
    talker = build_talker("tiny").talker
    names = sorted(talker.stream_processors)
    attn2 = sorted(n + ".processor" for n, m in talker.unet.named_modules() if n.endswith("attn2"))
    assert names == attn2 and len(names) == 12  # 6 spatio-temporal transformers (down 2, mid 1, up 3) x (spatial, temporal)
    assert sum(".temporal_transformer_blocks.0.attn2." in n for n in names) == 6
    assert all(n.endswith("transformer_blocks.0.attn2.processor") for n in names)
    # attn1 keeps diffusers' own processor.
    assert not any(isinstance(p, DecoupledCrossAttnProcessor) for n, p in talker.unet.attn_processors.items() if "attn1" in n)


def test_zero_streams_and_zero_pose_guider_reproduce_the_stock_unet():
    torch.manual_seed(0)
    parts = build_talker("tiny")
    talker = parts.talker.eval()
    stock = UNetSpatioTemporalConditionModel(**TINY_UNET_CONFIG).eval()
    missing, unexpected = stock.load_state_dict(talker.unet.state_dict(), strict=False)
    assert not missing and all(".processor.to_" in k for k in unexpected) and len(unexpected) == 12 * 4
    x = tiny_inputs()
    talker.set_stream_scales(audio=0.0, emotion=0.0)
    with torch.no_grad():
        out = talker(**x)
        pre = precondition(x["sigma"])
        unet_in = torch.cat([pre.c_in[:, None, None, None, None] * x["noisy_latents"],
                             x["ref_latents"][:, None].expand(-1, 3, -1, -1, -1)], dim=2)
        ref = stock(unet_in, pre.c_noise, encoder_hidden_states=x["image_embeds"], added_time_ids=x["added_time_ids"]).sample
    assert torch.allclose(out.model_output, ref, atol=1e-5)
    assert torch.allclose(out.denoised, denoise(ref, x["noisy_latents"], x["sigma"]), atol=1e-5)
    # Streams on: the output moves (the copies of to_k/to_v are not a no-op).
    talker.set_stream_scales(audio=1.0, emotion=1.0)
    with torch.no_grad():
        assert not torch.allclose(talker(**x).model_output, ref, atol=1e-3)
    with pytest.raises(ValueError, match="unknown streams"):
        talker.set_stream_scales(lips=1.0)
