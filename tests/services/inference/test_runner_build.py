"""The runner's step tensors, built without a tensor operation per row, equal the row-by-row
construction they replaced, on random batches (prefill chunks, decodes, chunks that straddle
the end of the prompt)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from services.inference.runner import PAD_ID, ModelRunner
from services.inference.sequence import Sequence


def _reference(chunks: list[tuple[Sequence, int]]) -> list[torch.Tensor]:
    """The former ModelRunner.build, row by row."""
    b = len(chunks)
    t = max(n for _, n in chunks)
    max_blocks = max(len(seq.block_table) for seq, _ in chunks)
    tokens = torch.full((b, t), PAD_ID, dtype=torch.long)
    positions = torch.zeros((b, t), dtype=torch.long)
    tables = torch.zeros((b, max_blocks), dtype=torch.long)
    new_lens = torch.empty(b, dtype=torch.long)
    ctx_lens = torch.empty(b, dtype=torch.long)
    for row, (seq, n) in enumerate(chunks):
        start = seq.num_computed
        tokens[row, :n] = torch.tensor(seq.tokens[start : start + n])
        positions[row, :n] = torch.arange(start, start + n)
        tables[row, : len(seq.block_table)] = torch.tensor(seq.block_table)
        new_lens[row] = n
        ctx_lens[row] = start + n
    return [tokens, positions, new_lens, ctx_lens, tables]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(1, 40), st.integers(0, 20), st.integers(0, 60), st.integers(1, 30)),
        min_size=1,
        max_size=12,
    ),
    block=st.sampled_from([1, 4, 16]),
)
def test_vectorised_build_equals_row_by_row(rows, block) -> None:
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
    runner = ModelRunner.__new__(ModelRunner)
    runner.device = torch.device("cpu")
    got = runner.build(chunks)
    want = _reference(chunks)
    for name, g, w in zip(
        ("tokens", "positions", "new_lens", "ctx_lens", "tables"),
        [got.tokens, got.positions, got.new_lens, got.ctx_lens, got.tables],
        want,
        strict=True,
    ):
        assert g.dtype == w.dtype and torch.equal(g, w), name


def test_token_slice_equals_tokens_slice() -> None:
    seq = Sequence("s", "t", [1, 2, 3, 4], max_tokens=8)
    seq.output = [5, 6, 7]
    for start in range(seq.num_tokens):
        for n in range(1, seq.num_tokens - start + 1):
            assert seq.token_slice(start, n) == seq.tokens[start : start + n]
