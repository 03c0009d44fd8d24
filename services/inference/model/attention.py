"""Scaled dot-product attention, written out.

Layout: q [B, H, Lq, D], k and v [B, H, Lk, D]; mask is boolean, True = may attend, and
broadcasts to [B, H, Lq, Lk]. Scores are computed and normalised in float32 whatever the input
dtype (bf16/fp16 on GPU), because exp() of half-precision logits loses the small weights.

A row whose keys are all masked has no distribution to normalise. We define its output as
zeros (not NaN, not a uniform average of padding): the query attends to nothing.
"""

from __future__ import annotations

import math

import torch


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q.float(), k.float().transpose(-2, -1)) * scale
    if mask is not None:
        # Mask BEFORE the softmax with -inf; multiplying probabilities by 0 afterwards would
        # leave the masked keys' mass in the denominator.
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = stable_softmax(scores)
    return torch.matmul(probs, v.float()).to(v.dtype)


def stable_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, max-subtracted; all -inf rows give all zeros."""
    row_max = scores.amax(dim=-1, keepdim=True)
    # An all-masked row has max -inf and -inf - -inf = NaN; shift such rows by 0 instead.
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)
    total = weights.sum(dim=-1, keepdim=True)
    # total is 0 only for all-masked rows (otherwise the max element contributes exp(0) = 1).
    return weights / torch.where(total > 0, total, torch.ones_like(total))


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None) -> torch.Tensor:
    """[q_len, k_len], query i (the last q_len of k_len positions) sees keys <= its position."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device).unsqueeze(1)
    k_pos = torch.arange(k_len, device=device).unsqueeze(0)
    return k_pos <= q_pos


def padding_mask(lengths: torch.Tensor, k_len: int) -> torch.Tensor:
    """[B, 1, 1, k_len]: key j of row b is real when j < lengths[b]."""
    k_pos = torch.arange(k_len, device=lengths.device)
    return (k_pos.unsqueeze(0) < lengths.unsqueeze(1))[:, None, None, :]
