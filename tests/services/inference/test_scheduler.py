"""Continuous batching under budgets: equivalence, KV budget, preemption, cancellation."""

from __future__ import annotations

import threading

import pytest

from services.inference.engine import Engine
from services.inference.model.kv_cache import KVCache
from services.inference.model.tokenizer import ByteTokenizer
from services.inference.scheduler import SchedulerConfig, StepPlan
from services.inference.sequence import Sequence

TOK = ByteTokenizer()
PROMPTS = [
    "a",
    "hello world",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit",
    "é😀 unicode",
    "x" * 70,
    "The rain in Spain",
]


def make_engine(model, *, kv_tokens=4096, block_size=16, **sched) -> Engine:
    cfg = model.cfg
    cache = KVCache(
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        head_dim=cfg.head_dim,
        num_tokens=kv_tokens,
        block_size=block_size,
    )
    return Engine(model, cache, SchedulerConfig(**sched)).start()


def seqs_for(prompts, max_tokens=20, tenant="alice", klass="interactive") -> list[Sequence]:
    return [
        Sequence(
            f"{tenant}-{i}", tenant, TOK.encode(p), max_tokens=max_tokens, klass=klass, stop_at_eos=False
        )
        for i, p in enumerate(prompts)
    ]


@pytest.fixture(scope="module")
def reference(tiny_model) -> list[list[int]]:
    """Greedy outputs one request at a time, no batching, ample KV."""
    eng = make_engine(tiny_model, max_seqs=1)
    try:
        out = []
        for seq in seqs_for(PROMPTS):
            eng.run_to_completion([seq])
            out.append(seq.output)
        return out
    finally:
        eng.stop()


def test_continuous_batching_equals_one_at_a_time(tiny_model, reference) -> None:
    # Small step budget and prefill chunks: prompts are prefilled in pieces while others decode.
    eng = make_engine(tiny_model, max_seqs=8, max_step_tokens=24, prefill_chunk=16)
    sizes: list[int] = []
    eng.step_observer = lambda plan: sizes.append(len(plan.chunks))
    try:
        seqs = seqs_for(PROMPTS)
        eng.run_to_completion(seqs)
    finally:
        eng.stop()
    assert [s.output for s in seqs] == reference
    assert max(sizes) > 1  # it really batched


def test_kv_budget_is_never_exceeded_and_preemption_keeps_outputs(tiny_model, reference) -> None:
    # 128 token slots for six sequences of up to 91 tokens each: admission must hold requests
    # back and decodes must preempt; outputs must still equal the unconstrained ones.
    eng = make_engine(tiny_model, kv_tokens=128, block_size=8, max_seqs=8, max_step_tokens=64)
    violations: list[str] = []

    def check(plan: StepPlan) -> None:
        held = sum(len(s.block_table) for s in eng.scheduler.running) * eng.cache.block_size
        if held > eng.cache.capacity_tokens or eng.cache.used_tokens > eng.cache.capacity_tokens:
            violations.append(f"step {eng.step_no}: {held} held")
        for seq, n in plan.chunks:  # every token computed this step has a slot
            if len(seq.block_table) * eng.cache.block_size < seq.num_computed + n:
                violations.append(f"{seq.seq_id} computes beyond its blocks")

    eng.step_observer = check
    try:
        seqs = seqs_for(PROMPTS)
        eng.run_to_completion(seqs)
    finally:
        eng.stop()
    assert violations == []
    assert eng.kv_high_water <= 128
    assert sum(s.preemptions for s in seqs) > 0  # the budget really bit
    assert [s.output for s in seqs] == reference
    assert eng.cache.free_blocks == eng.cache.num_blocks


def test_step_token_budget_and_max_seqs_hold(tiny_model) -> None:
    eng = make_engine(tiny_model, max_seqs=3, max_step_tokens=20, prefill_chunk=8)
    plans: list[tuple[int, int]] = []
    eng.step_observer = lambda plan: plans.append((len(plan.chunks), plan.num_tokens))
    try:
        eng.run_to_completion(seqs_for(PROMPTS, max_tokens=5))
    finally:
        eng.stop()
    assert max(n for n, _ in plans) == 3
    assert max(t for _, t in plans) <= 20
    # Chunked prefill: the 71-token prompt never went in as one chunk.
    assert all(t <= 20 for _, t in plans)


class Stepper:
    """Holds the engine inside each step's observer until the test lets it go: step-exact, no sleeps.

    Invariant: when `advance(n)` returns, the engine is held at `plans[-1]`, the n-th plan after
    the one held before, and has not started it. So a command given between two `advance` calls
    is applied before the next plan is made, whatever the thread timing.
    """

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        self.plans: list[StepPlan] = []
        self._cond = threading.Condition()
        self._held = False  # the engine thread is waiting in _observe for a permit
        self._permits = 0
        eng.step_observer = self._observe

    def _observe(self, plan: StepPlan) -> None:
        with self._cond:
            self.plans.append(plan)
            self._held = True
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._permits > 0, timeout=60):
                raise TimeoutError("test never released the step")
            self._permits -= 1
            self._held = False

    def advance(self, n: int = 1) -> None:
        with self._cond:
            for _ in range(n):
                seen = len(self.plans)
                if self._held:
                    self._permits += 1
                    self._cond.notify_all()
                reached = self._cond.wait_for(lambda s=seen: len(self.plans) > s and self._held, 30)
                assert reached, "engine did not reach the step"

    def release_all(self) -> None:
        self.eng.step_observer = None
        with self._cond:
            self._permits += 1000
            self._cond.notify_all()


