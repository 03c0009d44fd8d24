"""Our written-out attention against torch's own scaled_dot_product_attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from services.inference.model.attention import attention, causal_mask, padding_mask, stable_softmax


def _qkv(b: int, h: int, lq: int, lk: int, d: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g).to(dtype) for n in (lq, lk, lk))


@pytest.mark.parametrize(("b", "h", "n", "d"), [(1, 1, 1, 8), (2, 4, 7, 16), (3, 2, 33, 32)])
def test_causal_matches_sdpa(b: int, h: int, n: int, d: int) -> None:
    q, k, v = _qkv(b, h, n, n, d, seed=n)
    ours = attention(q, k, v, causal_mask(n, n))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_causal_with_cached_prefix_matches_sdpa_bool_mask() -> None:
    # Queries are the last 3 of 10 positions, as in a decode step with a cache.
    q, k, v = _qkv(2, 2, 3, 10, 16, seed=3)
    mask = causal_mask(3, 10)
    ours = attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_causal_and_padding_matches_sdpa() -> None:
    q, k, v = _qkv(3, 2, 9, 9, 16, seed=5)
    lengths = torch.tensor([9, 4, 1])
    mask = causal_mask(9, 9)[None, None] & padding_mask(lengths, 9)
    ours = attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_all_masked_rows_are_zero_and_other_rows_match_sdpa() -> None:
    q, k, v = _qkv(2, 3, 6, 6, 8, seed=7)
    # Row 0 of batch 1 has no real keys at all; batch 0 query 2 is masked by hand too.
    mask = padding_mask(torch.tensor([6, 0]), 6).expand(2, 3, 6, 6).clone()
    mask[0, :, 2, :] = False
    ours = attention(q, k, v, mask)
    assert not torch.isnan(ours).any()
    dead = ~mask.any(dim=-1)  # [B, H, Lq]
    assert dead.sum() == 3 * 6 + 3  # every query of batch 1, query 2 of batch 0
    assert torch.all(ours[dead] == 0)
    live_mask = mask | dead[..., None]  # give SDPA a finite input, then compare live rows only
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=live_mask)
    torch.testing.assert_close(ours[~dead], ref[~dead], atol=1e-5, rtol=1e-5)


def test_half_precision_inputs_accumulate_in_float32() -> None:
    q, k, v = _qkv(2, 2, 17, 17, 32, seed=11)
    mask = causal_mask(17, 17)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
    for dtype in (torch.bfloat16, torch.float16):
        ours = attention(q.to(dtype), k.to(dtype), v.to(dtype), mask)
        assert ours.dtype == dtype
        # Error is the input rounding only: no overflow or NaN from half-precision exp().
        torch.testing.assert_close(ours.double(), ref, atol=3e-2, rtol=3e-2)


def test_large_logits_do_not_overflow() -> None:
    scores = torch.tensor([[1000.0, 999.0, float("-inf")], [-1000.0, -1001.0, -1002.0]])
    probs = stable_softmax(scores)
    torch.testing.assert_close(probs, torch.softmax(scores, dim=-1))
    assert torch.isfinite(probs).all()
