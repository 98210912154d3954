"""Build the talker and its frozen companions (VAE, CLIP image encoder): full svd-xt or tiny test sizes.

Full: ``from_pretrained`` from a local stable-video-diffusion-img2vid-xt folder (``unet/``, ``vae/``,
``image_encoder/``). Tiny: the configs diffusers' own SVD tests use, built with random weights, and added
modules sized down through :func:`tiny_talker_config`, so a CPU training step (2 clips x 4 frames x 32 px)
takes about half a second on one core.

Added parameter counts at full size (checked on the meta device by ``tests/test_talker_full_size.py``)
equal the released DICE-Talk checkpoints exactly: audio projection 54,300,672; emotion conditioner
74,067,968 (+ classifier 792,854 with 22 classes); audio and emotion attention streams 51,118,080 each
(64 bias-free K/V tensors over the 32 attn2 layers); pose guider 1,086,480. The stock UNet has
1,524,623,082 parameters.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from .config import TalkerConfig
from .talker import Talker

Size = Literal["full", "tiny"]

# stabilityai/stable-video-diffusion-img2vid-xt unet/config.json (the fields the constructor takes).
SVD_XT_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 96,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 768,
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "transformer_layers_per_block": 1,
    "num_attention_heads": [5, 10, 20, 20],
    "num_frames": 25,
}
SVD_VAE_SCALING = 0.18215

# diffusers tests/pipelines/stable_video_diffusion (UNet with in_channels 8, VAE, CLIP vision).
TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
    "block_out_channels": [32, 64],
    "addition_time_embed_dim": 32,
    "projection_class_embeddings_input_dim": 96,
    "layers_per_block": 2,
    "cross_attention_dim": 32,
    "num_attention_heads": 8,
}
TINY_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": [32, 64],
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "latent_channels": 4,
}
TINY_CLIP_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "projection_dim": 32,
    "num_hidden_layers": 5,
    "num_attention_heads": 4,
    "image_size": 32,
    "intermediate_size": 37,
    "patch_size": 1,
}


def tiny_talker_config(**overrides: Any) -> TalkerConfig:
    """Added-module sizes for the tiny UNet (token width 32 from its cross_attention_dim).

    The pose guider has one stride-2 step, matching the tiny VAE's factor 2. The whisper window keeps the
    store's real shape (10 x 5 x 384).
    """
    values: dict[str, Any] = dict(
        hidden_dim=64,
        audio_tokens=4,
        emotion_tokens=4,
        emotion_heads=4,
        bank_size=16,
        pose_channels=(8, 16),
        classifier_hidden=(32, 16),
    )
    values.update(overrides)
    return TalkerConfig(**values)


TINY_BASE_SEED = 0  # the tiny base is random: one fixed seed makes it reproducible across loads


@dataclass
class TalkerParts:
    """The trainable talker and the frozen encoders it needs."""

    talker: Talker
    vae: AutoencoderKLTemporalDecoder
    image_encoder: CLIPVisionModelWithProjection
    vae_scaling: float


def _require_folder(path: str | os.PathLike, sub: str) -> str:
    folder = os.path.join(os.fspath(path), sub)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"{folder}: missing config.json (expected a stable-video-diffusion-img2vid-xt folder)")
    return folder


def build_unet(
    size: Size, svd_path: str | os.PathLike | None = None, variant: str | None = None
) -> UNetSpatioTemporalConditionModel:
    """The stock UNet: pretrained from ``svd_path`` (full), or random from the tiny test config."""
    if size == "tiny":
        return UNetSpatioTemporalConditionModel(**TINY_UNET_CONFIG)
    if size != "full":
        raise ValueError(f"build_unet: size must be 'full' or 'tiny', got {size!r}")
    if svd_path is None:
        raise ValueError("build_unet: the full config needs svd_path (a local svd-img2vid-xt folder)")
    _require_folder(svd_path, "unet")
    return UNetSpatioTemporalConditionModel.from_pretrained(svd_path, subfolder="unet", variant=variant)


def build_talker(
    size: Size = "tiny",
    svd_path: str | os.PathLike | None = None,
    config: TalkerConfig | None = None,
    variant: str | None = None,
) -> TalkerParts:
    """Talker + frozen VAE and CLIP image encoder (eval mode, no gradients).

    The tiny base has random weights; it is built under a fixed seed (``TINY_BASE_SEED``, leaving the global
    RNG untouched) so that every reload of a tiny checkpoint gets the same frozen weights back.
    """
    if size == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_BASE_SEED)
            unet = build_unet(size, svd_path, variant)
            vae = AutoencoderKLTemporalDecoder(**TINY_VAE_CONFIG)
            image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_VISION_CONFIG))
            config = config or tiny_talker_config()
            return _assemble(unet, vae, image_encoder, config)
    unet = build_unet(size, svd_path, variant)
    _require_folder(svd_path, "vae")
    _require_folder(svd_path, "image_encoder")
    vae = AutoencoderKLTemporalDecoder.from_pretrained(svd_path, subfolder="vae", variant=variant)
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(
        svd_path, subfolder="image_encoder", variant=variant
    )
    config = config or TalkerConfig()
    return _assemble(unet, vae, image_encoder, config)


def _assemble(unet, vae, image_encoder, config: TalkerConfig) -> TalkerParts:
    for frozen in (vae, image_encoder):
        frozen.eval().requires_grad_(False)
    return TalkerParts(Talker(unet, config), vae, image_encoder, SVD_VAE_SCALING)


def build_meta_talker(config: TalkerConfig | None = None, unet_config: dict[str, Any] | None = None) -> Talker:
    """The full-size talker on the meta device: shapes and parameter counts without memory or weights."""
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(**(unet_config or SVD_XT_UNET_CONFIG))
        # diffusers creates AlphaBlender.mix_factor with the legacy torch.Tensor([x]), which ignores the
        # device context: move those stragglers from the CPU too.
        return Talker(unet.to("meta"), config or TalkerConfig())


def count_parameters(params: nn.Module | dict[str, nn.Parameter] | Iterable[nn.Parameter]) -> int:
    """Number of scalar parameters of a module, a name -> parameter mapping or a list of parameters."""
    if isinstance(params, nn.Module):
        params = params.parameters()
    elif isinstance(params, dict):
        params = params.values()
    return sum(p.numel() for p in params)
