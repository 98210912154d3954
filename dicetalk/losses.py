"""Contrastive loss of the stage-1 emotion embedder (paper Eq. 7-8)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_candidates(z: Tensor, keys: Tensor) -> tuple[Tensor, Tensor, int]:
    """All rows of every rank, and the offset of this rank's rows in them.

    The autograd-aware all_gather sends each rank's gradient for the other ranks' rows back to their
    owners, so the summed (DDP-averaged) gradient equals that of one process holding the whole batch.
    Every rank must hold the same number of rows (the key-aware batch sampler guarantees it).
    """
    if not _distributed():
        return z, keys, 0
    from torch.distributed.nn.functional import all_gather as all_gather_with_grad

    world, rank = dist.get_world_size(), dist.get_rank()
    z_all = torch.cat(all_gather_with_grad(z), dim=0)
    key_list = [torch.empty_like(keys) for _ in range(world)]
    dist.all_gather(key_list, keys)
    return z_all, torch.cat(key_list, dim=0), rank * z.shape[0]


def _pair_layout(anchors: Tensor, positives: Tensor, keys: Tensor | None) -> tuple[Tensor, Tensor]:
    """Rows [a_0..a_{B-1}, p_0..p_{B-1}] and their keys (rows without keys get a unique key each)."""
    if anchors.shape != positives.shape or anchors.dim() != 2:
        raise ValueError(
            f"info_nce: anchors {tuple(anchors.shape)} and positives {tuple(positives.shape)} must be equal (B, D)"
        )
    b = anchors.shape[0]
    if keys is None:
        keys = torch.arange(b, device=anchors.device)
        if _distributed():  # unique across ranks too
            keys = keys + dist.get_rank() * b
    elif keys.shape != (b,):
        raise ValueError(f"info_nce: keys must have shape ({b},), got {tuple(keys.shape)}")
    z = F.normalize(torch.cat([anchors, positives], dim=0), dim=-1)
    return z, torch.cat([keys, keys]).to(anchors.device)


def info_nce(anchors: Tensor, positives: Tensor, temperature: float, keys: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE with cosine similarity and key masking.

    For anchor row i the positive is positives[i]; the candidates are all other rows of anchors and
    positives (2B-2, or 2BW-2 across W DDP ranks) except those whose key equals keys[i], which are neither
    positive nor negative (same identity+emotion, or same video). Each side of a pair serves once as
    anchor; the result is the mean over the 2B local anchors.
    """
    z, row_keys = _pair_layout(anchors, positives, keys)
    n_local = z.shape[0]
    z_all, keys_all, offset = _gather_candidates(z, row_keys)

    sim = z @ z_all.T / temperature  # (2B, 2B_all)
    rows = torch.arange(n_local, device=z.device)
    # each rank contributes its [anchors, positives] block, so local row r sits at column offset + r
    self_col = offset + rows
    pos_col = offset + (rows + n_local // 2) % n_local
    excluded = row_keys[:, None] == keys_all[None, :]
    excluded[rows, pos_col] = False  # the positive shares the key but stays in the denominator
    excluded[rows, self_col] = True
    logits = sim.masked_fill(excluded, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - sim[rows, pos_col]).mean()


@torch.no_grad()
def pair_statistics(anchors: Tensor, positives: Tensor, keys: Tensor | None = None) -> dict[str, Tensor]:
    """Mean positive cosine, mean negative cosine and top-1 retrieval accuracy over the local batch.

    Retrieval: for each anchor (both directions), is its positive the most similar of the non-masked
    candidates? Negatives are the candidates whose key differs from the anchor's.
    """
    z, row_keys = _pair_layout(anchors, positives, keys)
    n = z.shape[0]
    rows = torch.arange(n, device=z.device)
    pos_col = (rows + n // 2) % n
    cos = z @ z.T
    same = row_keys[:, None] == row_keys[None, :]
    negative = ~same
    masked = cos.masked_fill(same, float("-inf"))
    masked[rows, pos_col] = cos[rows, pos_col]
    return {
        "pos_cos": cos[rows, pos_col].mean(),
        "neg_cos": cos[negative].mean() if negative.any() else cos.new_tensor(float("nan")),
        "top1": (masked.argmax(dim=1) == pos_col).float().mean(),
    }
