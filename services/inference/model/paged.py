"""One continuous-batching step over the paged KV cache: packed tokens, ragged attention.

A step's new tokens (prefill chunks and one-token decodes of many sequences) are packed into
one flat run of N tokens: embeddings, norms, rotary and every linear layer see [1, N, d] with
no padding at all, in one forward call whatever the mix. Only attention needs per-sequence
structure, and it reads each sequence's context from the paged cache:

- the new tokens' K/V are written into their slots (`write_slots`) first;
- rows are attended in length-bucketed groups (`AttnGroup`): the runner sorts rows by context
  length and cuts them into runs whose gathered K/V and scores fit a core's L2 cache
  (`plan_groups`), so a 20-token context is not padded to a 400-token one and the gathered
  copy is read back from cache, not DRAM. A group gathers its rows' KV slots ([Hkv, rows,
  ctx, D], read once per KV head: grouped-query attention puts the query heads of a KV head
  side by side in the query dimension instead of repeating K/V per query head), attends with
  float32 scores (mask and scale in one baddbmm), and scatters the real queries' outputs back
  into the packed run.

Measured on this CPU (2 shared cores, 64 decodes with contexts of 20-450 tokens, one layer):
one padded group with K/V repeated per query head 3.1 ms, without the repeat 1.1 ms, cut in
2-4 length groups 0.95-1.0 ms; a flat gather with segment softmax (no padding at all, but
elementwise passes instead of batched matmuls) 3.7 ms, torch's nested-tensor SDPA 9.7 ms,
torch's SDPA per group no faster than baddbmm + softmax + bmm. With caches as cold as in a
real step (4 layers' pools, 64 MB touched in between), groups of 64 rows took 49 ms for the
4 layers, groups of 8 rows (about 800 KB of K/V each) 18 ms; with 4 KV heads of 8 query
heads (d=256) 65 ms vs 38 ms at 4 rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class AttnGroup:
    """Rows attended together: `rows` sequences, `width` query tokens each (padded), `ctx` keys
    each (padded to the group's longest context)."""

    rows: int
    width: int
    ctx: int
    q_index: torch.Tensor  # [rows * width] packed token behind each (row, t); pads repeat a real one
    out_src: torch.Tensor | None  # [n] which of the rows * width outputs are real (None: all)
    out_dst: torch.Tensor  # [n] their packed token index
    read_slots: torch.Tensor  # [rows * ctx] KV slot of each (row, key position); pads: a real slot
    # [n_kv_heads * rows, width * q_per_kv, ctx] float32, 0 where the query may attend the key,
    # -inf where not; every query row has at least one 0 (key 0), so no row is all -inf.
    bias: torch.Tensor


@dataclass
class StepBatch:
    """Tensors for one batched step; built by the runner from the scheduler's decisions."""

    tokens: torch.Tensor  # [N] new tokens of every row, packed row after row
    positions: torch.Tensor  # [N] their absolute positions
    write_slots: torch.Tensor  # [N] KV slot each new token is written to
    logit_index: torch.Tensor  # [R] packed index of the tokens whose logits are wanted
    groups: list[AttnGroup]


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    step: StepBatch,
) -> torch.Tensor:
    """q [N, H, D], k/v [N, Hkv, D] (the packed new tokens); pools [Hkv, slots, D] (one layer).
    Writes the new K/V into the pools, then attends each row over its context: [N, H, D]."""
    h, d = q.shape[1:]
    hkv = k.shape[1]
    per_kv = h // hkv
    _write_kv(k, v, k_pool, v_pool, step.write_slots)
    out = torch.empty_like(q)
    scale = 1.0 / math.sqrt(d)
    for g in step.groups:
        # Query heads of one KV head side by side: row (t, j) of [Hkv * rows, width * per_kv, D]
        # is query head kv * per_kv + j at token t; K/V are read once per KV head.
        qg = q.index_select(0, g.q_index).view(g.rows, g.width, hkv, per_kv, d)
        qg = qg.permute(2, 0, 1, 3, 4).reshape(hkv * g.rows, g.width * per_kv, d).float()
        keys, values = _gather_kv(k_pool, v_pool, g)
        # Scores, mask and scale in one call; float32 whatever the weights' dtype (attention.py).
        scores = torch.baddbmm(g.bias, qg, keys.transpose(1, 2), alpha=scale)
        o = torch.bmm(torch.softmax(scores, dim=-1), values).to(q.dtype)
        o = o.view(hkv, g.rows, g.width, per_kv, d).permute(1, 2, 0, 3, 4).reshape(-1, h, d)
        if g.out_src is not None:
            o = o.index_select(0, g.out_src)
        out.index_copy_(0, g.out_dst, o)
    return out


def _write_kv(
    k: torch.Tensor, v: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor
) -> None:
    # index_copy_/index_select rather than advanced indexing: several times faster on CPU.
    k_pool.index_copy_(1, slots, k.transpose(0, 1).to(k_pool.dtype))
    v_pool.index_copy_(1, slots, v.transpose(0, 1).to(v_pool.dtype))


def _gather_kv(k_pool: torch.Tensor, v_pool: torch.Tensor, g: AttnGroup) -> tuple[torch.Tensor, torch.Tensor]:
    """The group's contexts, [Hkv * rows, ctx, D] float32 (a heads-first pool lands them so)."""
    hkv, _, d = k_pool.shape
    keys = k_pool.index_select(1, g.read_slots).view(hkv * g.rows, g.ctx, d).float()
    values = v_pool.index_select(1, g.read_slots).view(hkv * g.rows, g.ctx, d).float()
    return keys, values


def plan_groups(
    ctx: list[int], width: list[int], budget: int, per_key: int, per_score: int
) -> list[list[int]]:
    """Partition rows into attention groups: sorted by context length, cut into runs whose
    working set fits `budget` bytes.

    A group's working set is its gathered K/V (rows x longest context x `per_key` bytes) plus
    its scores (rows x longest width x longest context x `per_score` bytes). Kept within a
    core's L2 cache, the gathered copy is still in cache when the matmuls read it, and the
    allocator hands the next group the same memory: the pool is read from DRAM once, nothing
    is written back. Neighbours in context order pad each other little. A row alone over the
    budget (a long prefill chunk) is a group by itself.
    """
    order = sorted(range(len(ctx)), key=ctx.__getitem__)
    groups: list[list[int]] = []
    current: list[int] = []
    w = 0
    for r in order:  # ascending context: the row joining a group is its longest
        nw = max(w, width[r])
        if current and (len(current) + 1) * ctx[r] * (per_key + nw * per_score) > budget:
            groups.append(current)
            current, nw = [], width[r]
        current.append(r)
        w = nw
    if current:
        groups.append(current)
    return groups
