"""Decoupled audio and emotion cross-attention on every attn2 of an unmodified diffusers SVD UNet.

The stock UNet repeats ``encoder_hidden_states`` once per frame and its temporal blocks use frame 0's
context for every frame, so per-frame audio tokens cannot travel through it. Instead every attn2 gets a
:class:`DecoupledCrossAttnProcessor` that reads the tokens and the face mask from a shared
:class:`ConditioningContext`, which the talker fills before each forward. The context must keep its
tensors until backward has finished: with gradient checkpointing the blocks (and these processors) run
again during backward.

Each processor adds, before the layer's shared output projection:
    sum_i scale_i * Attention(Q, W_k^i tokens_i, W_v^i tokens_i) [* face mask, spatial layers only]
with W_k^i, W_v^i initialised from the layer's own to_k / to_v (IP-adapter style). Spatial calls see
hidden states (B*F, HW, C) and attend per frame; temporal calls see (B*HW, F, C) and attend to the
tokens averaged over the window's frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn

STREAMS = ("audio", "emotion")  # order of to_k_ip.{0,1} in the released unet.pth


@dataclass
class ConditioningContext:
    """Tensors for one UNet forward, shared by all processors and hooks.

    audio: (B, F, N, D) per-frame tokens; emotion: (B, N, D) per-clip tokens; face_mask: (B, 1, H, W) in
    [0, 1] at any resolution; latent_hw: the UNet input's spatial size; spatial_condition: pose-guider
    output added after conv_in; logits: written by the classifier hook.
    """

    batch_size: int = 0
    num_frames: int = 0
    latent_hw: tuple[int, int] = (0, 0)
    audio: Tensor | None = None
    emotion: Tensor | None = None
    face_mask: Tensor | None = None
    spatial_condition: Tensor | None = None
    logits: Tensor | None = None
    scales: dict[str, float] = field(default_factory=lambda: {name: 1.0 for name in STREAMS})
    _masks: dict[int, Tensor] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict) -> ConditioningContext:
        # A copy (e.g. an EMA model) gets its own empty context: the tensors belong to the last forward
        # of the original and are not graph leaves, so they could not be deep-copied anyway.
        return ConditioningContext(scales=dict(self.scales))

    def clear(self) -> None:
        """Drop every tensor (call after backward, not after forward: see the module docstring)."""
        self.audio = self.emotion = self.face_mask = self.spatial_condition = self.logits = None
        self._masks = {}

    def grid(self, tokens: int) -> tuple[int, int]:
        """(h, w) of the UNet level with ``tokens`` positions (stride-2 convs round sizes up)."""
        h, w = self.latent_hw
        while h * w > tokens:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        if h * w != tokens:
            raise ValueError(f"ConditioningContext: no UNet level of {self.latent_hw} has {tokens} positions")
        return h, w

    def mask_tokens(self, tokens: int) -> Tensor | None:
        """Face mask resized to the level with ``tokens`` positions, (B, tokens, 1); cached per level."""
        if self.face_mask is None:
            return None
        if tokens not in self._masks:
            resized = F.interpolate(self.face_mask.float(), size=self.grid(tokens), mode="area")
            self._masks[tokens] = resized.flatten(2).transpose(1, 2)
        return self._masks[tokens]


def _heads(x: Tensor, heads: int) -> Tensor:
    """(G, L, heads * d) -> (G, heads, L, d)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """(G, heads, L, d) -> (G, L, heads * d)."""
    return x.transpose(1, 2).flatten(2)