def test_cancel_frees_slot_and_kv_at_next_step(tiny_model) -> None:
    eng = make_engine(tiny_model, kv_tokens=256, block_size=16, max_seqs=2)
    stepper = Stepper(eng)
    long = seqs_for(["first long one", "second long one"], max_tokens=200)
    blocked = Sequence("later", "alice", TOK.encode("waiting"), max_tokens=3, stop_at_eos=False)
    done = threading.Event()
    blocked.on_event = lambda ev: done.set() if ev.kind == "finish" else None
    try:
        for s in long:
            eng.submit(s)
        stepper.advance(1)  # the step that admitted both long ones is held now
        eng.submit(blocked)
        stepper.advance(5)
        # Both slots stay busy: the same-tenant request waits, nothing preempts it in.
        assert all(blocked not in p.admitted for p in stepper.plans)
        kv_before = eng.cache.used_tokens
        eng.cancel(long[0])
        stepper.advance(1)  # cancel is applied before the next plan...
        assert blocked in stepper.plans[-1].admitted  # ...which admits the waiting one
        assert long[0].finish_reason == "cancelled" and long[0].block_table == []
        assert all(s is not long[0] for s, _ in stepper.plans[-1].chunks)
        assert eng.cache.used_tokens <= kv_before
        stepper.release_all()
        eng.cancel(long[1])
        assert done.wait(30)
    finally:
        stepper.release_all()
        eng.stop()
    assert blocked.finish_reason == "length"
    assert eng.cache.free_blocks == eng.cache.num_blocks


def test_interactive_preempts_batch_when_full(tiny_model) -> None:
    eng = make_engine(tiny_model, max_seqs=2)
    stepper = Stepper(eng)
    batch = seqs_for(["bulk one", "bulk two"], max_tokens=200, tenant="alice", klass="batch")
    inter = Sequence("urgent", "alice", TOK.encode("urgent"), max_tokens=4, stop_at_eos=False)
    done = threading.Event()
    inter.on_event = lambda ev: done.set() if ev.kind == "finish" else None
    try:
        for s in batch:
            eng.submit(s)
        stepper.advance(3)
        eng.submit(inter)
        patience = eng.scheduler.cfg.preempt_after_steps
        for _ in range(patience + 2):
            stepper.advance(1)
            if inter in stepper.plans[-1].admitted:
                break
        # Both slots hold 200-token batch generations: no normal turnover, so after its
        # patience the interactive request preempts one of them (and only then).
        assert inter in stepper.plans[-1].admitted
        assert eng.scheduler.steps - inter.queued_step >= patience
        assert [r for _, r in stepper.plans[-1].preempted] == ["priority"]
        assert all(not p.preempted for p in stepper.plans[:-1])
        stepper.release_all()
        assert done.wait(30)
    finally:
        stepper.release_all()
        for s in batch:
            eng.cancel(s)
        eng.stop()
    assert inter.finish_reason == "length"


def test_batch_class_leaves_reserved_slots_while_interactive_is_about(tiny_model) -> None:
    eng = make_engine(tiny_model, max_seqs=4, interactive_reserve=1)
    batch_running: list[int] = []
    preempted: list[str] = []

    def observe(plan: StepPlan) -> None:
        batch_running.append(sum(1 for s in eng.scheduler.running if s.klass == "batch"))
        preempted.extend(r for _, r in plan.preempted)

    eng.step_observer = observe
    try:
        inter = seqs_for(["steady interactive"], max_tokens=60)
        eng.run_to_completion(inter)  # interactive traffic seen: the reserve is in force
        batch_running.clear()
        mixed = seqs_for(PROMPTS, max_tokens=20, tenant="bob", klass="batch") + seqs_for(
            ["one", "two", "three"], max_tokens=8, tenant="alice"
        )
        eng.run_to_completion(mixed)
    finally:
        eng.stop()
    assert max(batch_running) == 3  # never the reserved 4th slot
    assert preempted == []  # interactive found room without preempting anyone


def test_batch_prefill_leaves_budget_for_waiting_interactive(tiny_model) -> None:
    # A 200-token batch prompt could take the whole 32-token budget for 7 steps in a row.
    eng = make_engine(tiny_model, max_seqs=4, max_step_tokens=32, prefill_chunk=32)
    stepper = Stepper(eng)
    bulk = Sequence("bulk", "bob", TOK.encode("b" * 199), max_tokens=4, klass="batch", stop_at_eos=False)
    inter = Sequence("urgent", "alice", TOK.encode("quick one"), max_tokens=4, stop_at_eos=False)
    done = threading.Event()
    inter.on_event = lambda ev: done.set() if ev.kind == "finish" else None
    try:
        eng.submit(bulk)
        stepper.advance(1)
        eng.submit(inter)
        stepper.advance(1)
        plan = stepper.plans[-1]
        assert inter in plan.admitted  # the very next step, not after the bulk prefill
        chunks = dict((s.seq_id, n) for s, n in plan.chunks)
        assert chunks["urgent"] == len(inter.prompt)
        assert 0 < chunks["bulk"] <= 32 - len(inter.prompt)
        stepper.release_all()
        assert done.wait(30)
    finally:
        stepper.release_all()
        eng.cancel(bulk)
        eng.stop()
