"""Fairness, measured in engine steps (no clocks): a flooding tenant cannot take B's share.

Stated bounds (equal weights, max_seqs 4):
- A floods, B steady and under its share: every B request finishes within its solo latency
  plus 8 steps (its slot comes from a finishing A sequence or, after the scheduler's patience
  of 4 steps, from a fairness preemption), and
  B is served every token it asks for while A's backlog is still there.
- Both flood: each tenant's share of computed tokens is its weight share within +-0.1.
"""

from __future__ import annotations

import threading
from collections import Counter

from services.inference.engine import Engine
from services.inference.model.kv_cache import KVCache
from services.inference.model.tokenizer import ByteTokenizer
from services.inference.scheduler import SchedulerConfig, StepPlan
from services.inference.sequence import Sequence

TOK = ByteTokenizer()


def _engine(model, weights=None) -> Engine:
    cfg = model.cfg
    cache = KVCache(n_layers=cfg.n_layers, n_heads=cfg.n_heads, head_dim=cfg.head_dim, num_tokens=4096)
    return Engine(model, cache, SchedulerConfig(max_seqs=4, max_step_tokens=64), weights=weights).start()


def _seq(name: str, tenant: str, max_tokens: int) -> Sequence:
    prompt = TOK.encode(f"{tenant} says {name}")
    return Sequence(name, tenant, prompt, max_tokens=max_tokens, stop_at_eos=False)


def test_steady_tenant_keeps_latency_while_other_floods(tiny_model) -> None:
    # B alone first: its latency in steps with the engine to itself.
    eng = _engine(tiny_model)
    try:
        solo = _seq("solo", "bob", 20)
        eng.run_to_completion([solo])
        solo_steps = solo.finish_step - solo.arrival_step
    finally:
        eng.stop()

    eng = _engine(tiny_model)
    flood = [_seq(f"a{i}", "alice", 30) for i in range(40)]
    steady: list[Sequence] = []
    tokens: Counter[str] = Counter()
    all_done = threading.Semaphore(0)

    def observe(plan: StepPlan) -> None:
        for seq, n in plan.chunks:
            tokens[seq.tenant] += n
        # B arrives every 15 steps, 6 times: well under its half of the capacity.
        if eng.step_no % 15 == 5 and len(steady) < 6:
            b = _seq(f"b{len(steady)}", "bob", 20)
            b.on_event = lambda ev: all_done.release() if ev.kind == "finish" else None
            steady.append(b)
            eng.submit(b)

    eng.step_observer = observe
    try:
        eng.run_to_completion(flood, timeout=120)
        for _ in range(6):
            assert all_done.acquire(timeout=60)
    finally:
        eng.stop()
    a_last_finish = max(s.finish_step for s in flood)
    assert len(steady) == 6
    for b in steady:
        assert b.finish_reason == "length"
        assert b.finish_step < a_last_finish  # B really overlapped A's flood
        latency = b.finish_step - b.arrival_step
        assert latency <= solo_steps + 8, (latency, solo_steps)
    # Every B token was computed (the last sampled token never needs a forward pass).
    assert tokens["bob"] == sum(len(b.prompt) + 19 for b in steady)
    assert sum(s.preemptions for s in flood) >= 1  # A was made room for, not B made to wait


def _both_flood(model, weights: dict[str, float]) -> float:
    eng = _engine(model, weights)
    per_step: list[Counter[str]] = []

    def observe(plan: StepPlan) -> None:
        c: Counter[str] = Counter()
        for seq, n in plan.chunks:
            c[seq.tenant] += n
        per_step.append(c)

    eng.step_observer = observe
    seqs = [_seq(f"{t}{i}", t, 24) for i in range(24) for t in ("alice", "bob")]
    try:
        eng.run_to_completion(seqs, timeout=120)
    finally:
        eng.stop()
    # Contention window: until the first tenant's work is all done.
    end = min(max(s.finish_step for s in seqs if s.tenant == t) for t in ("alice", "bob"))
    window = per_step[:end]
    bob = sum(c["bob"] for c in window)
    total = sum(sum(c.values()) for c in window)
    return bob / total


def test_token_share_follows_weights_when_both_flood(tiny_model) -> None:
    assert abs(_both_flood(tiny_model, {"alice": 1.0, "bob": 1.0}) - 0.5) <= 0.1
    assert abs(_both_flood(tiny_model, {"alice": 1.0, "bob": 3.0}) - 0.75) <= 0.1


def test_without_fair_queueing_the_flood_goes_first(tiny_model) -> None:
    """The experiments' baseline (`--no-fair-queueing`): FIFO across tenants, no slot shares, so a
    request of B that arrives behind A's backlog waits for all of it (what WFQ prevents above)."""
    cfg = tiny_model.cfg
    cache = KVCache(n_layers=cfg.n_layers, n_heads=cfg.n_heads, head_dim=cfg.head_dim, num_tokens=4096)
    eng = Engine(tiny_model, cache, SchedulerConfig(max_seqs=4, max_step_tokens=64, fair_queueing=False))
    eng.start()
    flood = [_seq(f"a{i}", "alice", 30) for i in range(12)]
    late: list[Sequence] = []
    done = threading.Event()

    def observe(plan: StepPlan) -> None:
        if eng.step_no == 5 and not late:
            b = _seq("b0", "bob", 20)
            b.on_event = lambda ev: done.set() if ev.kind == "finish" else None
            late.append(b)
            eng.submit(b)

    eng.step_observer = observe
    try:
        eng.run_to_completion(flood, timeout=120)
        assert done.wait(timeout=60)
    finally:
        eng.stop()
    (b,) = late
    # Every A sequence queued before B was admitted before it: B finishes after all but the
    # last batch of A's, and no A sequence was ever preempted to make room for B.
    assert sum(a.finish_step < b.finish_step for a in flood) >= len(flood) - 4
    assert sum(a.preemptions for a in flood) == 0
