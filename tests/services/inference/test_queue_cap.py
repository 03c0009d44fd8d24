"""The class cap is a promise the server keeps: an admitted request has its first step within its
class's cap (its first token within the cap plus that step), or gets 503 queue_timeout with
Retry-After at the cap, counted in inference_queue_timeouts_total{tenant, class}.

Deterministic: the engine's deadline clock is the test's (Engine.clock) and every engine step
is held until the test lets it go, so "before the cap" and "past the cap" are clock readings
the test sets between two steps, never real time.

The fairness experiment found admitted interactive requests waiting up to 3.2 s for their first
token against the 0.35 s cap (the wait estimate's p95 error is as large as the cap), while the
engine only dropped them after max(5 s, 2.5 x the cap).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import REGISTRY

from services.inference.admission import EngineView, Limits, WaitModel, hash_key
from services.inference.engine import Engine
from services.inference.model.kv_cache import KVCache
from services.inference.model.tokenizer import ByteTokenizer
from services.inference.scheduler import SchedulerConfig, StepPlan
from services.inference.sequence import SeqEvent, SeqStatus, Sequence
from services.inference.settings import InferenceSettings

from .conftest import LiveServer

TOK = ByteTokenizer()
CAP = 0.35
T0 = 1000.0


class HeldSteps:
    """An engine step observer: each step waits until the test lets it go (bounded), and the
    test can wait until the engine has reached step n (so it has run that turn's deadline
    check and planned that step)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.reached = 0
        self.allowed = 0

    def __call__(self, plan: StepPlan) -> None:
        with self.cond:
            self.reached += 1
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: self.allowed >= self.reached, timeout=60):
                raise TimeoutError("the test never let this step go")

    def wait_reached(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.reached >= n, timeout=60), f"step {n} never came"

    def release(self, n: int = 1) -> None:
        with self.cond:
            self.allowed += n
            self.cond.notify_all()

    def release_all(self) -> None:
        self.release(10**9)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _timeouts(tenant: str, klass: str) -> float:
    value = REGISTRY.get_sample_value("inference_queue_timeouts_total", {"tenant": tenant, "class": klass})
    return value or 0.0


def _seq(
    name: str, tenant: str, max_tokens: int, klass: str = "interactive", queue_deadline: float | None = None
) -> tuple[Sequence, threading.Event]:
    """A sequence, and an event set when it finishes."""
    prompt = TOK.encode(f"{tenant} {name}")
    seq = Sequence(name, tenant, prompt, max_tokens, klass=klass, stop_at_eos=False)
    seq.queue_deadline = queue_deadline
    finished = threading.Event()

    def on_event(ev: SeqEvent) -> None:
        if ev.kind == "finish":
            finished.set()

    seq.on_event = on_event
    return seq, finished


@contextlib.contextmanager
def _held_engine(model, max_step_tokens: int) -> Iterator[tuple[Engine, HeldSteps, Clock]]:
    cfg = model.cfg
    cache = KVCache(n_layers=cfg.n_layers, n_heads=cfg.n_heads, head_dim=cfg.head_dim, num_tokens=2048)
    eng = Engine(model, cache, SchedulerConfig(max_seqs=1, max_step_tokens=max_step_tokens))
    held, clock = HeldSteps(), Clock(T0)
    eng.step_observer = held
    eng.clock = clock
    eng.start()
    try:
        yield eng, held, clock
    finally:
        held.release_all()
        eng.stop()


@pytest.fixture
def engine(tiny_model) -> Iterator[tuple[Engine, HeldSteps, Clock]]:
    with _held_engine(tiny_model, 64) as held:
        yield held


def test_the_default_queue_timeout_is_the_class_cap() -> None:
    limits = InferenceSettings().limits()
    assert limits.queue_timeout("interactive") == limits.queue_wait_limit("interactive") == CAP
    assert limits.queue_timeout("batch") == limits.queue_wait_limit("batch") == 8.0
    old = InferenceSettings(queue_timeout_factor=2.5, queue_timeout_min=5.0).limits()
    assert (old.queue_timeout("interactive"), old.queue_timeout("batch")) == (5.0, 20.0)
    assert Limits(queue_timeout_factor=2.0).queue_timeout("interactive") == 2 * CAP


