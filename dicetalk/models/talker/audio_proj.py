"""Token projections: a 3-layer MLP that turns one vector into a set of tokens."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class TokenProjection(nn.Module):
    """in_dim -> hidden -> hidden -> num_tokens x token_dim, ReLU between, LayerNorm per token.

    Parameter names (proj1, proj2, proj3, norm) follow the released checkpoints so they load directly.
    """

    def __init__(self, in_dim: int, hidden_dim: int, num_tokens: int, token_dim: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.token_dim = token_dim
        self.proj1 = nn.Linear(in_dim, hidden_dim)
        self.proj2 = nn.Linear(hidden_dim, hidden_dim)
        self.proj3 = nn.Linear(hidden_dim, num_tokens * token_dim)
        self.norm = nn.LayerNorm(token_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> (..., num_tokens, token_dim)."""
        x = F.relu(self.proj1(x))
        x = F.relu(self.proj2(x))
        x = self.proj3(x).reshape(*x.shape[:-1], self.num_tokens, self.token_dim)
        return self.norm(x)


class AudioProjection(TokenProjection):
    """Whisper window per generated frame (window x layers x width) -> audio tokens."""

    def __init__(
        self,
        window: int = 10,
        layers: int = 5,
        channels: int = 384,
        hidden_dim: int = 1024,
        num_tokens: int = 32,
        token_dim: int = 1024,
    ) -> None:
        super().__init__(window * layers * channels, hidden_dim, num_tokens, token_dim)
        self.window_shape = (window, layers, channels)

    def forward(self, whisper: Tensor) -> Tensor:
        """(B, F, window, layers, channels) -> (B, F, num_tokens, token_dim)."""
        if tuple(whisper.shape[-3:]) != self.window_shape:
            raise ValueError(
                f"AudioProjection: whisper windows must end in {self.window_shape}, got {tuple(whisper.shape)}"
            )
        return super().forward(whisper.flatten(-3))
