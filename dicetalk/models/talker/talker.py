"""The DICE-Talk talker: an unmodified diffusers SVD UNet with the added modules attached."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from diffusers.models.attention_processor import Attention
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from dicetalk.diffusion.edm import denoise, expand_like, precondition

from .attention import STREAMS, ConditioningContext, attach_processors
from .audio_proj import AudioProjection
from .classifier import EmotionClassifier
from .config import TalkerConfig
from .emotion import EmotionConditioner
from .pose_guider import PoseGuider

TrainableMode = Literal["new", "attention", "all"]
TRAINABLE_MODES: tuple[str, ...] = ("new", "attention", "all")
CHECKPOINT_FORMAT = "dicetalk-talker-v1"


@dataclass
class TalkerOutput:
    """denoised: D(x; sigma) (B, F, C, h, w); model_output: the raw v-prediction; logits: (B, classes);
    vq_loss: scalar; bank_index: (B,) nearest bank entry per sample (None without a bank)."""

    denoised: Tensor
    model_output: Tensor
    logits: Tensor
    vq_loss: Tensor
    bank_index: Tensor | None


class Talker(nn.Module):
    """SVD UNet + audio projection, emotion conditioner, decoupled attention streams, pose guider, classifier.

    Nothing of diffusers is forked: the streams are attention processors, the pose guider is a forward hook
    on ``unet.conv_in`` and the classifier a forward hook on ``unet.mid_block``. They read and write
    :attr:`context`, which :meth:`forward` fills; it keeps its tensors until the next forward or
    :meth:`clear_context` (call that after backward), as gradient checkpointing re-runs blocks in backward.
    """

    def __init__(self, unet: nn.Module, config: TalkerConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TalkerConfig()
        unet_cfg = unet.config
        token_dim = unet_cfg.cross_attention_dim
        self.unet = unet
        self.audio_proj = AudioProjection(
            config.whisper_window, config.whisper_layers, config.whisper_dim,
            config.hidden_dim, config.audio_tokens, token_dim,
        )
        self.emotion = EmotionConditioner(
            prior_dim=config.prior_dim,
            hidden_dim=config.hidden_dim,
            num_tokens=config.emotion_tokens,
            token_dim=token_dim,
            heads=config.emotion_heads,
            bank_size=config.bank_size,
            use_bank=config.use_bank,
            kv_mode=config.kv_mode,
            vq_beta=config.vq_beta,
        )
        self.pose_guider = PoseGuider(unet_cfg.block_out_channels[0], config.pose_channels, config.mask_channels)
        self.classifier = EmotionClassifier(
            unet_cfg.block_out_channels[-1], config.classifier_hidden, config.num_classes, config.classifier_dropout
        )
        self.context = ConditioningContext(scales=dict(config.stream_scales))
        self.stream_processors = attach_processors(unet, self.context)
        unet.conv_in.register_forward_hook(self._add_spatial_condition)
        unet.mid_block.register_forward_hook(self._classify)

    # ---- hooks -------------------------------------------------------------------------------------
    def _add_spatial_condition(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        cond = self.context.spatial_condition
        if cond is None:
            return None
        return output + cond.to(output.dtype).repeat_interleave(self.context.num_frames, dim=0)

    def _classify(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self.context.logits = self.classifier(output, self.context.num_frames)

    # ---- forward -----------------------------------------------------------------------------------
    def forward(
        self,
        noisy_latents: Tensor,
        sigma: Tensor,
        ref_latents: Tensor,
        image_embeds: Tensor,
        added_time_ids: Tensor,
        whisper: Tensor,
        prior: Tensor,
        face_mask: Tensor | None = None,
    ) -> TalkerOutput:
        """Denoise ``noisy_latents`` (B, F, 4, h, w) at noise levels ``sigma`` (B,).

        ref_latents (B, 4, h, w): unscaled VAE latents of the reference frame (zeros = dropped);
        image_embeds (B, 1, D): CLIP image embedding; added_time_ids (B, 3); whisper (B, F, window, layers,
        width); prior (B, prior_dim); face_mask (B, 1, H, W) in [0, 1] at pixel resolution (None: no pose
        guider and unmasked streams).
        """
        batch, frames = noisy_latents.shape[:2]
        pre = precondition(sigma)
        reference = ref_latents.unsqueeze(1).expand(-1, frames, -1, -1, -1)  # same reference for every frame
        unet_in = torch.cat([expand_like(pre.c_in, noisy_latents) * noisy_latents, reference], dim=2)
        emotion = self.emotion(prior)
        ctx = self.context
        ctx.clear()
        ctx.batch_size, ctx.num_frames = batch, frames
        ctx.latent_hw = tuple(noisy_latents.shape[-2:])
        ctx.audio = self.audio_proj(whisper)
        ctx.emotion = emotion.tokens
        ctx.face_mask = face_mask
        if face_mask is not None:
            guide = self.pose_guider(face_mask)
            if guide.shape[-2:] != noisy_latents.shape[-2:]:
                raise ValueError(
                    f"Talker: face mask {tuple(face_mask.shape[-2:])} gives a pose-guider map "
                    f"{tuple(guide.shape[-2:])}, latents are {tuple(noisy_latents.shape[-2:])}"
                )
            ctx.spatial_condition = guide
        output = self.unet(
            unet_in, pre.c_noise, encoder_hidden_states=image_embeds, added_time_ids=added_time_ids, return_dict=False
        )[0]
        return TalkerOutput(
            denoised=denoise(output, noisy_latents, sigma),
            model_output=output,
            logits=ctx.logits,
            vq_loss=emotion.vq_loss,
            bank_index=emotion.index,
        )

    def clear_context(self) -> None:
        """Release the conditioning tensors (after backward)."""
        self.context.clear()

    def set_stream_scales(self, **scales: float) -> None:
        """Change the output scale of the audio and/or emotion streams in every layer."""
        unknown = set(scales) - set(STREAMS)
        if unknown:
            raise ValueError(f"Talker.set_stream_scales: unknown streams {sorted(unknown)}; known {STREAMS}")
        self.context.scales.update(scales)

    # ---- parameter groups and checkpoints ----------------------------------------------------------
    def added_modules(self) -> dict[str, nn.Module]:
        """The modules DICE-Talk adds, keyed by their state-dict prefix (one entry per attn2 processor)."""
        return {
            "audio_proj": self.audio_proj,
            "emotion": self.emotion,
            "pose_guider": self.pose_guider,
            "classifier": self.classifier,
            **{f"unet.{name}": proc for name, proc in self.stream_processors.items()},
        }

    def trainable_named_parameters(self, mode: TrainableMode) -> dict[str, nn.Parameter]:
        """Parameters trained in ``mode``: "new" = added modules, "attention" = + every UNet attention
        layer (attn1 and attn2, spatial and temporal), "all" = + the whole UNet."""
        if mode not in TRAINABLE_MODES:
            raise ValueError(f"Talker: trainable mode must be one of {TRAINABLE_MODES}, got {mode!r}")
        if mode == "all":
            return dict(self.named_parameters())
        names: set[str] = set()
        for prefix, module in self.added_modules().items():
            names.update(f"{prefix}.{n}" for n, _ in module.named_parameters())
        if mode == "attention":
            for name, module in self.unet.named_modules():
                if isinstance(module, Attention):
                    names.update(f"unet.{name}.{n}" for n, _ in module.named_parameters())
        return {name: p for name, p in self.named_parameters() if name in names}

    def trainable_parameters(self, mode: TrainableMode) -> list[nn.Parameter]:
        """List of the parameters trained in ``mode``."""
        return list(self.trainable_named_parameters(mode).values())

    def set_trainable(self, mode: TrainableMode) -> list[nn.Parameter]:
        """requires_grad on exactly the parameters of ``mode``; returns them."""
        chosen = self.trainable_named_parameters(mode)
        for name, param in self.named_parameters():
            param.requires_grad_(name in chosen)
        return list(chosen.values())

    def trainable_state_dict(self, mode: TrainableMode) -> dict[str, Tensor]:
        """State-dict entries of the trainable parameters only (never the frozen base)."""
        return {name: p.detach() for name, p in self.trainable_named_parameters(mode).items()}

    def save_trainable(self, path: str | os.PathLike, mode: TrainableMode, base: str) -> None:
        """Write the trainable weights of ``mode`` to a safetensors file (atomically), with metadata
        naming the base model (``base``: a path or id of the svd-xt folder) and the talker config."""
        tensors = {name: t.contiguous().cpu() for name, t in self.trainable_state_dict(mode).items()}
        metadata = {"format": CHECKPOINT_FORMAT, "base": base, "mode": mode, "config": json.dumps(asdict(self.config))}
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_trainable(self, path: str | os.PathLike) -> dict[str, str]:
        """Load weights written by :meth:`save_trainable`; returns its metadata (base, mode, config;
        ``TalkerConfig(**json.loads(metadata["config"]))`` rebuilds the config).

        Every tensor in the file must exist in this talker with the same shape; the rest keeps its values.
        """
        path = os.fspath(path)
        own = self.state_dict()
        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except (OSError, RuntimeError) as err:  # missing file, or not safetensors
            raise ValueError(f"{path}: cannot read a talker checkpoint ({err})") from err
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a talker checkpoint (format {metadata.get('format')!r})")
        unknown = sorted(set(tensors) - set(own))
        if unknown:
            raise ValueError(f"{path}: {len(unknown)} keys not in this talker, e.g. {unknown[0]}")
        for key, tensor in tensors.items():
            if tensor.shape != own[key].shape:
                raise ValueError(f"{path}: {key} has shape {tuple(tensor.shape)}, talker has {tuple(own[key].shape)}")
        self.load_state_dict(tensors, strict=False)
        return metadata
