"""Estimate talker training memory at full size without a GPU or weights (meta device).

    python bench/talker_memory.py --frames 25 --pixels 512 --batch 1

Weights, gradients and optimizer states are exact arithmetic on the parameter counts. Activations are an
estimate: the full talker runs forward on the meta device (shapes only, bf16) while a saved-tensor hook
adds up the distinct storages autograd keeps for backward (parameters excluded). Attention is replaced by
a stand-in that saves what flash / memory-efficient attention saves on a GPU (q, k, v, output and an fp32
log-sum-exp), since the meta fallback would keep the full attention matrix. With gradient checkpointing,
each checkpointed call keeps only its inputs, and the largest call's own activations come back once during
backward (reported as the recompute peak). Not counted: CUDA context and allocator fragmentation, cuDNN /
matmul workspaces, the transient gradient buffers of activations during backward: measure on a GPU with
bench/train_step.py for the real figure.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLTemporalDecoder
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from dicetalk.models.talker import Talker, build_meta_talker, count_parameters

GIB = 2**30
# stable-video-diffusion-img2vid-xt image_encoder: OpenCLIP ViT-H/14 vision tower.
VIT_H_CONFIG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                    patch_size=14, image_size=224, projection_dim=1024)
# stable-video-diffusion-img2vid-xt vae/config.json.
SVD_VAE_CONFIG = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                      layers_per_block=2, latent_channels=4, in_channels=3, out_channels=3)


class _FlashLikeAttention(torch.autograd.Function):
    """Shape-only attention that saves what GPU flash attention saves (no L x L matrix)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # never called: the estimate only runs forward
        raise NotImplementedError


def _flash_like(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    return _FlashLikeAttention.apply(q, k, v)


class SavedBytes:
    """saved_tensors_hooks pack function that adds up distinct storages not in ``exclude``."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude, self.seen, self.total = exclude, set(), 0

    def add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in self.exclude and key not in self.seen:
            self.seen.add(key)
            self.total += storage.nbytes()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        self.add(t)
        return t


def activation_estimate(talker: Talker, batch: int, frames: int, latent: int, pixels: int, checkpoint: bool) -> tuple[int, int]:
    """(bytes kept for backward, recompute peak bytes) of one forward on the meta device."""
    params = {p.untyped_storage()._cdata for p in talker.parameters()}
    kept = SavedBytes(params)
    region_peak = 0

    def fake_checkpoint(fn: Callable, *args):
        nonlocal region_peak
        for a in args:  # inputs stay alive for recomputation
            if isinstance(a, torch.Tensor):
                kept.add(a)
        region = SavedBytes(params)
        with torch.autograd.graph.saved_tensors_hooks(region.pack, lambda t: t):
            out = fn(*args)
        region_peak = max(region_peak, region.total)
        return out

    if checkpoint:
        talker.unet.enable_gradient_checkpointing()
        for module in talker.unet.modules():
            if getattr(module, "gradient_checkpointing", False):
                module._gradient_checkpointing_func = fake_checkpoint
    cfg, dev, dt = talker.config, torch.device("meta"), torch.bfloat16
    inputs = dict(
        noisy_latents=torch.empty(batch, frames, 4, latent, latent, device=dev, dtype=dt),
        sigma=torch.ones(batch, device=dev, dtype=dt),
        ref_latents=torch.empty(batch, 4, latent, latent, device=dev, dtype=dt),
        image_embeds=torch.empty(batch, 1, 1024, device=dev, dtype=dt),
        added_time_ids=torch.empty(batch, 3, device=dev, dtype=dt),
        whisper=torch.empty(batch, frames, cfg.whisper_window, cfg.whisper_layers, cfg.whisper_dim, device=dev, dtype=dt),
        prior=torch.empty(batch, cfg.prior_dim, device=dev, dtype=dt),
        face_mask=torch.empty(batch, 1, pixels, pixels, device=dev, dtype=dt),
    )
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _flash_like
    try:
        with torch.autograd.graph.saved_tensors_hooks(kept.pack, lambda t: t):
            talker.train()(**inputs)
    finally:
        F.scaled_dot_product_attention = original
        talker.clear_context()
    return kept.total, region_peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=25)
    p.add_argument("--pixels", type=int, default=512)
    args = p.parse_args()
    talker = build_meta_talker().to(torch.bfloat16)
    with torch.device("meta"):
        vae = AutoencoderKLTemporalDecoder(**SVD_VAE_CONFIG)
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H_CONFIG))
    counts = {mode: count_parameters(talker.trainable_named_parameters(mode)) for mode in ("new", "attention", "all")}
    total = count_parameters(talker)
    print(f"talker parameters: {total:,} (stock UNet {count_parameters(talker.unet) - 102_236_160:,})")
    print(f"trainable: new {counts['new']:,}  attention {counts['attention']:,}  all {counts['all']:,}")
    print(f"frozen encoders: VAE {count_parameters(vae):,}  CLIP ViT-H {count_parameters(clip):,}")
    for ckpt in (False, True):
        kept, peak = activation_estimate(talker, args.batch, args.frames, args.pixels // 8, args.pixels, ckpt)
        print(f"activations B={args.batch} F={args.frames} {args.pixels}px checkpointing={'on' if ckpt else 'off'}: "
              f"kept {kept / GIB:.2f} GiB, recompute peak {peak / GIB:.2f} GiB")


if __name__ == "__main__":
    main()
