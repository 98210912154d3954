"""Emotion conditioner: emotion prior -> emotion tokens through the emotion bank (paper 3.2, Eq. 9-13)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .audio_proj import TokenProjection
from .config import KVMode
from .losses import vq_loss


@dataclass
class BankLookup:
    """Nearest-entry retrieval for a batch: s = fc(prior), k = argmin ||s - C_i||^2, entry = C_k."""

    projected: Tensor  # (B, D)
    index: Tensor  # (B,) long
    entry: Tensor  # (B, D), gradient reaches the bank


class EmotionBank(nn.Module):
    """K learnable prototypes C (K x D) and the Linear that maps a prior into their space.

    Names (fc, codebook) follow the released ``emo_model.pth`` (``codebook.fc``, ``codebook.codebook``).
    """

    def __init__(self, prior_dim: int, dim: int, size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(prior_dim, dim)
        self.codebook = nn.Embedding(size, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / size, 1.0 / size)

    @property
    def entries(self) -> Tensor:
        """All prototypes, (K, D)."""
        return self.codebook.weight

    def lookup(self, prior: Tensor) -> BankLookup:
        """Project the prior and find its nearest prototype (squared L2)."""
        projected = self.fc(prior)
        with torch.no_grad():
            s, c = projected.float(), self.entries.float()
            distances = (s * s).sum(1, keepdim=True) - 2 * s @ c.T + (c * c).sum(1)  # ||s - C_i||^2
            index = distances.argmin(dim=1)
        return BankLookup(projected=projected, index=index, entry=self.codebook(index))


class QKVAttention(nn.Module):
    """Multi-head attention with biased Q/K/V projections, no output projection and no residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"QKVAttention: dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.fc_q = nn.Linear(dim, dim)
        self.fc_k = nn.Linear(dim, dim)
        self.fc_v = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, queries: Tensor, keys: Tensor) -> Tensor:
        """queries (B, Nq, D) attend over keys/values (B or 1, Nk, D) -> (B, Nq, D)."""
        q = self._split(self.fc_q(queries))
        k = self._split(self.fc_k(keys)).expand(q.shape[0], -1, -1, -1)
        v = self._split(self.fc_v(keys)).expand(q.shape[0], -1, -1, -1)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


@dataclass
class EmotionOutput:
    """Emotion tokens for the UNet plus what the VQ loss and bank statistics need."""

    tokens: Tensor  # (B, N, D)
    vq_loss: Tensor  # scalar; 0 without a bank
    index: Tensor | None  # (B,) nearest bank entries, None without a bank


class EmotionConditioner(nn.Module):
    """prior (B, P) -> emotion tokens (B, N, D).

    Query tokens come from the prior (``emo_linear``); keys/values from bank entries through
    ``kv_tokens_linear`` (N tokens per entry): in training the nearest entry only, with a straight-through
    estimator so the denoising gradient reaches the prior path (Eq. 9-11); in eval all K entries at once
    (Eq. 12-13). ``use_bank=False`` is the "no bank" ablation: the query tokens are the output.
    """

    def __init__(
        self,
        prior_dim: int = 256,
        hidden_dim: int = 1024,
        num_tokens: int = 32,
        token_dim: int = 1024,
        heads: int = 8,
        bank_size: int = 64,
        use_bank: bool = True,
        kv_mode: KVMode = "auto",
        vq_beta: float = 0.25,
    ) -> None:
        super().__init__()
        self.use_bank = use_bank
        self.kv_mode = kv_mode
        self.vq_beta = vq_beta
        self.emo_linear = TokenProjection(prior_dim, hidden_dim, num_tokens, token_dim)
        if use_bank:
            self.kv_tokens_linear = TokenProjection(token_dim, hidden_dim, num_tokens, token_dim)
            self.codebook = EmotionBank(prior_dim, token_dim, bank_size)
            self.attention = QKVAttention(token_dim, heads)

    def uses_all_entries(self) -> bool:
        """Whether K/V come from every bank entry in the current mode."""
        return self.kv_mode == "all" or (self.kv_mode == "auto" and not self.training)

    def forward(self, prior: Tensor) -> EmotionOutput:
        """Emotion tokens for a batch of priors (B, prior_dim)."""
        queries = self.emo_linear(prior)
        if not self.use_bank:
            return EmotionOutput(tokens=queries, vq_loss=queries.new_zeros(()), index=None)
        found = self.codebook.lookup(prior)
        loss = vq_loss(found.projected, found.entry, self.vq_beta)
        if self.uses_all_entries():
            kv = self.kv_tokens_linear(self.codebook.entries).flatten(0, 1).unsqueeze(0)  # (1, K*N, D)
        else:
            # Straight-through: the value is C_k, the gradient goes to the projected prior s.
            quantized = found.projected + (found.entry - found.projected).detach()
            kv = self.kv_tokens_linear(quantized)  # (B, N, D)
        return EmotionOutput(tokens=self.attention(queries, kv), vq_loss=loss, index=found.index)
