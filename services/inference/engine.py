"""The engine: one thread that owns the scheduler, the KV cache and the model runner.

Every model step runs here, off the event loop. Other threads talk to it only through
`submit`, `cancel`, `score` and `call`, which enqueue commands the loop applies between steps;
results come back through each sequence's `on_event` callback (the API layer bridges it to
asyncio with `loop.call_soon_threadsafe`). A cancel is applied before the next step is planned,
so the sequence's slot and KV blocks are free for that step.

`EngineAPI` is what the gateway, the API and admission use; `Engine` (this thread, in the
server's process) and `engine_process.ProcessEngine` (the same Engine in a child process, so
model steps never hold the server's GIL) both provide it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import math
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from libs.service.heartbeat import Heartbeat
from services.inference import metrics as m
from services.inference.admission import EngineView
from services.inference.fairness import FairQueue
from services.inference.model.hf import PagedLM
from services.inference.model.kv_cache import KVCache
from services.inference.model.tokenizer import EOS
from services.inference.model.transformer import Transformer
from services.inference.runner import ModelRunner
from services.inference.scheduler import Scheduler, SchedulerConfig, StepPlan
from services.inference.sequence import CLASSES, SeqEvent, SeqStatus, Sequence


class _LoopBridge:
    """Hands events from the engine thread to one event loop with at most one wake-up pending.

    One call_soon_threadsafe per event would write to the loop's self-pipe once per token per
    sequence; under load that wake-up traffic, and the GIL hand-offs it causes, starve the
    engine thread. Events pushed while a drain is already scheduled ride along with it.
    """

    _bridges: ClassVar[weakref.WeakKeyDictionary] = weakref.WeakKeyDictionary()  # loop -> bridge
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, SeqEvent]] = []
        self._scheduled = False

    @classmethod
    def for_running_loop(cls) -> _LoopBridge:
        loop = asyncio.get_running_loop()
        with cls._registry_lock:
            bridge = cls._bridges.get(loop)
            if bridge is None:
                bridge = cls._bridges[loop] = cls(loop)
            return bridge

    def push(self, queue: asyncio.Queue, event: SeqEvent) -> None:
        with self._lock:
            self._pending.append((queue, event))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: its consumers are gone
            pass

    def _drain(self) -> None:
        with self._lock:
            items, self._pending = self._pending, []
            self._scheduled = False
        for queue, event in items:
            queue.put_nowait(event)


@dataclass
class EngineStats:
    running: int
    waiting: int
    kv_used_tokens: int
    kv_capacity_tokens: int
    tokens_per_s: float
    backlog_tokens: dict[str, int]  # by class
    steps: int
    # Sequences each tenant had in the steps so far (slot-steps): its share of the batch over
    # a window is the difference of two readings (admin state; the fairness experiment).
    slot_steps: dict[str, int] = field(default_factory=dict)


class EngineAPI(Protocol):
    """The engine as the gateway, the API, the jobs and admission see it (thread or process)."""

    @property
    def model(self) -> Any: ...  # `.cfg`: vocab_size, max_seq_len, to_dict()

    @property
    def alive(self) -> bool: ...

    @property
    def tokens_per_s(self) -> float: ...

    def start(self) -> Any: ...

    def stop(self, timeout: float = 10.0) -> None: ...

    def submit(self, seq: Sequence) -> None: ...

    def cancel(self, seq: Sequence, reason: str = "cancelled") -> None: ...

    def abort_all(self, reason: str = "aborted") -> None: ...

    def score(self, prompt: list[int], candidates: list[list[int]]) -> concurrent.futures.Future: ...

    def stream(self, seq: Sequence) -> AsyncIterator[SeqEvent]: ...

    def stats(self) -> EngineStats: ...

    def backlog_tokens(self, klass: str) -> int: ...

    def view(self) -> EngineView: ...

    def waiting_count(self) -> int: ...


class _Beat(Protocol):
    def beat(self) -> None: ...

    def stop(self) -> None: ...


class EngineConsumers:
    """How callers consume an engine, whichever runs it (this thread, or the child process of
    engine_process.ProcessEngine): both only need `submit` and `cancel`."""

    def submit(self, seq: Sequence) -> None:
        raise NotImplementedError

    def cancel(self, seq: Sequence, reason: str = "cancelled") -> None:
        raise NotImplementedError

    async def stream(self, seq: Sequence) -> AsyncIterator[SeqEvent]:
        """Submit `seq` and yield its events on the calling event loop; cancels on exit."""
        bridge = _LoopBridge.for_running_loop()
        queue: asyncio.Queue[SeqEvent] = asyncio.Queue()
        seq.on_event = lambda ev: bridge.push(queue, ev)
        self.submit(seq)
        try:
            while True:
                ev = await queue.get()
                yield ev
                if ev.kind == "finish":
                    return
        finally:
            if seq.status is not SeqStatus.FINISHED:
                self.cancel(seq)  # consumer went away (disconnect, error): free it next step

    def run_to_completion(self, seqs: list[Sequence], timeout: float = 120.0) -> None:
        """Blocking helper for tests and benchmarks."""
        done = threading.Semaphore(0)
        for seq in seqs:
            seq.on_event = lambda ev: done.release() if ev.kind == "finish" else None
            self.submit(seq)
        deadline = time.monotonic() + timeout
        for _ in seqs:
            if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError("sequences did not finish in time")


class Engine(EngineConsumers):
    def __init__(
        self,
        model: Transformer | PagedLM,
        cache: KVCache,
        sched_cfg: SchedulerConfig | None = None,
        *,
        weights: dict[str, float] | None = None,
        prior_tokens_per_s: float = 1000.0,
        eos_ids: frozenset[int] = frozenset({EOS}),
        prefix_cache_scope: str = "tenant",
    ) -> None:
        if prefix_cache_scope not in ("tenant", "global"):
            raise ValueError(f"prefix_cache_scope must be 'tenant' or 'global', not {prefix_cache_scope!r}")
        # "tenant": a tenant's prompts hit only its own cached blocks (a hit is faster, so a
        # shared cache would tell one tenant what another sent); "global": all share.
        self.prefix_cache_scope = prefix_cache_scope
        self._evicted_seen = 0
        self.model = model
        self.eos_ids = eos_ids  # the tokenizer's end-of-sequence ids (a checkpoint may have several)
        self.cache = cache
        self.runner = ModelRunner(model, cache)
        sched_cfg = sched_cfg or SchedulerConfig()
        self.fair = FairQueue(weights, fair=sched_cfg.fair_queueing)
        self.scheduler = Scheduler(sched_cfg, cache, self.fair)
        self.step_no = 0
        self._commands: collections.deque[tuple[str, Any]] = collections.deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._live: dict[str, Sequence] = {}
        self._recent: collections.deque[tuple[int, float]] = collections.deque(maxlen=64)
        self._prior_tps = prior_tokens_per_s
        self._backlog: dict[str, int] = dict.fromkeys(CLASSES, 0)
        self._slot_steps: collections.Counter[str] = collections.Counter()
        self._submitted_since: dict[str, int] = dict.fromkeys(CLASSES, 0)
        self._dirty = False  # the live set changed since the backlog and gauges were computed
        self.kv_high_water = 0
        self.step_observer: Callable[[StepPlan], None] | None = None  # tests: per-step evidence
        self.clock: Callable[[], float] = time.monotonic  # what deadlines are read against (tests)
        # Called on the engine thread at the end of every turn of the loop that did something
        # (commands applied, a step run), with the step's plan (None: no step): the process
        # engine publishes the turn's events and a state snapshot from here.
        self.on_turn: Callable[[StepPlan | None], None] | None = None
        self.heartbeat: Callable[[], _Beat] = lambda: Heartbeat("inference", "engine")
        m.KV_CAPACITY.set(cache.capacity_tokens)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._loop, name="inference-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- commands (any thread) ---------------------------------------------------------------
    def submit(self, seq: Sequence) -> None:
        limit = min(self.model.cfg.max_seq_len, self.cache.capacity_tokens)
        if seq.max_total_tokens > limit:
            raise ValueError(f"prompt + max_tokens = {seq.max_total_tokens} exceeds {limit} tokens")
        if self.prefix_cache_scope == "tenant":
            seq.cache_salt = seq.tenant
        with self._wake:
            self._commands.append(("add", seq))
            # Counted until the loop next folds it into the measured backlog.
            self._submitted_since[seq.klass] += seq.num_tokens + seq.max_tokens
            self._wake.notify()

    def cancel(self, seq: Sequence, reason: str = "cancelled") -> None:
        """Finish `seq` at the next step with `reason` (a stop string matched: "stop")."""
        seq.cancelled = True
        self._command("cancel", (seq, reason))

    def abort_all(self, reason: str = "aborted") -> None:
        """Finish every live sequence at the next step (kill switch)."""
        self._command("abort_all", reason)

    def call(self, fn: Callable[[ModelRunner], Any]) -> concurrent.futures.Future:
        """Run fn(runner) on the engine thread between steps (scoring shares the model)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._command("call", (fn, fut))
        return fut

    def score(self, prompt: list[int], candidates: list[list[int]]) -> concurrent.futures.Future:
        """Per-token log-probs of each candidate given the prompt (ModelRunner.score), between steps."""
        return self.call(lambda runner: runner.score(prompt, candidates))

    def _command(self, kind: str, arg: Any) -> None:
        with self._wake:
            self._commands.append((kind, arg))
            self._wake.notify()

    # -- observation (any thread; values may be one step old) --------------------------------
    @property
    def tokens_per_s(self) -> float:
        recent = list(self._recent)
        busy = sum(dt for _, dt in recent)
        if busy <= 0 or sum(n for n, _ in recent) < 32:
            return self._prior_tps
        return sum(n for n, _ in recent) / busy

    def backlog_tokens(self, klass: str) -> int:
        """Tokens of work queued or running at `klass`'s priority or higher."""
        upto = CLASSES[: CLASSES.index(klass) + 1]
        return sum(self._backlog[c] + self._submitted_since[c] for c in upto)

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=len(self.fair),
            kv_used_tokens=self.cache.used_tokens,
            kv_capacity_tokens=self.cache.capacity_tokens,
            tokens_per_s=self.tokens_per_s,
            backlog_tokens={c: self.backlog_tokens(c) for c in CLASSES},
            steps=self.step_no,
            slot_steps=dict(self._slot_steps),
        )

    def view(self) -> EngineView:
        """What admission's wait estimate reads (recent steps; may be a step old)."""
        recent = list(self._recent)
        step_s = sum(dt for _, dt in recent) / len(recent) if recent else 0.0
        cfg, fair = self.scheduler.cfg, self.fair
        return EngineView(
            tokens_per_s=self.tokens_per_s,
            step_s=step_s,
            max_seqs=cfg.max_seqs,
            running=len(self.scheduler.running),
            vtime=dict(fair.vtime),
            vclock=fair.clock,
            prefill_chunk=cfg.prefill_chunk,
        )

    @property
    def live_count(self) -> int:
        """Sequences submitted and not finished (engine thread: exact; others: a step old)."""
        return len(self._live)

    def waiting_count(self) -> int:
        """Sequences waiting for a slot in the batch."""
        return len(self.fair)

    # -- the loop ------------------------------------------------------------------------------
    def _apply_commands(self) -> list[tuple[Callable[[ModelRunner], Any], concurrent.futures.Future]]:
        """Apply what was queued (under `_wake`); return the `call`s, which the loop runs after
        releasing the lock: a long scoring call must not block `submit()` (the event loop)."""
        calls = []
        while self._commands:
            kind, arg = self._commands.popleft()
            if kind == "add":
                self._dirty = True
                arg.arrival_step = self.step_no
                self._live[arg.seq_id] = arg
                self.scheduler.add(arg)
                if arg.cancelled:  # cancelled before it was ever seen
                    self._end(arg, "cancelled")
            elif kind == "cancel":
                self._end(*arg)
            elif kind == "abort_all":
                for seq in list(self._live.values()):
                    self._end(seq, arg)
            elif kind == "call":
                calls.append(arg)
        for c in CLASSES:
            self._submitted_since[c] = 0
        return calls

    def _run_calls(self, calls: list[tuple[Callable[[ModelRunner], Any], concurrent.futures.Future]]) -> None:
        for fn, fut in calls:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(self.runner))
                except BaseException as exc:  # handed to the caller, not lost
                    fut.set_exception(exc)

    def _end(self, seq: Sequence, reason: str) -> None:
        if self.scheduler.drop(seq):
            seq.finish_reason = reason
            self._finished(seq)

    def _finished(self, seq: Sequence) -> None:
        now = time.monotonic()
        seq.finished_at = now
        seq.finish_step = self.step_no
        self._live.pop(seq.seq_id, None)
        self._dirty = True
        labels = (seq.tenant, seq.klass)
        m.FINISHED.labels(seq.tenant, seq.finish_reason or "unknown").inc()
        if seq.first_token_at is not None:
            m.E2E.labels(*labels).observe(now - seq.arrival)
            if len(seq.output) > 1:
                m.TPOT.labels(*labels).observe((now - seq.first_token_at) / (len(seq.output) - 1))
        seq.emit(SeqEvent("finish", finish_reason=seq.finish_reason))

    def _expire_deadlines(self) -> None:
        """Before each step: drop what waits past its deadline; and what has waited for its
        first step past its queue deadline (its class cap, Limits.queue_timeout), counted in
        inference_queue_timeouts_total. Checked before each step is planned, so a request
        either is in a step planned by its queue deadline (first token within the cap plus
        that step, or the few steps of a prompt longer than one step prefills) or ends at the
        first turn after it (within the step then running). One preempted back into the queue
        before its first token is dropped too (nothing was sent: under 3:1 weights, fairness
        preemption took back just-started requests and their first token came up to 0.2 s past
        the cap); one that has had its first token is never dropped for it, it keeps its place
        to finish."""
        now = self.clock()
        if now <= self.fair.earliest_deadline:
            return  # nothing waiting can have expired: no walk of the queue this step
        expired: list[Sequence] = []
        timed_out: list[Sequence] = []
        earliest = math.inf
        for s in self.fair:
            if s.deadline is not None and s.deadline < now:
                expired.append(s)
                continue
            if s.queue_deadline is not None and s.first_token_at is None:
                if s.queue_deadline < now:
                    timed_out.append(s)
                    continue
                earliest = min(earliest, s.queue_deadline)
            if s.deadline is not None:
                earliest = min(earliest, s.deadline)
        self.fair.set_earliest_deadline(earliest)  # of those left; a later push lowers it
        for seq in expired:
            self._end(seq, "deadline")
        for seq in timed_out:
            m.QUEUE_TIMEOUTS.labels(seq.tenant, seq.klass).inc()
            self._end(seq, "queue_timeout")

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        heartbeat = self.heartbeat()
        while True:
            heartbeat.beat()
            with self._wake:
                while not self._commands and not self._stopping and not self._live:
                    self._wake.wait(5.0)  # wake now and then while idle: the heartbeat says we live
                    heartbeat.beat()
                if self._stopping:
                    break
                calls = self._apply_commands()
            self._run_calls(calls)
            self._expire_deadlines()
            if self._dirty:  # added or ended between steps: no stale backlog or gauges
                self._refresh()
            plan = self.scheduler.schedule()
            if not plan.chunks:
                if self.on_turn is not None:
                    self.on_turn(None)
                with self._wake:  # nothing runnable (e.g. all waiting on KV): wait for news
                    if not self._commands and not self._stopping:
                        self._wake.wait(0.01)
                continue
            self._step(plan)
            if self.on_turn is not None:
                self.on_turn(plan)
        for seq in list(self._live.values()):
            self._end(seq, "shutdown")
        self._refresh()
        if self.on_turn is not None:
            self.on_turn(None)
        heartbeat.stop()

    def _step(self, plan: StepPlan) -> None:
        t0 = time.monotonic()
        for seq in plan.admitted:
            if seq.first_scheduled is None:
                seq.first_scheduled = t0
                m.QUEUE_WAIT.labels(seq.tenant, seq.klass).observe(t0 - seq.arrival)
            if self.cache.prefix_caching:  # every admission, re-admissions after preemption too
                m.PREFIX_QUERIED_TOKENS.labels(seq.tenant).inc(seq.num_tokens)
                m.PREFIX_HIT_TOKENS.labels(seq.tenant).inc(seq.cached_tokens)
        for _seq, reason in plan.preempted:
            m.PREEMPTIONS.labels(reason).inc()
        self.kv_high_water = max(self.kv_high_water, self.cache.used_tokens)
        if self.step_observer is not None:
            self.step_observer(plan)
        try:
            sampled = self.runner.execute(plan.chunks)
        except Exception as exc:
            m.count_step_failure(exc)  # inference_oom_total / inference_step_failures_total{kind}
            # A failing step must not kill the engine: fail the sequences in it, keep serving.
            for seq, _ in list(plan.chunks):
                self._end(seq, "error")
            self._refresh()
            return
        self.step_no += 1
        now = time.monotonic()
        done = self.scheduler.commit(plan, sampled, self.eos_ids)
        # One increment per tenant and class, not per row, and before any token is handed on.
        generated = collections.Counter(
            (seq.tenant, seq.klass)
            for (seq, _), tok in zip(plan.chunks, sampled, strict=True)
            if tok is not None
        )
        for labels, n in generated.items():
            m.GENERATED_TOKENS.labels(*labels).inc(n)
        for (seq, _), tok in zip(plan.chunks, sampled, strict=True):
            self._slot_steps[seq.tenant] += 1
            if tok is None:
                continue
            if seq.first_token_at is None:
                seq.first_token_at = now
                m.TTFT.labels(seq.tenant, seq.klass).observe(now - seq.arrival)
            if seq.emit_tokens:
                seq.emit(SeqEvent("token", token=tok))
        for seq in done:
            self._finished(seq)
        dt = now - t0
        self._recent.append((plan.num_tokens, dt))
        m.BATCH_SIZE.observe(len(plan.chunks))
        m.STEP_TOKENS.observe(plan.num_tokens)
        m.STEP_SECONDS.observe(dt)
        self._refresh()

    def _refresh(self) -> None:
        """Recompute the backlog and every gauge from the live set (engine thread only).

        Called whenever the live set changes, not only after a step: sequences that end between
        steps (cancels, client disconnects, the kill switch, deadlines) must not leave a stale
        backlog behind, or admission would answer 503 "overloaded" on an idle engine forever.
        """
        self._dirty = False
        # Live = waiting + running. The queue keeps its own total (exact: it changes only on its
        # push/pop/remove, fairness.py); the running sequences are summed here, each step.
        backlog = self.fair.work_by_class()
        for seq in self.scheduler.running:
            backlog[seq.klass] += seq.pending + seq.max_tokens - len(seq.output)
        self._backlog = backlog
        m.KV_USED.set(self.cache.used_tokens)
        m.PREFIX_CACHED.set(self.cache.cached_blocks * self.cache.block_size)
        evicted = self.cache.stats.evicted_blocks
        if evicted > self._evicted_seen:
            m.PREFIX_EVICTED_BLOCKS.inc(evicted - self._evicted_seen)
            self._evicted_seen = evicted
        m.RUNNING.set(len(self.scheduler.running))
        m.WAITING.set(len(self.fair))
        m.THROUGHPUT.set(self.tokens_per_s)
