"""Ragged paged attention (model/paged.py) against straightforward per-sequence attention.

Random mixes of sequences (context already cached, new tokens this step: prefill chunks and
decodes), scattered block tables, grouped-query head ratios and any grouping of the rows: the
packed step's attention output must equal, for each sequence alone, causal attention of its new
queries over its whole context (cached keys followed by the new ones), computed in float64 by
torch's scaled_dot_product_attention with K/V repeated per query head. The new K/V must land
in their slots and nothing else in the pool may change. Then, end to end: greedy generations
through the engine equal one-sequence-at-a-time generation with the full (uncached) forward.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from services.inference.engine import Engine
from services.inference.model.kv_cache import KVCache
from services.inference.model.paged import paged_attention
from services.inference.runner import ModelRunner
from services.inference.scheduler import SchedulerConfig
from services.inference.sequence import Sequence


class _Cfg:
    def __init__(self, h: int, hkv: int, d: int) -> None:
        self.n_heads, self.n_kv_heads, self.head_dim = h, hkv, d


class _Model(torch.nn.Module):
    """Just enough of a model for ModelRunner.build (config, a parameter for the device)."""

    def __init__(self, cfg: _Cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.p = torch.nn.Parameter(torch.zeros(1))


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(0, 70), st.integers(1, 24)), min_size=1, max_size=10),
    heads=st.sampled_from([(4, 4), (4, 2), (4, 1), (2, 2)]),
    block=st.sampled_from([1, 4, 16]),
    budget=st.sampled_from([1, 2000, 30_000, 10**12]),
    seed=st.integers(0, 2**16),
)
def test_paged_attention_equals_per_sequence_full_attention(rows, heads, block, budget, seed) -> None:
    h, hkv = heads
    d = 8
    gen = torch.Generator().manual_seed(seed)
    cache = KVCache(n_layers=1, n_heads=hkv, head_dim=d, num_tokens=2048, block_size=block)
    # Scatter the tables: take blocks in a shuffled order.
    order = list(range(cache.num_blocks))
    random.Random(seed).shuffle(order)
    cache._free = order  # type: ignore[attr-defined]  # pop() from a shuffled free list
    cache.k.normal_(generator=gen)
    cache.v.normal_(generator=gen)
    runner = ModelRunner(_Model(_Cfg(h, hkv, d)), cache)  # type: ignore[arg-type]
    runner.group_bytes = budget  # 1: a group per row; 10**12: one group of all decodes
    chunks, full_k, full_v = [], [], []
    for i, (cached, n) in enumerate(rows):
        seq = Sequence(f"s{i}", "t", [1] * (cached + n), max_tokens=1)
        seq.num_computed = cached
        cache.grow(seq.block_table, cached + n)
        chunks.append((seq, n))
    step = runner.build(chunks)
    total = sum(n for _, n in rows)
    q = torch.randn(total, h, d, generator=gen)
    k = torch.randn(total, hkv, d, generator=gen)
    v = torch.randn(total, hkv, d, generator=gen)
    before_k, before_v = cache.k[0].clone(), cache.v[0].clone()
    # Each row's whole context: cached keys (read from the pool before the step) + new keys.
    off = 0
    for seq, n in chunks:
        slots = torch.tensor([runner_slot(seq, p, block) for p in range(seq.num_computed)], dtype=torch.long)
        full_k.append(torch.cat([before_k[:, slots].transpose(0, 1), k[off : off + n]]))
        full_v.append(torch.cat([before_v[:, slots].transpose(0, 1), v[off : off + n]]))
        off += n

    with torch.inference_mode():
        got = paged_attention(q, k, v, cache.k[0], cache.v[0], step)

    off = 0
    for (seq, n), fk, fv in zip(chunks, full_k, full_v, strict=True):
        ctx = seq.num_computed + n
        qs = q[off : off + n].double().transpose(0, 1)  # [H, n, D]
        ks = fk.double().repeat_interleave(h // hkv, dim=1).transpose(0, 1)  # [H, ctx, D]
        vs = fv.double().repeat_interleave(h // hkv, dim=1).transpose(0, 1)
        pos = torch.arange(seq.num_computed, ctx)
        mask = torch.arange(ctx)[None, :] <= pos[:, None]  # [n, ctx] causal
        want = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask).transpose(0, 1)
        torch.testing.assert_close(got[off : off + n].double(), want, atol=1e-5, rtol=1e-5)
        off += n
    # The new K/V are in their slots; every other slot is unchanged.
    written = torch.zeros(cache.k.shape[2], dtype=torch.bool)
    written[step.write_slots] = True
    torch.testing.assert_close(cache.k[0][:, step.write_slots], k.transpose(0, 1))
    torch.testing.assert_close(cache.v[0][:, step.write_slots], v.transpose(0, 1))
    assert torch.equal(cache.k[0][:, ~written], before_k[:, ~written])
    assert torch.equal(cache.v[0][:, ~written], before_v[:, ~written])


def runner_slot(seq: Sequence, pos: int, block: int) -> int:
    return seq.block_table[pos // block] * block + pos % block


def _assert_greedy(model, prompt: list[int], output: list[int]) -> None:
    """Each generated token is the argmax of the full (uncached) forward over the sequence so
    far, up to float ties (1e-4): greedy generation one sequence at a time, teacher-forced."""
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + output]))[0]
    for i, tok in enumerate(output):
        row = logits[len(prompt) - 1 + i]
        assert float(row[tok]) >= float(row.max()) - 1e-4, (i, tok, int(row.argmax()))


@settings(max_examples=5, deadline=None)
@given(
    lens=st.lists(st.tuples(st.integers(1, 90), st.integers(1, 12)), min_size=2, max_size=10),
    seed=st.integers(0, 1000),
)
def test_engine_greedy_generations_equal_full_forward(tiny_model, lens, seed) -> None:
    rng = random.Random(seed)
    prompts = [[rng.randrange(1, 256) for _ in range(p)] for p, _ in lens]
    cfg = tiny_model.cfg
    cache = KVCache(
        n_layers=cfg.n_layers, n_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, num_tokens=4096, block_size=4
    )
    # Small step budget and chunks: prefill chunks, decodes and fresh prompts share steps.
    engine = Engine(tiny_model, cache, SchedulerConfig(max_seqs=6, max_step_tokens=40, prefill_chunk=16))
    engine.start()
    try:
        seqs = [
            Sequence(str(i), "t", p, max_tokens=n, stop_at_eos=False)
            for i, (p, (_, n)) in enumerate(zip(prompts, lens, strict=True))
        ]
        engine.run_to_completion(seqs, timeout=120)
    finally:
        engine.stop()
    for seq, p, (_, n) in zip(seqs, prompts, lens, strict=True):
        assert len(seq.output) == n
        _assert_greedy(tiny_model, p, seq.output)
