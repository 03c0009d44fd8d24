"""The transformer: cached decoding equals a full forward pass; batching changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.inference.model.kv_cache import KVCache
from services.inference.model.sampling import SamplingParams, sample, top_p_filter
from services.inference.model.tokenizer import ByteTokenizer, StreamDecoder
from services.inference.model.weights import WeightsError, build_model, load_weights, save_weights
from services.inference.runner import ModelRunner
from services.inference.sequence import Sequence

from .conftest import TINY

TOK = ByteTokenizer()


def _cache(model, tokens: int = 1024, block_size: int = 4) -> KVCache:
    cfg = model.cfg
    return KVCache(
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        head_dim=cfg.head_dim,
        num_tokens=tokens,
        block_size=block_size,
    )


def _step(runner: ModelRunner, chunks: list[tuple[Sequence, int]]) -> list[int | None]:
    """What the scheduler does around a runner step: blocks first, progress after."""
    for seq, n in chunks:
        runner.cache.grow(seq.block_table, seq.num_computed + n)
    out = runner.execute(chunks)
    for (seq, n), tok in zip(chunks, out, strict=True):
        seq.num_computed += n
        if tok is not None:
            seq.output.append(tok)
    return out


def test_chunked_prefill_and_cached_decode_equal_full_forward(tiny_model) -> None:
    runner = ModelRunner(tiny_model, _cache(tiny_model))
    prompt = TOK.encode("The quick brown fox jumps over the lazy dog")
    seq2 = Sequence("s2", "t", prompt, max_tokens=12)
    for n in (5, 1, 7, len(prompt) - 13):
        _step(runner, [(seq2, n)])
    while len(seq2.output) < 12:
        _step(runner, [(seq2, seq2.pending)])

    full = tiny_model(torch.tensor([seq2.tokens]))[0]  # [T, V]
    # Logits at the end of each prefill chunk.
    ends = [5, 6, 13, len(prompt)]
    # Replay with the cache to collect logits at every decoded position.
    seq3 = Sequence("s3", "t", prompt, max_tokens=12)
    cache_logits = []
    for n in (5, 1, 7, len(prompt) - 13):
        runner.cache.grow(seq3.block_table, seq3.num_computed + n)
        cache_logits.append(tiny_model.forward_step(runner.build([(seq3, n)]), runner.cache)[0])
        seq3.num_computed += n
    for tok in seq2.output[:-1]:
        seq3.output.append(tok)
        runner.cache.grow(seq3.block_table, seq3.num_computed + 1)
        cache_logits.append(tiny_model.forward_step(runner.build([(seq3, 1)]), runner.cache)[0])
        seq3.num_computed += 1
    positions = [e - 1 for e in ends] + list(range(len(prompt), len(seq2.tokens) - 1))
    torch.testing.assert_close(torch.stack(cache_logits), full[positions], atol=1e-4, rtol=1e-4)
    # Greedy tokens from the cache are the argmax of the full pass.
    assert seq2.output == full[len(prompt) - 1 : -1].argmax(-1).tolist()


def _generate(runner: ModelRunner, prompts: list[str], max_tokens: int) -> list[list[int]]:
    seqs = [Sequence(f"s{i}", "t", TOK.encode(p), max_tokens=max_tokens) for i, p in enumerate(prompts)]
    while any(len(s.output) < max_tokens for s in seqs):
        live = [s for s in seqs if len(s.output) < max_tokens]
        _step(runner, [(s, min(s.pending, 8)) for s in live])  # chunked prefill of 8
    for s in seqs:
        runner.cache.free(s.block_table)
    return [s.output for s in seqs]


def test_batched_generation_equals_one_at_a_time_greedy(tiny_model) -> None:
    prompts = ["a", "hello world", "Lorem ipsum dolor sit amet, consectetur", "é😀 unicode", "x" * 40]
    runner = ModelRunner(tiny_model, _cache(tiny_model, tokens=2048))
    batched = _generate(runner, prompts, max_tokens=16)
    singles = [_generate(runner, [p], max_tokens=16)[0] for p in prompts]
    assert batched == singles
    assert runner.cache.free_blocks == runner.cache.num_blocks  # everything returned


def test_seeded_sampling_is_reproducible_and_batch_independent(tiny_model) -> None:
    logits = torch.randn(3, 259, generator=torch.Generator().manual_seed(0)) * 3
    a = [sample(logits[[0]], [SamplingParams(temperature=0.9, top_p=0.9, seed=42)])[0] for _ in range(3)]
    assert len(set(a)) == 1
    p = [
        SamplingParams(temperature=0.9, top_p=0.9, seed=42),
        SamplingParams(temperature=1.0, seed=1),
        SamplingParams(temperature=0.9, top_p=0.9, seed=42),
    ]
    out = sample(logits[[0, 1, 0]], p)
    assert out[0] == out[2] == a[0]
    # Greedy ignores the seed.
    assert sample(logits, [SamplingParams()] * 3) == logits.argmax(-1).tolist()


def test_top_p_keeps_smallest_set_reaching_mass() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = torch.isfinite(top_p_filter(probs.log(), 0.8))
    assert kept.tolist() == [True, True, False, False]
    kept = torch.isfinite(top_p_filter(probs.log(), 0.81))
    assert kept.tolist() == [True, True, True, False]
    # Tiny top_p still keeps the argmax.
    assert torch.isfinite(top_p_filter(probs.log(), 1e-6)).tolist() == [True, False, False, False]


def test_temperature_sampling_follows_the_distribution() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    params = SamplingParams(temperature=1.0, seed=123)
    counts = torch.zeros(3)
    for _ in range(2000):
        counts[sample(logits, [params])[0]] += 1
    freq = counts / counts.sum()
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.04, rtol=0)


def test_weights_roundtrip_and_mismatch(tmp_path: Path, tiny_model) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(tiny_model, path)
    again = build_model(TINY, weights=path)
    x = torch.tensor([TOK.encode("roundtrip")])
    torch.testing.assert_close(again(x), tiny_model(x), atol=0, rtol=0)
    # Same seed -> identical weights; different seed -> different.
    torch.testing.assert_close(build_model(TINY, seed=1)(x), tiny_model(x), atol=0, rtol=0)
    assert not torch.equal(build_model(TINY, seed=2)(x), tiny_model(x))
    other = build_model(TINY.__class__(d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=256))
    with pytest.raises(WeightsError, match="shape"):
        load_weights(other, path)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="cannot read"):
        build_model(TINY, weights=tmp_path / "bad.safetensors")


def test_stream_decoder_never_splits_utf8() -> None:
    ids = TOK.encode("é😀ok", add_bos=False)
    dec = StreamDecoder()
    pieces = [dec.feed(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == "é😀ok"
    assert all(p in ("", "é", "😀", "o", "k") for p in pieces)