def test_a_request_still_waiting_at_its_cap_is_dropped_then_and_counted(engine) -> None:
    eng, held, clock = engine
    before = _timeouts("w", "interactive")
    hog, hog_done = _seq("hog", "h", 40)
    eng.submit(hog)
    held.wait_reached(1)  # the hog holds the one slot
    waiter, waiter_done = _seq("waiter", "w", 4, queue_deadline=T0 + CAP)
    eng.submit(waiter)
    # At the cap exactly: still waiting, not dropped.
    clock.now = T0 + CAP
    held.release()
    held.wait_reached(2)  # that turn took the waiter in and checked its deadline
    assert waiter.status is SeqStatus.WAITING and waiter.finish_reason is None
    assert _timeouts("w", "interactive") == before
    # Past it: dropped at the next turn, before the next step, with nothing generated.
    clock.now = T0 + CAP + 1e-6
    held.release()
    held.wait_reached(3)
    assert waiter_done.wait(10)
    assert waiter.finish_reason == "queue_timeout"
    assert waiter.output == [] and waiter.first_scheduled is None
    assert _timeouts("w", "interactive") == before + 1
    assert _timeouts("h", "interactive") == 0
    assert hog.status is SeqStatus.RUNNING  # the hog, past its own cap long ago, runs on
    held.release_all()
    assert hog_done.wait(30)
    assert hog.finish_reason == "length"


def test_a_request_with_its_first_token_is_never_dropped_for_its_cap(engine) -> None:
    """Even when it is preempted back into the queue after its cap (priority): it keeps its
    place and finishes."""
    eng, held, clock = engine
    before = _timeouts("b", "batch")
    batch, batch_done = _seq("batch", "b", 12, klass="batch", queue_deadline=T0 + CAP)
    eng.submit(batch)
    held.wait_reached(1)  # its first step, planned at T0: in time
    assert batch.first_scheduled is not None
    clock.now = T0 + 100 * CAP  # every later turn reads a clock far past its cap
    urgent, urgent_done = _seq("urgent", "i", 3)
    eng.submit(urgent)
    held.release_all()
    assert urgent_done.wait(30)
    assert batch_done.wait(30)
    assert batch.preemptions >= 1  # it did wait in the queue again, past its cap
    assert (urgent.finish_reason, batch.finish_reason) == ("length", "length")
    assert len(batch.output) == 12
    assert _timeouts("b", "batch") == before


def test_a_request_preempted_before_its_first_token_is_dropped_past_its_cap(tiny_model) -> None:
    """Its first step came in time, but its prompt takes several steps (16 tokens a step) and
    a higher class takes its slot before its first token: back in the queue past its cap, it
    is dropped (nothing was sent)."""
    with _held_engine(tiny_model, 16) as (eng, held, clock):
        before = _timeouts("lp", "batch")
        long, long_done = _seq("long " + "x" * 150, "lp", 4, klass="batch", queue_deadline=T0 + CAP)
        eng.submit(long)
        held.wait_reached(1)  # its first prefill chunk, planned in time
        assert long.first_scheduled is not None
        clock.now = T0 + 10 * CAP
        urgent, urgent_done = _seq("urgent", "i", 3)
        eng.submit(urgent)
        held.release_all()
        assert long_done.wait(30)
        assert urgent_done.wait(30)
        assert long.preemptions == 1 and long.output == []
        assert (long.finish_reason, urgent.finish_reason) == ("queue_timeout", "length")
        assert _timeouts("lp", "batch") == before + 1


TENANTS = {"qc": {"key_sha256": hash_key("k-qc")}}
AUTH = {"Authorization": "Bearer k-qc"}
SERVER_CAP = 60.0  # far above any real wait in this test: only the engine's skewed clock passes it


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    s = LiveServer(tenants=TENANTS, max_seqs=1, max_queue_wait_interactive=SERVER_CAP)
    yield s
    s.stop()


_Queued = tuple[Engine, HeldSteps, list[float], list[httpx.Response]]


