"""The runner's step tensors, built by whole-batch torch calls from flat lists, equal a row-by-row
construction on random batches (prefill chunks, decodes, chunks that straddle the end of the
prompt, scattered block tables, any grouping of the rows)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from services.inference.model.paged import plan_groups
from services.inference.runner import ModelRunner
from services.inference.sequence import Sequence


def _runner(block: int, q_per_kv: int, budget: int) -> ModelRunner:
    runner = ModelRunner.__new__(ModelRunner)
    runner.device = torch.device("cpu")
    runner.cache = SimpleNamespace(block_size=block)  # type: ignore[assignment]
    runner.q_per_kv = q_per_kv
    runner.n_kv_heads = 2
    runner.group_bytes, runner.per_key, runner.per_score = budget, 64, 8
    return runner


def _slot(seq: Sequence, pos: int, block: int) -> int:
    return seq.block_table[pos // block] * block + pos % block


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(1, 40), st.integers(0, 20), st.integers(0, 60), st.integers(1, 30)),
        min_size=1,
        max_size=12,
    ),
    block=st.sampled_from([1, 4, 16]),
    q_per_kv=st.sampled_from([1, 2]),
    budget=st.sampled_from([1, 5000, 10**12]),
    data=st.data(),
)
def test_packed_build_equals_row_by_row(rows, block, q_per_kv, budget, data) -> None:
    chunks = []
    next_block = 7
    for i, (prompt_len, out_len, computed, n) in enumerate(rows):
        seq = Sequence(f"s{i}", "t", [(i * 31 + j) % 97 + 1 for j in range(prompt_len)], max_tokens=64)
        seq.output = [(i * 17 + j) % 89 + 100 for j in range(out_len)]
        seq.num_computed = min(computed, seq.num_tokens - 1)
        n = min(n, seq.num_tokens - seq.num_computed)
        blocks = -(-(seq.num_computed + n) // block)
        seq.block_table = list(range(next_block, next_block + blocks))[::-1]
        next_block += blocks
        chunks.append((seq, n))
    wanted = sorted(data.draw(st.sets(st.integers(0, len(chunks) - 1))))
    step = _runner(block, q_per_kv, budget).build(chunks, wanted)

    # Row by row: packed tokens, positions, slots; logits at each wanted row's last token.
    tokens, positions, slots, where = [], [], [], {}
    for row, (seq, n) in enumerate(chunks):
        for t in range(n):
            where[(row, t)] = len(tokens)
            p = seq.num_computed + t
            tokens.append(seq.tokens[p])
            positions.append(p)
            slots.append(_slot(seq, p, block))
    assert step.tokens.tolist() == tokens
    assert step.positions.tolist() == positions
    assert step.write_slots.tolist() == slots
    assert step.logit_index.tolist() == [where[(r, chunks[r][1] - 1)] for r in wanted]

    # Every real query appears in exactly one group, attends exactly its row's keys 0..p, and
    # reads them from the row's own slots.
    seen = []
    for g in step.groups:
        q_index = g.q_index.view(g.rows, g.width).tolist()
        read = g.read_slots.view(g.rows, g.ctx).tolist()
        bias = g.bias.view(2, g.rows, g.width, q_per_kv, g.ctx)
        assert torch.equal(bias[0], bias[1])  # the same for each KV head
        mask = bias[0] == 0
        assert torch.all((bias[0] == 0) | (bias[0] == float("-inf")))
        real = list(range(g.rows * g.width)) if g.out_src is None else g.out_src.tolist()
        assert g.out_dst.tolist() == [q_index[i // g.width][i % g.width] for i in real]
        for i in real:
            b, t = divmod(i, g.width)
            token = q_index[b][t]
            row, t_row = next(k for k, v in where.items() if v == token)
            seq, _ = chunks[row]
            p = seq.num_computed + t_row
            seen.append(token)
            for j in range(g.ctx):
                want = j <= p
                assert all(bool(mask[b, t, h, j]) == want for h in range(q_per_kv)), (row, t_row, j)
                if want:
                    assert read[b][j] == _slot(seq, j, block)
    assert sorted(seen) == list(range(len(tokens)))


@settings(max_examples=300, deadline=None)
@given(
    ctx=st.lists(st.integers(1, 500), min_size=0, max_size=70),
    budget=st.integers(1, 10**6),
    per_key=st.integers(1, 512),
    per_score=st.integers(1, 64),
    data=st.data(),
)
def test_plan_groups_partitions_rows_in_context_order_within_budget(
    ctx, budget, per_key, per_score, data
) -> None:
    width = data.draw(st.lists(st.integers(1, 8), min_size=len(ctx), max_size=len(ctx)))
    groups = plan_groups(ctx, width, budget, per_key, per_score)
    assert sorted(i for g in groups for i in g) == list(range(len(ctx)))
    assert all(groups)

    def size(g: list[int]) -> int:
        return len(g) * max(ctx[i] for i in g) * (per_key + max(width[i] for i in g) * per_score)

    for g in groups:
        assert len(g) == 1 or size(g) <= budget  # only a row alone may exceed it
    for a, b in itertools.pairwise(groups):
        # Contiguous in context order, and each cut was needed: the next row did not fit.
        assert max(ctx[i] for i in a) <= min(ctx[i] for i in b)
        assert size([*a, b[0]]) > budget


def test_token_slice_equals_tokens_slice() -> None:
    seq = Sequence("s", "t", [1, 2, 3, 4], max_tokens=8)
    seq.output = [5, 6, 7]
    for start in range(seq.num_tokens):
        for n in range(1, seq.num_tokens - start + 1):
            assert seq.token_slice(start, n) == seq.tokens[start : start + n]