class DecoupledCrossAttnProcessor(nn.Module):
    """attn2 processor: the stock cross-attention plus one extra K/V stream per conditioning (audio, emotion).

    Parameters live in ``to_k_ip`` / ``to_v_ip`` (ModuleLists indexed like :data:`STREAMS`), so in the
    UNet's state dict they appear as ``...attn2.processor.to_k_ip.0.weight`` like the released ``unet.pth``.
    """

    def __init__(self, attn: Attention, context: ConditioningContext, temporal: bool) -> None:
        super().__init__()
        unsupported = [
            name
            for name, active in (
                ("spatial_norm", attn.spatial_norm is not None),
                ("group_norm", attn.group_norm is not None),
                ("norm_cross", attn.norm_cross is not None),
                ("residual_connection", attn.residual_connection),
                ("rescale_output_factor", attn.rescale_output_factor != 1.0),
                ("norm_q", getattr(attn, "norm_q", None) is not None),
            )
            if active
        ]
        if unsupported:
            raise ValueError(f"DecoupledCrossAttnProcessor: attention layer uses unsupported {unsupported}")
        self.temporal = temporal
        # A plain attribute (not a module): one context object is shared by every processor.
        self.context = context
        self.to_k_ip = nn.ModuleList(self._copy_linear(attn.to_k) for _ in STREAMS)
        self.to_v_ip = nn.ModuleList(self._copy_linear(attn.to_v) for _ in STREAMS)

    @staticmethod
    def _copy_linear(source: nn.Linear) -> nn.Linear:
        weight = source.weight
        layer = nn.Linear(source.in_features, source.out_features, bias=False, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
        return layer

    def forward(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Called by ``Attention.forward`` as ``processor(attn, hidden_states, encoder_hidden_states, ...)``."""
        if attention_mask is not None:
            raise ValueError("DecoupledCrossAttnProcessor: attention masks are not supported (SVD passes none)")
        context = encoder_hidden_states if encoder_hidden_states is not None else hidden_states
        query = attn.to_q(hidden_states)
        q = _heads(query, attn.heads)
        k, v = _heads(attn.to_k(context), attn.heads), _heads(attn.to_v(context), attn.heads)
        out = _merge(F.scaled_dot_product_attention(q, k, v))
        for i, name in enumerate(STREAMS):
            scale = self.context.scales.get(name, 1.0)
            tokens = getattr(self.context, name)
            if tokens is None or scale == 0.0:
                continue
            out = out + scale * self._stream(attn, query, tokens, i)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)

    def _stream(self, attn: Attention, query: Tensor, tokens: Tensor, index: int) -> Tensor:
        """Attention of the layer's queries over one stream's tokens, laid out like ``query``."""
        ctx = self.context
        batch, frames = ctx.batch_size, ctx.num_frames
        per_frame = tokens.ndim == 4  # (B, F, N, D) audio; (B, N, D) emotion
        if self.temporal:
            # query (B*HW, F, C): every position of a sample shares the window-averaged tokens, so the
            # queries of one sample are attended together as one long sequence (B, HW*F, C).
            if per_frame:
                tokens = tokens.mean(dim=1)
            groups = batch
        elif per_frame:
            tokens = tokens.flatten(0, 1)  # (B*F, N, D): frame f of sample b attends to its own tokens
            groups = batch * frames
        else:
            groups = batch  # per-clip tokens: the F frames of a sample form one query sequence
        if query.shape[0] % groups:
            raise ValueError(f"DecoupledCrossAttnProcessor: {query.shape[0]} query rows for {groups} groups")
        grouped = query.reshape(groups, -1, query.shape[-1])
        k = _heads(self.to_k_ip[index](tokens), attn.heads)
        v = _heads(self.to_v_ip[index](tokens), attn.heads)
        out = _merge(F.scaled_dot_product_attention(_heads(grouped, attn.heads), k, v)).reshape(query.shape)
        if not self.temporal:
            mask = ctx.mask_tokens(query.shape[1])
            if mask is not None:
                out = out * mask.to(out.dtype).repeat_interleave(frames, dim=0)
        return out


def attach_processors(unet: nn.Module, context: ConditioningContext) -> dict[str, DecoupledCrossAttnProcessor]:
    """Give every attn2 of ``unet`` a decoupled processor (set_attn_processor); attn1 keeps its own."""
    processors = dict(unet.attn_processors)
    added: dict[str, DecoupledCrossAttnProcessor] = {}
    for name in processors:
        if not name.endswith("attn2.processor"):
            continue
        attn = unet.get_submodule(name.removesuffix(".processor"))
        temporal = ".temporal_transformer_blocks." in name
        added[name] = DecoupledCrossAttnProcessor(attn, context, temporal=temporal)
    if not added:
        raise ValueError("attach_processors: the UNet has no attn2 layers")
    processors.update(added)
    unet.set_attn_processor(processors)
    return added
