"""Hugging Face checkpoints on the server's paged KV cache equal `transformers` itself.

Tiny random Llama (GQA), Qwen2 (q/k/v biases, tied head, one KV head) and GPT-2 checkpoints are
built locally (hf_fixtures.py); float32 logits must match transformers' forward pass for a
prefill, a cached decode and a batched ragged step mixing prefill chunks and decodes; greedy
generations through the engine (scheduler, chunked prefill, batching) equal generate().
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from services.inference.model.hf import CheckpointError, load_hf_model
from services.inference.model.kv_cache import KVCache
from services.inference.model.sampling import SamplingParams
from services.inference.model.tokenizer import HFTokenizer
from services.inference.runner import ModelRunner
from services.inference.sequence import Sequence
from tests.services.inference.hf_fixtures import build_checkpoint, load_reference

ARCHS = ["llama", "qwen2", "gpt2"]
ATOL = 1e-4


@pytest.fixture(scope="module", params=ARCHS)
def ckpt(request, tmp_path_factory):
    path = build_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    return path, load_reference(path), load_hf_model(path), HFTokenizer(path)


def _cache(model, tokens: int = 1024, block: int = 8) -> KVCache:
    c = model.cfg
    return KVCache(
        n_layers=c.n_layers, n_heads=c.n_kv_heads, head_dim=c.head_dim, num_tokens=tokens, block_size=block
    )


def _ref_logits(ref, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0].float()  # [T, V]


def _step_logits(runner: ModelRunner, chunks: list[tuple[Sequence, int]]) -> torch.Tensor:
    with torch.inference_mode():
        return runner.model.forward_step(runner.build(chunks), runner.cache)


def _seq(ids: list[int], cache: KVCache, name: str = "s") -> Sequence:
    seq = Sequence(name, "t", list(ids), max_tokens=64)
    cache.grow(seq.block_table, len(ids))
    return seq


PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Café 🙂",
    "def add(a, b):\n    return a + b\n# a longer prompt that spans several KV blocks of eight tokens",
]


def test_full_forward_and_prefill_equal_transformers(ckpt):
    _, ref, model, tok = ckpt
    ids = tok.encode(PROMPTS[0])
    want = _ref_logits(ref, ids)
    with torch.inference_mode():
        full = model(torch.tensor([ids]))[0]
    torch.testing.assert_close(full, want, atol=ATOL, rtol=0)
    cache = _cache(model)
    runner = ModelRunner(model, cache)
    seq = _seq(ids, cache)
    got = _step_logits(runner, [(seq, len(ids))])[0]
    torch.testing.assert_close(got, want[-1], atol=ATOL, rtol=0)


def test_chunked_prefill_then_cached_decode_equal_transformers(ckpt):
    _, ref, model, tok = ckpt
    ids = tok.encode(PROMPTS[2])
    want = _ref_logits(ref, ids)
    cache = _cache(model)
    runner = ModelRunner(model, cache)
    seq = _seq(ids[:7], cache)
    # Prefill 7 tokens in chunks of 3, 4, then decode the rest one token at a time from the cache.
    for n in (3, 4):
        got = _step_logits(runner, [(seq, n)])[0]
        seq.num_computed += n
        torch.testing.assert_close(got, want[seq.num_computed - 1], atol=ATOL, rtol=0)
    for p in range(7, len(ids)):
        seq.output.append(ids[p])
        cache.grow(seq.block_table, seq.num_tokens)
        got = _step_logits(runner, [(seq, 1)])[0]
        seq.num_computed += 1
        torch.testing.assert_close(got, want[p], atol=ATOL, rtol=0)


def test_batched_ragged_step_equals_transformers(ckpt):
    """Rows of different context lengths in one step: some decoding, some prefilling a chunk."""
    _, ref, model, tok = ckpt
    prompts = [tok.encode(p) for p in PROMPTS]
    wants = [_ref_logits(ref, ids) for ids in prompts]
    cache = _cache(model)
    runner = ModelRunner(model, cache)
    # Warm the caches to different depths: 5, all but one, and 11 tokens.
    depths = [5, len(prompts[1]) - 1, 11]
    seqs = [_seq(ids, cache, f"s{i}") for i, ids in enumerate(prompts)]
    for seq, d in zip(seqs, depths, strict=True):
        _step_logits(runner, [(seq, d)])
        seq.num_computed = d
    # One step: row 0 prefills 4 more, row 1 decodes its last prompt token, row 2 prefills 9.
    chunks = [(seqs[0], 4), (seqs[1], 1), (seqs[2], 9)]
    got = _step_logits(runner, chunks)
    for row, (seq, n) in enumerate(chunks):
        torch.testing.assert_close(got[row], wants[row][seq.num_computed + n - 1], atol=ATOL, rtol=0)
    # Then the decode-only path, padded to the longest context, through execute()'s grouping.
    for seq, n in chunks:
        seq.num_computed += n
    rows = [(s, 1) for s in seqs]
    for s in seqs:
        s.output.append(5)
        cache.grow(s.block_table, s.num_tokens)
    got = _step_logits(runner, rows)
    for row, s in enumerate(seqs):
        if s.num_computed + 1 != s.num_tokens:
            continue  # row 0 and 2 have not finished prefilling; only the full rows are compared
        want = _ref_logits(ref, s.tokens)[-1]
        torch.testing.assert_close(got[row], want, atol=ATOL, rtol=0)


def test_greedy_generation_through_engine_equals_generate(ckpt):
    from services.inference.engine import Engine
    from services.inference.scheduler import SchedulerConfig

    _, ref, model, tok = ckpt
    n_new = 12
    prompts = [tok.encode(p) for p in PROMPTS]
    want = []
    ref.generation_config.eos_token_id = None  # run the full n_new tokens, as the engine does
    with torch.no_grad():
        for ids in prompts:
            out = ref.generate(torch.tensor([ids]), max_new_tokens=n_new, do_sample=False)
            want.append(out[0, len(ids) :].tolist())
    cache = _cache(model, tokens=512)
    engine = Engine(model, cache, SchedulerConfig(max_step_tokens=24, max_seqs=8, prefill_chunk=8))
    engine.start()
    try:
        seqs = [
            Sequence(f"g{i}", "alice", ids, max_tokens=n_new, sampling=SamplingParams(), stop_at_eos=False)
            for i, ids in enumerate(prompts)
        ]
        engine.run_to_completion(seqs, timeout=120)
    finally:
        engine.stop()
    assert [s.output for s in seqs] == want


def test_tokenizer_reads_checkpoint_config(ckpt):
    _, _, _, tok = ckpt
    assert tok.bos_id == tok.tk.token_to_id("<s>")
    assert tok.eos_ids == {tok.tk.token_to_id("</s>"), tok.tk.token_to_id("<|im_end|>")}
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    ids = tok.encode("hello")
    assert ids[0] == tok.bos_id
    assert tok.encode("<s>hello") == ids  # a rendered template's BOS is not doubled
    assert tok.is_special(tok.bos_id)
    assert tok.decode(ids) == "hello"


@pytest.mark.parametrize("text", ["Café naïve 🙂 résumé", "plain ascii", "🙂🙂", "a\nb  c"])
def test_stream_decoder_never_splits_characters(ckpt, text):
    _, _, _, tok = ckpt
    ids = tok.encode(text, add_bos=False)
    dec = tok.stream_decoder()
    pieces = [dec.feed(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # byte tokens of a multi-byte character: at least one id gives no text on its own
    if any(ord(c) > 127 for c in text):
        assert any(tok.decode([i]).endswith("\ufffd") for i in ids)
    # token_bytes of each token concatenate to the UTF-8 text (logprobs' bytes field)
    assert bytes(b for i in ids for b in tok.token_bytes(i)) == text.encode("utf-8")


def test_bad_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_hf_model(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="not supported"):
        load_hf_model(tmp_path)


def test_bfloat16_on_cpu_tracks_float32(ckpt):
    """--dtype bfloat16: weights and KV cache in bf16, attention softmax in float32."""
    path, _, model, tok = ckpt
    ids = tok.encode(PROMPTS[2])
    half = load_hf_model(path, dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16
    with torch.inference_mode():
        want = model(torch.tensor([ids]))[0, -1]
    cache = KVCache(
        n_layers=half.cfg.n_layers,
        n_heads=half.cfg.n_kv_heads,
        head_dim=half.cfg.head_dim,
        num_tokens=256,
        block_size=8,
        dtype=torch.bfloat16,
    )
    seq = _seq(ids, cache)
    got = _step_logits(ModelRunner(half, cache), [(seq, len(ids))])[0]
    assert got.dtype == torch.float32
    assert (got - want).abs().max() < 0.1 * want.abs().max()
