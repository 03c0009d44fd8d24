"""The engine in its own process, so model steps never hold the HTTP/gRPC server's GIL.

`ProcessEngine` has the interface of `engine.Engine` (`EngineAPI`) and runs that same Engine
in a child process started with the "spawn" method (never fork: the server has threads and
torch state by then). The child builds the model, the KV cache and the Engine from the
settings itself; the server keeps the tokenizer.

    server process                                  engine process (spawned)
    submit / cancel / abort_all / score  ──Pipe──>  reader thread -> Engine commands
      (queued; one sender thread writes)            Engine thread: scheduler, KV cache, steps
    reader thread  <──Pipe──  one message per engine turn: every sequence it changed (new
      (apply to the Sequences, hand events to        tokens, log-probs, status, timings,
       the loop: one wake-up per turn)               finish) + a state snapshot (EngineView,
                                                     EngineStats) for admission
                   <──Pipe──  metrics thread: the Engine's Prometheus families (its
                              ENGINE_REGISTRY) every 0.5 s when they changed, at once when idle

Admission never waits on the child: it reads the latest snapshot, plus the submissions the
child has not acknowledged yet (so a burst is counted before the child sees it).

If the engine process dies (a crash, the OOM killer, kill -9) `alive` turns false (/readyz
answers 503), every in-flight request ends at once with reason "error" (a 500, or a stream's
last chunk with finish_reason "error"), new requests get 503 + Retry-After, and this server
starts a new engine process (backoff 0.5 s doubling to 30 s while starts keep failing). The
server restarts the engine rather than exiting for the supervisor (deploy/launch.py) to
restart the whole service: only the model has to load again; the HTTP and gRPC listeners,
the embedding model (about 10 s to load), the jobs and admission's state all stay.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import itertools
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from libs.service.heartbeat import HEARTBEAT
from libs.service.logging import get_logger
from services.inference import metrics as m
from services.inference.admission import EngineView
from services.inference.engine import Engine, EngineConsumers, EngineStats
from services.inference.errors import Overloaded
from services.inference.model.sampling import SamplingParams
from services.inference.scheduler import StepPlan
from services.inference.sequence import CLASSES, SeqEvent, SeqStatus, Sequence

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from services.inference.settings import InferenceSettings

log = get_logger("services.inference.engine_process")

START_METHOD = "spawn"
METRICS_PERIOD_S = 0.5  # metrics snapshots while busy (at once when the engine goes idle)
METRICS_MIN_GAP_S = 0.05
HEARTBEAT_PERIOD_S = 5.0  # a snapshot at least this often, so the heartbeat gauge moves
RESTART_BASE_S = 0.5
RESTART_MAX_S = 30.0
RESTART_RESET_AFTER_S = 10.0  # a child that stayed up this long: the backoff starts over
START_TIMEOUT_S = 600.0  # a large checkpoint on a slow disk


class EngineStartError(RuntimeError):
    """The engine process could not start (its message says why: a bad checkpoint, ...)."""


def engine_threads(settings: InferenceSettings) -> int:
    """Torch intra-op threads in the engine process: the setting, else every core but one (the
    server's event loop keeps one; on a 2-core box the engine gets 1)."""
    if settings.torch_threads > 0:
        return settings.torch_threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


# -- the child ------------------------------------------------------------------------------------
# Messages, parent -> child: a list of commands per send:
#   ("submit", spec) | ("cancel", seq_id, reason) | ("abort_all", reason)
#   | ("score", call_id, prompt, candidates) | ("stop",)
# child -> parent:
#   ("ready", model_cfg, kv_capacity_tokens, pid) | ("failed", message)
#   | ("turn", [update, ...], snapshot | None) | ("result", call_id, ok, value)
#   | ("metrics", [Metric, ...], heartbeat_unix_time)
# update = (seq_id, new_tokens, new_logprob_records, status, num_computed, cached_tokens,
#           preemptions, first_scheduled, first_token_at, finished_at, finish_step, finish_reason)
#           finish_reason is not None only in the sequence's last update.
# snapshot = (EngineView, EngineStats, submissions received)


def _spec(seq: Sequence) -> tuple[Any, ...]:
    sp = seq.sampling
    return (
        seq.seq_id,
        seq.tenant,
        seq.prompt,
        seq.max_tokens,
        seq.klass,
        seq.stop_at_eos,
        seq.deadline,
        seq.queue_deadline,
        seq.arrival,
        (sp.temperature, sp.top_p, sp.seed, sp.presence_penalty, sp.frequency_penalty, sp.logprobs),
    )


def _from_spec(spec: tuple[Any, ...]) -> Sequence:
    seq_id, tenant, prompt, max_tokens, klass, stop_at_eos, deadline, queue_deadline, arrival, sp = spec
    temperature, top_p, seed, presence, frequency, logprobs = sp
    return Sequence(
        seq_id=seq_id,
        tenant=tenant,
        prompt=prompt,
        max_tokens=max_tokens,
        sampling=SamplingParams(
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            presence_penalty=presence,
            frequency_penalty=frequency,
            logprobs=logprobs,
        ),
        klass=klass,
        stop_at_eos=stop_at_eos,
        deadline=deadline,
        queue_deadline=queue_deadline,
        emit_tokens=False,  # the child reports output by diff each turn; only finishes are events
        arrival=arrival,
    )


class _ChildBeat:
    """The engine loop's heartbeat in the child: a timestamp the metrics thread sends."""

    def __init__(self) -> None:
        self.ts = time.time()

    def beat(self) -> None:
        self.ts = time.time()

    def stop(self) -> None:
        pass


class _Child:
    def __init__(self, conn: Connection, engine: Engine) -> None:
        self.conn = conn
        self.engine = engine
        self.send_lock = threading.Lock()
        self.seqs: dict[str, Sequence] = {}  # submitted, not yet reported finished
        self.sent: dict[str, tuple[int, int]] = {}  # seq_id -> (output tokens, log-prob records) sent
        self.ended: list[Sequence] = []  # finished since the last turn (engine thread)
        self.received = 0  # submissions received
        self._sent_received = -1
        self.changes = 0  # turns published (the metrics thread sends when it moved)
        self.metrics_due = threading.Event()
        self.done = threading.Event()
        self.beat = _ChildBeat()
        engine.on_turn = self.on_turn
        engine.heartbeat = self._heartbeat

    def _heartbeat(self) -> _ChildBeat:
        return self.beat

    def send(self, msg: Any) -> None:
        with self.send_lock:
            try:
                self.conn.send(msg)
            except (OSError, ValueError):  # the server is gone; the reader sees EOF and stops us
                self.done.set()

    # engine thread
    def _on_event(self, ev: SeqEvent) -> None:
        if ev.kind == "finish" and ev.seq is not None:
            self.ended.append(ev.seq)

    def on_turn(self, plan: StepPlan | None) -> None:
        touched: dict[str, Sequence] = {}
        if plan is not None:
            for seq, _ in plan.chunks:
                touched[seq.seq_id] = seq
            for seq, _ in plan.preempted:
                touched[seq.seq_id] = seq
        if self.ended:
            ended, self.ended = self.ended, []
            for seq in ended:
                touched[seq.seq_id] = seq
        if not touched and plan is None and self.received == self._sent_received:
            return
        updates = []
        for sid, seq in touched.items():
            n_out, n_rec = self.sent.get(sid, (0, 0))
            out, rec = seq.output, seq.sampling.recorded
            finished = seq.status is SeqStatus.FINISHED
            updates.append(
                (
                    sid,
                    out[n_out:],
                    rec[n_rec:],
                    seq.status.value,
                    seq.num_computed,
                    seq.cached_tokens,
                    seq.preemptions,
                    seq.first_scheduled,
                    seq.first_token_at,
                    seq.finished_at,
                    seq.finish_step,
                    (seq.finish_reason or "error") if finished else None,
                )
            )
            if finished:
                self.sent.pop(sid, None)
                self.seqs.pop(sid, None)
            else:
                self.sent[sid] = (len(out), len(rec))
        received = self.received
        self._sent_received = received
        snapshot = (self.engine.view(), self.engine.stats(), received)
        self.send(("turn", updates, snapshot))
        self.changes += 1
        if self.engine.live_count == 0:
            self.metrics_due.set()  # idle: let /metrics show the final state now

    # reader thread
    def apply(self, batch: list[tuple[Any, ...]]) -> bool:
        for cmd in batch:
            kind = cmd[0]
            if kind == "submit":
                seq = _from_spec(cmd[1])
                seq.on_event = self._on_event
                self.seqs[seq.seq_id] = seq
                try:
                    self.engine.submit(seq)
                except ValueError:  # the server checks the same limit first; defensive
                    self.seqs.pop(seq.seq_id, None)
                    now = time.monotonic()
                    self.send(
                        (
                            "turn",
                            [(seq.seq_id, [], [], "finished", 0, 0, 0, None, None, now, 0, "error")],
                            None,
                        )
                    )
                self.received += 1
            elif kind == "cancel":
                found = self.seqs.get(cmd[1])
                if found is not None:
                    self.engine.cancel(found, cmd[2])
            elif kind == "abort_all":
                self.engine.abort_all(cmd[1])
            elif kind == "score":
                call_id = cmd[1]
                fut = self.engine.score(cmd[2], cmd[3])
                fut.add_done_callback(functools.partial(self._reply, call_id))
            elif kind == "stop":
                return True
        return False

    def _reply(self, call_id: int, fut: concurrent.futures.Future) -> None:
        exc = fut.exception()
        if exc is None:
            self.send(("result", call_id, True, fut.result()))
        else:
            self.send(("result", call_id, False, f"{type(exc).__name__}: {exc}"))

    # metrics thread
    def metrics_loop(self) -> None:
        sent_changes, sent_at = -1, 0.0
        while not self.done.is_set():
            self.metrics_due.wait(METRICS_PERIOD_S)
            self.metrics_due.clear()
            now = time.monotonic()
            if now - sent_at < METRICS_MIN_GAP_S:
                self.done.wait(METRICS_MIN_GAP_S - (now - sent_at))
            if self.changes == sent_changes and time.monotonic() - sent_at < HEARTBEAT_PERIOD_S:
                continue
            sent_changes = self.changes
            self.send_metrics()
            sent_at = time.monotonic()

    def send_metrics(self) -> None:
        self.send(("metrics", list(m.ENGINE_REGISTRY.collect()), self.beat.ts))

    def run(self) -> None:
        self.send(("ready", self.engine.model.cfg, self.engine.cache.capacity_tokens, os.getpid()))
        self.engine.start()
        metrics = threading.Thread(target=self.metrics_loop, name="engine-metrics", daemon=True)
        metrics.start()
        try:
            while not self.done.is_set():
                try:
                    batch = self.conn.recv()
                except (EOFError, OSError):  # the server is gone: nothing to serve
                    break
                if self.apply(batch):
                    break
        finally:
            self.engine.stop()  # ends what still runs ("shutdown"); the last turn reports it
            self.done.set()
            self.send_metrics()
            metrics.join(2)
            self.conn.close()


def _child_main(conn: Connection, settings: InferenceSettings, eos_ids: frozenset[int]) -> None:
    """The engine process: build the model and the engine from the settings, then serve."""
    # Ctrl-C reaches the whole process group: the server stops us through the pipe instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if settings.engine_nice:
        os.nice(settings.engine_nice)
    from libs.service.logging import configure_logging

    configure_logging(service="inference", level=settings.log_level)
    try:
        import torch

        torch.set_num_threads(engine_threads(settings))
        from services.inference.app import build_engine, load_model, pick_device

        device, dtype = pick_device(settings)
        model = load_model(settings, device, dtype)
        engine = build_engine(settings, model, eos_ids, device, dtype)
    except Exception as exc:  # told to the server, which reports it as a start-up error
        conn.send(("failed", str(exc) or type(exc).__name__))
        conn.close()
        return
    log.info(
        "engine process ready",
        extra={"pid": os.getpid(), "device": device, "threads": torch.get_num_threads()},
    )
    _Child(conn, engine).run()


# -- the server's side ----------------------------------------------------------------------------
class _ModelInfo:
    """What the server reads of the model: its config (vocab_size, max_seq_len, to_dict())."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg


def _empty_snapshot(
    max_seqs: int, prefill_chunk: int, capacity: int, tps: float
) -> tuple[EngineView, EngineStats]:
    return (
        EngineView(tokens_per_s=tps, max_seqs=max_seqs, prefill_chunk=prefill_chunk),
        EngineStats(
            running=0,
            waiting=0,
            kv_used_tokens=0,
            kv_capacity_tokens=capacity,
            tokens_per_s=tps,
            backlog_tokens=dict.fromkeys(CLASSES, 0),
            steps=0,
        ),
    )


class ProcessEngine(EngineConsumers):
    """`Engine`'s interface, with the Engine running in a child process (see the module doc)."""

    def __init__(
        self,
        settings: InferenceSettings,
        model_cfg: Any,
        *,
        eos_ids: frozenset[int],
        restart: bool = True,
        start_method: str = START_METHOD,
        prior_tokens_per_s: float = 1000.0,
    ) -> None:
        import multiprocessing

        self.settings = settings
        self.model = _ModelInfo(model_cfg)
        self.eos_ids = eos_ids
        self.restart = restart
        self.restart_base_s = RESTART_BASE_S  # first restart delay; doubles while starts fail
        self._ctx: Any = multiprocessing.get_context(start_method)
        self._capacity = settings.kv_cache_tokens // settings.kv_block_size * settings.kv_block_size
        self._prior_tps = prior_tokens_per_s
        self._lock = threading.Lock()
        self._out_cv = threading.Condition(self._lock)
        self._outbox: list[tuple[Any, ...]] = []
        self._seqs: dict[str, Sequence] = {}  # submitted to the current child, not finished
        # seq_id -> (loop, queue) of the `stream` consuming it: the reader hands each turn's
        # updates for them to their loop in one call, which applies them there (see _read)
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._calls: dict[int, concurrent.futures.Future] = {}
        self._call_ids = itertools.count()
        self._submits = 0
        self._pending: collections.deque[tuple[int, str, int]] = collections.deque()  # (no, class, tokens)
        self._view, self._stats = self._empty()
        self._families: list[Metric] = []
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._ready = False
        self._started = False
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.pid: int | None = None  # the engine process's (tests, drills)
        self.restarts = 0
        self.generation = 0  # engine processes started so far
        self.started_event = threading.Event()  # set each time an engine process is ready

    def _empty(self) -> tuple[EngineView, EngineStats]:
        s = self.settings
        return _empty_snapshot(s.max_seqs, s.prefill_chunk, self._capacity, self._prior_tps)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ProcessEngine:
        """Start the engine process and wait until its model is loaded (EngineStartError if it
        cannot start). Idempotent."""
        if self._started:
            return self
        self._launch()
        self._started = True
        m.ENGINE_METRICS.source = self._metric_families
        for target, name in ((self._send_loop, "engine-sender"), (self._supervise, "engine-reader")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _launch(self) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_child_main,
            args=(child_conn, self.settings, self.eos_ids),
            name="inference-engine",
            daemon=True,  # never outlives the server (multiprocessing's exit handler ends it)
        )
        proc.start()
        child_conn.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                if parent_conn.poll(0.2):
                    msg = parent_conn.recv()
                    if msg[0] == "ready":
                        break
                    if msg[0] == "failed":
                        raise EngineStartError(msg[1])
                elif not proc.is_alive():
                    raise EngineStartError(f"the engine process exited ({proc.exitcode}) while starting")
                elif self._stopping.is_set() or time.monotonic() > deadline:
                    raise EngineStartError("the engine process did not start in time")
        except (EngineStartError, EOFError, OSError) as exc:
            parent_conn.close()
            proc.kill()
            proc.join(5)
            if isinstance(exc, EngineStartError):
                raise
            raise EngineStartError(f"the engine process exited ({proc.exitcode}) while starting") from None
        _, cfg, capacity, pid = msg
        with self._lock:
            self.model = _ModelInfo(cfg)
            self._capacity = capacity
            self._view, self._stats = self._empty()
            self._proc, self._conn, self.pid = proc, parent_conn, pid
            self._submits = 0  # the new child counts the submissions it receives from 0
            self._pending.clear()
            self.generation += 1
            self._ready = True
        self.started_event.set()
        log.info("engine process started", extra={"pid": pid, "generation": self.generation})

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._lock:
            self._outbox.append(("stop",))
            self._out_cv.notify()
            proc = self._proc
        if proc is not None:
            proc.join(timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        for t in self._threads:
            t.join(timeout)
        with self._lock:
            self._ready = False
            self._out_cv.notify_all()
        self._fail_all("shutdown")
        if m.ENGINE_METRICS.source == self._metric_families:
            m.ENGINE_METRICS.source = None
        try:
            HEARTBEAT.remove("inference", "engine")
        except KeyError:
            pass

    @property
    def alive(self) -> bool:
        proc = self._proc
        return self._ready and proc is not None and proc.is_alive()

    # -- commands (any thread) ---------------------------------------------------------------
    def _put(self, cmd: tuple[Any, ...]) -> None:  # under self._lock
        self._outbox.append(cmd)
        if len(self._outbox) == 1:
            self._out_cv.notify()

    def submit(self, seq: Sequence) -> None:
        limit = min(self.model.cfg.max_seq_len, self._capacity)
        if seq.max_total_tokens > limit:
            raise ValueError(f"prompt + max_tokens = {seq.max_total_tokens} exceeds {limit} tokens")
        spec = _spec(seq)
        with self._lock:
            if not self._ready:
                raise Overloaded("the engine process is restarting", "engine_restart", 2)
            self._seqs[seq.seq_id] = seq
            self._submits += 1
            self._pending.append((self._submits, seq.klass, seq.num_tokens + seq.max_tokens))
            self._put(("submit", spec))

    def cancel(self, seq: Sequence, reason: str = "cancelled") -> None:
        seq.cancelled = True
        with self._lock:
            if self._ready and seq.seq_id in self._seqs:
                self._put(("cancel", seq.seq_id, reason))

    def abort_all(self, reason: str = "aborted") -> None:
        with self._lock:
            if self._ready:
                self._put(("abort_all", reason))

    def score(self, prompt: list[int], candidates: list[list[int]]) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if not self._ready:
                fut.set_exception(Overloaded("the engine process is restarting", "engine_restart", 2))
                return fut
            call_id = next(self._call_ids)
            self._calls[call_id] = fut
            self._put(("score", call_id, prompt, candidates))
        return fut

    async def stream(self, seq: Sequence) -> AsyncIterator[SeqEvent]:
        """`EngineConsumers.stream`, fed in batches: the reader thread hands each turn's updates
        for this loop's streams over in one call_soon_threadsafe, and they are applied here, on
        the loop; the queue carries one item per sequence per turn (a list of new tokens, or an
        event), not one per token."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[int] | SeqEvent] = asyncio.Queue()

        def from_thread(ev: SeqEvent) -> None:  # _fail_all (the child died), from the reader
            try:
                loop.call_soon_threadsafe(queue.put_nowait, ev)
            except RuntimeError:  # the loop is closed: its consumer is gone
                pass

        seq.on_event = from_thread
        with self._lock:
            self._streams[seq.seq_id] = (loop, queue)
        try:
            self.submit(seq)
        except BaseException:
            with self._lock:
                self._streams.pop(seq.seq_id, None)
            raise
        try:
            while True:
                item = await queue.get()
                if isinstance(item, list):
                    for tok in item:
                        yield SeqEvent("token", token=tok, seq=seq)
                    continue
                yield item
                if item.kind == "finish":
                    return
        finally:
            with self._lock:
                self._streams.pop(seq.seq_id, None)
            if seq.status is not SeqStatus.FINISHED:
                self.cancel(seq)  # consumer went away (disconnect, error): free it next step

    def _send_loop(self) -> None:
        while True:
            with self._out_cv:
                while not self._outbox and not (self._stopping.is_set() and not self._ready):
                    self._out_cv.wait(1.0)
                if not self._outbox:
                    return
                batch, self._outbox = self._outbox, []
                conn = self._conn
            if conn is None:
                continue
            try:
                conn.send(batch)
            except (OSError, ValueError):  # the child is gone: the reader handles it
                pass
            if batch[-1] == ("stop",):
                return

    # -- observation (any thread; a turn old at most) ------------------------------------------
    @property
    def tokens_per_s(self) -> float:
        return self._view.tokens_per_s

    def _unacknowledged(self) -> tuple[int, dict[str, int]]:
        with self._lock:
            pending = list(self._pending)
        tokens = dict.fromkeys(CLASSES, 0)
        for _, klass, n in pending:
            tokens[klass] += n
        return len(pending), tokens

    def backlog_tokens(self, klass: str) -> int:
        """Tokens of work queued or running at `klass`'s priority or higher."""
        _, extra = self._unacknowledged()
        upto = CLASSES[: CLASSES.index(klass) + 1]
        return self._stats.backlog_tokens.get(klass, 0) + sum(extra[c] for c in upto)

    def stats(self) -> EngineStats:
        n, extra = self._unacknowledged()
        st = self._stats
        backlog = {}
        for c in CLASSES:
            upto = CLASSES[: CLASSES.index(c) + 1]
            backlog[c] = st.backlog_tokens.get(c, 0) + sum(extra[u] for u in upto)
        return EngineStats(
            running=st.running,
            waiting=st.waiting + n,
            kv_used_tokens=st.kv_used_tokens,
            kv_capacity_tokens=st.kv_capacity_tokens,
            tokens_per_s=st.tokens_per_s,
            backlog_tokens=backlog,
            steps=st.steps,
            slot_steps=st.slot_steps,
        )

    def view(self) -> EngineView:
        return self._view

    def waiting_count(self) -> int:
        return self._stats.waiting + len(self._pending)

    def _metric_families(self) -> Iterable[Metric]:
        return self._families

    # -- the reader / supervisor thread --------------------------------------------------------
    def _supervise(self) -> None:
        backoff = self.restart_base_s
        while True:
            conn, proc = self._conn, self._proc
            assert conn is not None and proc is not None
            up_since = time.monotonic()
            self._read(conn)
            proc.join(5)
            code = proc.exitcode
            with self._lock:
                self._ready = False
            conn.close()
            stopping = self._stopping.is_set()
            self._fail_all("shutdown" if stopping else "error")
            if stopping:
                return
            log.error("the engine process died", extra={"exitcode": code, "pid": self.pid})
            m.ENGINE_RESTARTS.inc()
            if time.monotonic() - up_since >= RESTART_RESET_AFTER_S:
                backoff = self.restart_base_s
            if not self.restart:
                return
            while not self._stopping.wait(backoff):
                try:
                    self._launch()
                except EngineStartError as exc:
                    log.error("the engine process did not restart", extra={"error": str(exc)})
                    backoff = min(backoff * 2, RESTART_MAX_S)
                    continue
                self.restarts += 1
                backoff = min(backoff * 2, RESTART_MAX_S)
                break
            if self._stopping.is_set():
                if self._proc is not None and self._proc is not proc:
                    self._proc.kill()
                return

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            kind = msg[0]
            if kind == "turn":
                self._turn(msg[1])
                if msg[2] is not None:
                    view, stats, received = msg[2]
                    with self._lock:
                        self._view, self._stats = view, stats
                        while self._pending and self._pending[0][0] <= received:
                            self._pending.popleft()
            elif kind == "metrics":
                self._families = msg[1]
                HEARTBEAT.labels("inference", "engine").set(msg[2])
            elif kind == "result":
                with self._lock:
                    fut = self._calls.pop(msg[1], None)
                if fut is not None and fut.set_running_or_notify_cancel():
                    if msg[2]:
                        fut.set_result(msg[3])
                    else:
                        fut.set_exception(RuntimeError(msg[3]))

    def _turn(self, updates: list[tuple[Any, ...]]) -> None:
        """One turn's updates: those of `stream` consumers go to their loop in one call per loop
        (applied there, so the reader holds the GIL only to sort them); the rest apply here."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[Sequence, asyncio.Queue, tuple[Any, ...]]]] = {}
        with self._lock:
            seqs, streams = self._seqs, self._streams
            here = []
            for u in updates:
                sid = u[0]
                seq = seqs.get(sid)
                if seq is None:
                    continue
                if u[11] is not None:  # its last update: the child has forgotten it
                    del seqs[sid]
                target = streams.get(sid)
                if target is None:
                    here.append((seq, u))
                else:
                    loop, queue = target
                    batch = batches.get(loop)
                    if batch is None:
                        batch = batches[loop] = []
                    batch.append((seq, queue, u))
        for loop, batch in batches.items():
            try:
                loop.call_soon_threadsafe(self._apply_on_loop, batch)
            except RuntimeError:  # the loop is closed: its consumers are gone
                pass
        for seq, u in here:
            self._apply(seq, u)

    @staticmethod
    def _copy_state(seq: Sequence, u: tuple[Any, ...]) -> tuple[list[int], str | None]:
        """Copy one step's update from the child into `seq`, all but a finish's status; return
        the new tokens and the finish reason (None while it runs)."""
        (
            _sid,
            toks,
            rec,
            status,
            computed,
            cached,
            preempted,
            first_sched,
            first_tok,
            fin_at,
            fin_step,
            reason,
        ) = u
        if toks:
            seq.output.extend(toks)
        if rec:
            seq.sampling.recorded.extend(rec)
        seq.num_computed = computed
        seq.cached_tokens = cached
        seq.preemptions = preempted
        seq.first_scheduled = first_sched
        seq.first_token_at = first_tok
        if reason is None:
            seq.status = SeqStatus(status)
        else:
            seq.finish_reason = reason
            seq.finish_step = fin_step
            seq.finished_at = fin_at
        return toks, reason

    @staticmethod
    def _apply_on_loop(batch: list[tuple[Sequence, asyncio.Queue, tuple[Any, ...]]]) -> None:
        for seq, queue, u in batch:
            if seq.status is SeqStatus.FINISHED:  # ended here already (_fail_all: the child died)
                continue
            toks, reason = ProcessEngine._copy_state(seq, u)
            if toks and seq.emit_tokens:
                queue.put_nowait(toks)
            if reason is not None:
                seq.status = SeqStatus.FINISHED
                queue.put_nowait(SeqEvent("finish", finish_reason=reason, seq=seq))

    def _apply(self, seq: Sequence, u: tuple[Any, ...]) -> None:
        toks, reason = self._copy_state(seq, u)
        if reason is not None:
            seq.status = SeqStatus.FINISHED
        if seq.emit_tokens:
            for tok in toks:
                seq.emit(SeqEvent("token", token=tok))
        if reason is not None:
            seq.emit(SeqEvent("finish", finish_reason=reason))

    def _fail_all(self, reason: str) -> None:
        """The engine process is gone: end what it held, fail its calls, forget its state."""
        with self._lock:
            seqs = list(self._seqs.values())
            self._seqs.clear()
            calls = list(self._calls.values())
            self._calls.clear()
            self._pending.clear()
            self._outbox = [c for c in self._outbox if c == ("stop",)]
            self._view, self._stats = self._empty()
        self._families = []
        now = time.monotonic()
        for seq in seqs:
            seq.finish_reason = reason
            seq.finished_at = now
            seq.status = SeqStatus.FINISHED
            seq.emit(SeqEvent("finish", finish_reason=reason))
        for fut in calls:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(
                    Overloaded("the engine process died; it is restarting", "engine_restart", 2)
                )
