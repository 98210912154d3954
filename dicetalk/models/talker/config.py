"""Sizes of the modules DICE-Talk adds to the SVD UNet (defaults = the released model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

KVMode = Literal["auto", "nearest", "all"]


@dataclass
class TalkerConfig:
    """Every size of the added modules; the token width comes from the UNet's cross_attention_dim.

    Defaults reproduce the released DICE-Talk checkpoint shapes (parameter counts in the :mod:`.build` docstring).
    """

    # Audio: per generated frame a window of whisper frames x hidden states x width.
    whisper_window: int = 10
    whisper_layers: int = 5
    whisper_dim: int = 384
    audio_tokens: int = 32
    # Width of the hidden layers of the token MLPs (audio projection, emotion query and K/V paths).
    hidden_dim: int = 1024
    # Emotion conditioner.
    prior_dim: int = 256
    emotion_tokens: int = 32
    emotion_heads: int = 8
    use_bank: bool = True  # False: the "no bank" ablation (query tokens go straight to the UNet)
    bank_size: int = 64
    # "auto": nearest entry while training, all entries in eval mode (paper Eq. 9-13); "all": the
    # learnable cross-attention ablation; "nearest": retrieval at inference too.
    kv_mode: KVMode = "auto"
    vq_beta: float = 0.25
    # Pose guider: conv widths; one stride-2 step per width after the first, so len - 1 must equal
    # log2 of the VAE's downsampling factor.
    pose_channels: tuple[int, ...] = (16, 32, 96, 256)
    mask_channels: int = 3
    # Emotion classifier on the mid-block output.
    classifier_hidden: tuple[int, ...] = (512, 256)
    num_classes: int = 22
    classifier_dropout: float = 0.1
    # Scales of the decoupled attention streams.
    stream_scales: dict[str, float] = field(default_factory=lambda: {"audio": 1.0, "emotion": 1.0})

    def __post_init__(self) -> None:
        if self.kv_mode not in ("auto", "nearest", "all"):
            raise ValueError(f"TalkerConfig.kv_mode must be auto, nearest or all, got {self.kv_mode!r}")
        self.pose_channels = tuple(self.pose_channels)
        self.classifier_hidden = tuple(self.classifier_hidden)