@contextlib.contextmanager
def _queued_behind_a_hog(server: LiveServer) -> Iterator[_Queued]:
    """A long request (the hog) takes the engine's one slot, held step by step; a short one is
    admitted and waits for a first step. Yields the engine, its held steps, the skew of the
    engine's clock (seconds to add) and the short request's answer once it comes; on leaving,
    every step is released, both requests end and the engine's clock and observer are reset."""
    eng = server.runtime.engine
    assert isinstance(eng, Engine)
    skew = [0.0]
    held = HeldSteps()
    eng.clock = lambda: time.monotonic() + skew[0]
    eng.step_observer = held
    answer: list[httpx.Response] = []
    hold = {"prompt": "hold on", "max_tokens": 30, "ignore_eos": True}
    threads: list[threading.Thread] = []
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            hogger = threading.Thread(target=lambda: c.post("/v1/completions", json=hold, headers=AUTH))
            threads.append(hogger)
            hogger.start()
            held.wait_reached(1)  # the one slot is taken
            body = {"prompt": "x", "max_tokens": 4}
            sender = threading.Thread(
                target=lambda: answer.append(c.post("/v1/completions", json=body, headers=AUTH))
            )
            threads.append(sender)
            sender.start()
            deadline = time.monotonic() + 30
            while eng.waiting_count() + len(eng._commands) == 0:  # admitted, handed to the engine
                assert time.monotonic() < deadline, "the request never reached the engine"
                time.sleep(0.005)
            try:
                yield eng, held, skew, answer
            finally:
                held.release_all()
                for t in reversed(threads):
                    t.join(30)
    finally:
        held.release_all()
        eng.step_observer = None
        eng.clock = time.monotonic


def test_over_http_the_request_gets_503_queue_timeout_at_its_cap(server: LiveServer) -> None:
    before = _timeouts("qc", "interactive")
    with _queued_behind_a_hog(server) as (eng, held, skew, answer):
        # Half the cap later (by the engine's clock): it waits on.
        skew[0] = SERVER_CAP / 2
        n = held.reached
        held.release()
        held.wait_reached(n + 1)
        assert not answer and eng.waiting_count() == 1
        # Past the cap: 503 queue_timeout at the next turn.
        skew[0] = SERVER_CAP + 1
    assert answer, "no answer"
    r = answer[0]
    assert r.status_code == 503, r.text
    assert "queue timeout" in r.json()["error"]["message"]
    assert "retry-after" in r.headers
    assert _timeouts("qc", "interactive") == before + 1
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'inference_queue_timeouts_total{class="interactive",tenant="qc"}' in metrics


STEP_S = 10.0  # the pinned engine view's step time once the request is admitted


def test_the_queue_timeout_answer_says_when_the_estimate_is_back_under_the_cap(server: LiveServer) -> None:
    """Retry-After for queue_timeout is the tenant's estimate now (the drop in its calibration)
    past the cap, as for a request shed on arrival, not a fixed 5 s. The engine is held on the
    step after the drop while the answer is made and read, so the hog's steps left are fixed:
    at its share of the one slot, a retry waits for the hog to finish, (1 + left) steps (its
    steps left scaled by the tenant's factor, which the drop raised), less where admission
    aims (the cap less its headroom)."""
    adm = server.runtime.admission
    real_view = adm.engine_view
    try:
        with _queued_behind_a_hog(server) as (eng, held, skew, answer):
            view = EngineView(tokens_per_s=1000.0, step_s=STEP_S, max_seqs=1, running=1)
            adm.engine_view = lambda: view
            skew[0] = SERVER_CAP + 1
            held.release()  # the step under way ends; the next turn drops it, then its step waits
            deadline = time.monotonic() + 30
            while not answer:
                assert time.monotonic() < deadline, "no answer"
                time.sleep(0.005)
            (hog,) = eng._live.values()
            left = hog.max_tokens - len(hog.output)
            cal = adm.wait_model.calibration["interactive"]
            assert cal.dropped >= 1
            margin = min(adm.wait_model._margin(cal), SERVER_CAP / 2)
            # The drop raised the tenant's factor (on the hog's steps left), by ALPHA x the
            # factor's range at most.
            factor = cal.factors.get("qc", 1.0)
            assert factor <= 1.0 + WaitModel.ALPHA * WaitModel.FACTOR_RANGE[1]
            aim = SERVER_CAP * (1 - adm.limits.admission_headroom)
    finally:
        adm.engine_view = real_view
    r = answer[0]
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "queue_timeout"
    expected = STEP_S * (1 + factor * left) + margin - aim
    assert expected > 5  # the old fixed figure
    assert r.headers["retry-after"] == str(math.ceil(expected))
