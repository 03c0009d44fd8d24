"""Failure counters the alerts read: an engine step that runs out of memory is counted as such."""

from __future__ import annotations

import torch

from services.inference import metrics as m
from services.inference.engine import Engine
from services.inference.model.kv_cache import KVCache
from services.inference.model.tokenizer import ByteTokenizer
from services.inference.scheduler import SchedulerConfig
from services.inference.sequence import Sequence


def _value(counter, *labels) -> float:
    return (counter.labels(*labels) if labels else counter)._value.get()


def test_oom_and_other_step_failures_are_told_apart() -> None:
    oom0, err0 = _value(m.STEP_FAILURES, "oom"), _value(m.STEP_FAILURES, "error")
    total0 = _value(m.OOM)
    m.count_step_failure(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    m.count_step_failure(MemoryError())
    m.count_step_failure(RuntimeError("shape mismatch"))
    assert _value(m.STEP_FAILURES, "oom") == oom0 + 2
    assert _value(m.OOM) == total0 + 2
    assert _value(m.STEP_FAILURES, "error") == err0 + 1


def test_an_engine_step_out_of_memory_fails_its_requests_and_counts(tiny_model) -> None:
    cfg = tiny_model.cfg
    cache = KVCache(
        n_layers=cfg.n_layers, n_heads=cfg.n_heads, head_dim=cfg.head_dim, num_tokens=512, block_size=16
    )
    eng = Engine(tiny_model, cache, SchedulerConfig())

    def out_of_memory(chunks):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    eng.runner.execute = out_of_memory  # type: ignore[method-assign]
    eng.start()
    before = _value(m.OOM)
    seq = Sequence("s", "alice", ByteTokenizer().encode("hello"), max_tokens=4, klass="interactive")
    try:
        eng.run_to_completion([seq])
    finally:
        eng.stop()
    assert seq.finish_reason == "error"
    assert _value(m.OOM) == before + 1
