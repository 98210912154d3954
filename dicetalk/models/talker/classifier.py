"""Emotion classifier on the UNet's mid-block features (paper 3.3, Eq. 16)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dicetalk.constants import EMOTIONS, LEVELS

NEUTRAL = "neutral"


def emotion_class(emotion: str | None, level: int | None, num_classes: int) -> int:
    """Class id of a clip, or -1 (unlabelled) when it has no emotion label.

    8 classes: the index in EMOTIONS. 22 classes: neutral -> 0; the 7 other emotions in EMOTIONS order
    x levels 1-3 -> 1 + 3 * i + (level - 1).
    """
    if emotion is None:
        return -1
    if emotion not in EMOTIONS:
        raise ValueError(f"emotion_class: unknown emotion {emotion!r}")
    if num_classes == len(EMOTIONS):
        return EMOTIONS.index(emotion)
    if num_classes != 1 + (len(EMOTIONS) - 1) * len(LEVELS):
        raise ValueError(f"emotion_class: num_classes must be 8 or 22, got {num_classes}")
    if emotion == NEUTRAL:
        return 0
    if level not in LEVELS:
        raise ValueError(f"emotion_class: {emotion} needs a level in {LEVELS}, got {level!r}")
    others = [e for e in EMOTIONS if e != NEUTRAL]
    return 1 + len(LEVELS) * others.index(emotion) + (level - 1)


class EmotionClassifier(nn.Module):
    """Average-pool features over frames and space -> MLP (ReLU, dropout) -> class logits.

    One prediction per clip: the emotion label belongs to the clip, so frames are pooled together with
    the spatial positions. Names (fc1, fc2, fc3) follow the released ``emo_model.pth`` ``classifier.*``.
    """

    def __init__(
        self,
        in_dim: int = 1280,
        hidden: tuple[int, ...] = (512, 256),
        num_classes: int = 22,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(hidden) != 2:
            raise ValueError(f"EmotionClassifier: hidden must have two widths, got {hidden}")
        self.fc1 = nn.Linear(in_dim, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: Tensor, num_frames: int) -> Tensor:
        """features (B*F, C, h, w) -> logits (B, num_classes)."""
        pooled = features.float().unflatten(0, (-1, num_frames)).mean(dim=(1, 3, 4))
        pooled = pooled.to(self.fc1.weight.dtype)
        x = self.dropout(F.relu(self.fc1(pooled)))
        x = self.dropout(F.relu(self.fc2(x)))
        return self.fc3(x)
