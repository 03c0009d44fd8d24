"""The engine coordinates one crawl: frontier (what next) -> fetcher (how) -> parser -> store/WARC/sink.

Policy lives in the frontier and the host slots; mechanism in the fetcher; I/O in store, WARC and
sink. The engine's loop is the one backpressure predicate: a host is pulled from the frontier only
when a fetch slot (of `concurrency`) is free. A slot covers a host turn up to the end of its
response; the page is then recorded (WARC, parse, store) under a recording permit (`concurrency`
of them), so the store's commit and the parse never hold a request back.

Per host, a worker does exactly one of:
- fetch robots.txt (the host's first request, and again when the cached policy expires);
- claim URLs until one is allowed by robots (denied ones are marked FAILED without a request),
  fetch it, record the outcome and the links in one store transaction, emit the page event.
Then the host goes back into the frontier at its next eligible time.

On a shared store (Redis, several workers: store_redis.py) the same loop runs per worker over
the partitions it owns: every request first passes the host's shared politeness record
(`store.gate_host`, fenced), the robots answer is shared through the store, the page budget is
the store's one counter, new work from other workers arrives through `store.changed_hosts`, and
the crawl is complete when the store's counters say nothing is left anywhere (`quiescent`). A
write refused for a stale epoch (`Fenced`) ends the host turn: another worker owns the host now.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import hashlib
import inspect
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from libs.service.heartbeat import Heartbeat
from libs.service.spans import SpanLog
from services.crawler import metrics
from services.crawler.fetcher import Fetcher, FetchError, FetchResult, TimeoutException
from services.crawler.frontier import Frontier
from services.crawler.parking import HostParking
from services.crawler.parser import ParsedPage, decode_body, parse_html
from services.crawler.partitions import Fenced
from services.crawler.politeness import HostSlot, parse_retry_after
from services.crawler.retry import RetryPolicy, is_retryable_status
from services.crawler.robots import (
    MAX_ROBOTS_BYTES,
    RobotsCache,
    RobotsFetch,
    RobotsMode,
    RobotsPolicy,
    policy_from_shared,
)
from services.crawler.settings import ROBOTS_TOKEN, CrawlConfig
from services.crawler.sinks import PageSink
from services.crawler.stats import CrawlStats
from services.crawler.storage import full_path, is_disk_full
from services.crawler.store import ClaimRule, Finish, FrontierStore, NewURL, Outcome, URLRecord, URLState
from services.crawler.traps import PATTERN_BUDGET, TrapGuard
from services.crawler.urlnorm import InvalidURL, host_of, normalize
from services.crawler.warc import WarcOutput

log = logging.getLogger("services.crawler.engine")
_PARSE_OFF_LOOP_BYTES = 256 * 1024
# A write refused by a full disk is tried again after 1, 2, 4, 5, 5... s (the crawl pauses meanwhile).
_STORAGE_RETRY_S = (1.0, 5.0)
_CLAIMS_PER_TURN = 200
_MAX_WORKER_ERRORS = 50  # unexpected exceptions in host turns before the crawl is failed
# Gap after a robots.txt redirect hop, while the host's Crawl-delay is still unknown.
_UNKNOWN_ROBOTS_DELAY = 1.0
# The shared record a gate writes says "not before now + delay + this": the request leaves a
# little after its gate (a store round trip, the event loop), and a new owner after a failover
# goes by the record alone. If more than half of it passed before the request leaves, the record
# is pushed again (fenced) first.
_GATE_MARGIN = 0.25


def _give_back(rec: URLRecord) -> None:
    """A claim rule: the URL goes back at once (robots.txt first; its scheme is what was wanted)."""
    return None


class CrawlState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    FINISHED = "finished"
    FAILED = "failed"


def new_owner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def crawl_owner_id(crawl_id: str) -> str:
    """The lease owner of a crawl run by one process (CLI, API): the same across restarts, so a
    run restarted after kill -9 takes back its dead predecessor's leases at once."""
    return f"{socket.gethostname()}-crawl-{crawl_id}"


class _HostTurn:
    """One host turn handed out by the frontier; `ended` once it was handed back.

    It holds one of the crawl's fetch slots (`concurrency`) until `free_slot`: when its request
    has ended (the page is then recorded under a recording permit of its own), else when the
    turn's task ends."""

    __slots__ = ("_free", "ended")

    def __init__(self, free: Callable[[], None] | None = None) -> None:
        self.ended = False
        self._free = free

    def free_slot(self) -> None:
        free, self._free = self._free, None
        if free is not None:
            free()


class Crawl:
    def __init__(
        self,
        crawl_id: str,
        config: CrawlConfig,
        store: FrontierStore,
        fetcher: Fetcher,
        *,
        warc: WarcOutput | None = None,
        sink: PageSink | None = None,
        owner: str | None = None,
        seed: int | None = None,
        on_progress: Callable[[Crawl], None] | None = None,
        spans: SpanLog | None = None,
        host_slots: dict[str, HostSlot] | None = None,
    ) -> None:
        """`host_slots`: the process's per-host politeness slots, shared by all its crawls."""
        self.crawl_id = crawl_id
        self.config = config
        self.store = store
        self.fetcher = fetcher
        self.warc = warc
        if warc is not None:  # for the warcinfo record that opens each file (files open lazily)
            warc.info.setdefault("http-header-user-agent", config.user_agent)
        self.sink = sink
        self.owner = owner or crawl_owner_id(crawl_id)
        self.on_progress = on_progress
        self.spans = spans or SpanLog(None, "crawler")  # path None: spans are no-ops
        self.frontier = Frontier(store, config.politeness, slots=host_slots)
        self.robots = RobotsCache(ttl=config.robots_ttl, error_ttl=config.robots_error_ttl)
        self.retry = RetryPolicy(config.retry, random.Random(seed))
        self.traps = TrapGuard(max_per_pattern=config.max_urls_per_pattern, max_depth=config.max_depth)
        self.parking = HostParking(config.politeness.max_delay)  # hosts that asked for a wait
        self.state = CrawlState.PENDING
        self.stats = CrawlStats()
        self.error: str | None = None
        self.stopped_by: str | None = None  # a limit that ended the crawl with work left ("max_pages")
        self._scope_known: dict[str, bool] = {}  # authority -> in scope (see _in_scope)
        self._scope = [p.lower() for p in config.scope] or sorted(
            {(urlsplit(normalize(s)).hostname or "") for s in config.seeds}
        )
        self.robots_fetch = RobotsFetch(ROBOTS_TOKEN)  # hops and retries of robots.txt, per host
        self._gated: dict[str, tuple[float, float]] = {}  # host -> (monotonic gate time, its delay)
        self._fetches_in_flight = 0
        # URL ids this crawl is fetching or still recording: a claim that hands one back (its
        # first claim was lost with a failed group commit, or its lease ran out meanwhile) is left
        # alone, so this process never fetches a URL twice at once.
        self._fetching_ids: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # Pages whose request has ended and that are being recorded (WARC, parse, store), each
        # out of its fetch slot: at most `concurrency` at once, so a slow store or disk holds the
        # fetch slots back (backpressure) instead of piling up responses.
        self._recorders = asyncio.Semaphore(config.concurrency)
        self._resume = asyncio.Event()
        self._resume.set()
        self._wake = asyncio.Event()
        self._worker_errors = 0
        self._failed = False
        self.paused_reason: str | None = None  # set while a full disk holds the crawl ("disk full: PATH")
        self._storage_waiters = 0  # writes waiting to be tried again

    # -- control -----------------------------------------------------------------------------
    def pause(self) -> None:
        if self.state is CrawlState.RUNNING:
            self.state = CrawlState.PAUSED
            self._resume.clear()

    def resume(self) -> None:
        if self.state is CrawlState.PAUSED:
            self.state = CrawlState.RUNNING
            self._resume.set()

    def cancel(self) -> None:
        if self.state in (CrawlState.PENDING, CrawlState.RUNNING, CrawlState.PAUSED):
            self.state = CrawlState.CANCELLING
            self._resume.set()
            self._wake.set()

    @property
    def done(self) -> bool:
        return self.state in (CrawlState.CANCELLED, CrawlState.FINISHED, CrawlState.FAILED)

    # -- scope and admission -----------------------------------------------------------------
    def _in_scope(self, url: str, authority: str) -> bool:
        """`authority` is host_of(url): the host name urlsplit reads is a function of it, so the
        answer is remembered per authority (links name the same few hosts again and again)."""
        known = self._scope_known.get(authority)
        if known is None:
            hostname = urlsplit(url).hostname or ""
            known = any(fnmatch.fnmatchcase(hostname, p) for p in self._scope)
            if len(self._scope_known) >= 100_000:
                self._scope_known.clear()
            self._scope_known[authority] = known
        return known

    def _admit(self, url: str, depth: int, *, redirects: int = 0, via: str | None = None) -> NewURL | None:
        if len(url) > self.config.max_url_length:
            return None
        host = host_of(url)
        if not self._in_scope(url, host):
            return None
        if self.traps.check(url, host, depth) == PATTERN_BUDGET:
            return None  # a trap's (crawler_trap_cut_total): its pattern's budget is spent
        # A link deeper than max_depth is counted by the guard but still goes to the store: `depth`
        # is this page's depth when it was claimed, and a shorter path found since (another host,
        # another worker) may make the link admissible; the store keeps the edge to re-derive it.
        # Depth is judged by the store, which knows the shortest path found so far.
        return NewURL(url, host, depth, redirects, via)

    def _budget_left(self) -> bool:
        return self.store.pages_reserved() < self.config.max_pages

    # -- main loop ---------------------------------------------------------------------------
    async def run(self) -> CrawlStats:
        self.state = CrawlState.RUNNING
        self.stats.started_at = time.time()
        now = time.time()
        seeds = [self._admit(normalize(s), 0) for s in self.config.seeds]
        self.store.add([s for s in seeds if s is not None], now=now, max_depth=self.config.max_depth)
        expired = self.store.expire_leases(now)
        self._count_expired(expired)
        reclaimed = self.store.release_owner(self.owner)  # ours, from a run that died: no waiting
        if reclaimed:
            self.stats.count("leases_reclaimed", reclaimed)
            log.warning(
                "crawl %s: %d URLs leased by a previous run of %s handed back",
                self.crawl_id,
                reclaimed,
                self.owner,
            )
        self.frontier.load_pending()
        self.store.changed_hosts()  # (load_pending saw them all)
        reaper = asyncio.create_task(self._reaper())
        watcher = asyncio.create_task(self._watch())
        slots = asyncio.Semaphore(self.config.concurrency)
        heartbeat = Heartbeat("crawler", f"crawl-{self.crawl_id}")
        try:
            while self.state is not CrawlState.CANCELLING:
                heartbeat.beat()
                if self.state is CrawlState.PAUSED:
                    # wake now and then while paused so the heartbeat says the loop lives
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._resume.wait(), timeout=_STORAGE_RETRY_S[1])
                    if self.paused_reason is not None and not self._storage_waiters:
                        self._storage_ok()  # no write waits to probe the disk: resume and try (a probe)
                    continue
                if not self._budget_left():
                    if not self._tasks:
                        break
                    await self._wait_wake(0.5)
                    continue
                await slots.acquire()
                host = await self.frontier.next_host(timeout=0.25)
                if host is None:
                    slots.release()
                    if not self._tasks and self.frontier.idle:
                        for changed, not_before in self.store.changed_hosts():  # (what _watch polls)
                            self.frontier.schedule(changed, not_before)
                        if self.frontier.idle and await self.store.aquiescent():
                            break  # nothing queued, nothing running, nothing leased: the crawl is complete
                    continue
                turn = _HostTurn(slots.release)
                task = asyncio.create_task(self._work(host, turn))
                self._tasks.add(task)
                task.add_done_callback(functools.partial(self._task_done, turn=turn))
        except Exception as exc:
            self.state = CrawlState.FAILED
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("crawl %s failed", self.crawl_id)
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            for bg in (reaper, watcher):
                bg.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await bg
            if self.paused_reason is not None:
                self.paused_reason = None
                metrics.CRAWL_PAUSED.dec()
            if self._failed:
                self.state = CrawlState.FAILED
            elif self.state is CrawlState.CANCELLING:
                self.state = CrawlState.CANCELLED
            elif self.state is not CrawlState.FAILED:
                self.state = CrawlState.FINISHED
            self.stats.finished_at = time.time()
            self._note_limit_stop()
            self.parking.close()
            heartbeat.stop()
            metrics.FRONTIER_SIZE.set(0)
            if self.on_progress:
                self.on_progress(self)
        return self.stats

    def _task_done(self, task: asyncio.Task[None], turn: _HostTurn) -> None:
        self._tasks.discard(task)
        turn.free_slot()
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            # A full disk: what the turn wrote was rolled back and the host's turn comes again.
            if exc is not None and is_disk_full(exc):
                self._storage_full(exc, getattr(self.store, "path", None))
                return
            log.error("worker failed: %s", exc, exc_info=exc)
            self._worker_errors += 1
            # A bug or a broken store fails every turn; stop instead of spinning on it.
            if self._worker_errors >= _MAX_WORKER_ERRORS and not self.done:
                self.error = f"{self._worker_errors} worker errors, last: {type(exc).__name__}: {exc}"
                self.cancel()
                self._failed = True

    # -- a full disk: pause, try the same write again, resume -----------------------------------
    def _storage_full(self, exc: BaseException, where: object) -> None:
        metrics.STORAGE_ERRORS.labels("disk_full").inc()
        if self.state is not CrawlState.RUNNING:
            return
        self.paused_reason = f"disk full: {full_path(exc, where)}"
        self.state = CrawlState.PAUSED
        self._resume.clear()
        metrics.CRAWL_PAUSED.inc()
        log.error(
            "crawl %s paused: %s (%s); the write is tried again until it passes",
            self.crawl_id,
            self.paused_reason,
            exc,
        )

    def _storage_ok(self) -> None:
        if self.paused_reason is None:
            return
        log.warning("crawl %s resumes: %s no more", self.crawl_id, self.paused_reason)
        self.paused_reason = None
        metrics.CRAWL_PAUSED.dec()
        self.resume()

    async def _durable(self, write: Callable[[], Any], where: object) -> Any:
        """Run one write to the crawler's own storage (store, WARC, sink). While the disk is full
        the crawl pauses and the same write is tried again, with backoff, until it passes: a
        failed write left nothing behind, so the page is neither lost nor written twice."""
        delay = _STORAGE_RETRY_S[0]
        while True:
            try:
                result = write()
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                if not is_disk_full(exc) or self.state is CrawlState.CANCELLING:
                    raise
                self._storage_full(exc, where)
                self._storage_waiters += 1
                try:
                    await asyncio.sleep(delay)
                finally:
                    self._storage_waiters -= 1
                delay = min(_STORAGE_RETRY_S[1], delay * 2)
                continue
            self._storage_ok()
            return result

    async def _wait_wake(self, timeout: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _count_expired(self, n: int) -> None:
        self.stats.count("leases_expired", n)

    async def _reaper(self) -> None:
        """Hand back URLs whose lease ran out (a dead worker's), and refresh the frontier gauge."""
        interval = min(1.0, self.config.lease_seconds / 4)
        while True:
            await asyncio.sleep(interval)
            if self.paused_reason is not None or self._storage_waiters:
                continue  # our own waiting writes hold leases: none is handed back meanwhile
            try:
                expired = await self.store.aexpire_leases(time.time())
                if expired:
                    self._count_expired(expired)
                    self.frontier.load_pending()
                counts = await self.store.acounts()
            except Exception as exc:
                if is_disk_full(exc):
                    self._storage_full(exc, getattr(self.store, "path", None))
                else:  # the store is away for a moment (a Redis failover): try again next tick.
                    # Raising would end the reaper for the rest of the crawl, and a URL whose
                    # lease then runs out would never come back: the crawl would never finish.
                    log.warning("crawl %s: handing back expired leases failed", self.crawl_id, exc_info=True)
                continue
            metrics.FRONTIER_SIZE.set(counts["DISCOVERED"] + counts["RETRYABLE"])

    async def _watch(self) -> None:
        """Schedule hosts that got work from elsewhere (other workers' links, adopted partitions)."""
        resync = False
        while True:
            await asyncio.sleep(0.1)
            try:
                if resync:  # what a failed poll took from the inbox: every pending host again
                    self.frontier.load_pending()
                    resync = False
                for host, not_before in self.store.changed_hosts():
                    self.frontier.schedule(host, not_before)
            except Exception:  # the store is away for a moment: the reaper and the loop go on
                resync = True
                log.warning("crawl %s: polling the store for new work failed", self.crawl_id, exc_info=True)

    # -- one host turn -----------------------------------------------------------------------
    async def _work(self, host: str, turn: _HostTurn) -> None:
        slot = self.frontier.slot(host)
        try:
            await self._turn(host, slot, turn)
        except Fenced as exc:
            # Another worker owns the host's partition now: nothing was written; its turn is over.
            self.stats.count("fenced")
            log.info("crawl %s: host %s: %s", self.crawl_id, host, exc)
        except Exception:
            self.frontier.schedule(host)
            raise
        finally:
            if not turn.ended:
                self.frontier.end_turn(host)

    def _release_host(self, host: str, turn: _HostTurn) -> None:
        """The host's request has ended: the host competes again from its next eligible time while
        this task still records the response (parse, WARC, store). Its next request waits for the
        politeness gap only, not for that work; links it finds reach the frontier when stored."""
        if not turn.ended:
            turn.ended = True
            self.frontier.after_fetch(host)
            self.frontier.end_turn(host)

    async def _turn(self, host: str, slot: HostSlot, turn: _HostTurn) -> None:
        if host in self.parking.dropped:
            self.robots_fetch.forget(host)  # no more requests, robots.txt hops included
        owed = self.robots_fetch.owed(host)
        if owed is not None:
            url, hops = owed
            if not self._gate(host, slot, robots=True):
                return
            self.robots_fetch.taken(host)
            await self._fetch_robots(host, slot, url, hops)
            self.frontier.after_fetch(host)
            return
        for _ in range(_CLAIMS_PER_TURN):
            if self.state is CrawlState.CANCELLING or not self._budget_left():
                self.frontier.schedule(host)
                return
            rule, reserved = self._claim_rule(host)
            try:
                claimed = await self.store.aclaim_start(
                    host, self.owner, self.config.lease_seconds, time.time(), rule
                )
            except Exception:  # a commit refused (full disk): no request, the unit back
                if reserved:
                    self.store.unreserve_page()
                raise
            rec = claimed.rec
            if reserved and not claimed.started:
                self.store.unreserve_page()
            if rec is None:
                if claimed.ready_at is not None:  # waiting URLs only (Retry-After): back at the first one
                    self.frontier.schedule(host, claimed.ready_at)
                return
            if claimed.started:  # claimed and started in one step: this process's gate is the only one
                self._gated_or_held(host, slot, slot.delay_for(self.config.politeness), None)
                await self._fetch_page(rec, slot, turn)
                self._release_host(host, turn)
                return
            if rec.id in self._fetching_ids:
                continue  # ours in flight: its own task finishes it (the new lease only covers it)
            policy = self._robots_policy(host)  # (a shared answer may drop the host: Crawl-delay)
            if claimed.released and policy is not None:
                continue  # given back for robots.txt, but a shared answer came meanwhile: claim again
            if host in self.parking.dropped:
                await self._drop(rec)
                continue
            if policy is None:
                # First request to this host (or the cached policy expired): robots.txt first.
                if not claimed.released:
                    await self.store.arelease(rec.id)
                if not self._gate(host, slot, robots=True):
                    return
                scheme = urlsplit(rec.url).scheme
                await self._fetch_robots(host, slot, f"{scheme}://{host}/robots.txt", 0)
                self.frontier.after_fetch(host)
                return
            if not policy.allows(rec.url):
                await self._deny(rec, policy)
                continue
            if not self.store.reserve_page(self.config.max_pages):
                await self.store.arelease(rec.id)  # the budget is spent (by this worker or another)
                self.frontier.schedule(host)
                return
            try:  # the politeness gate and SCHEDULED -> FETCHING (one step on a shared store)
                passed, started = await self._gate_start(host, slot, rec)
            except Exception:  # fenced, or a commit refused (full disk): no request, the unit back
                self.store.unreserve_page()
                self._cancel_gate(host, slot)
                raise
            if not passed:
                self.store.unreserve_page()
                await self.store.arelease(rec.id)
                return
            if not started:
                self.store.unreserve_page()
                self._cancel_gate(host, slot)
                continue  # lease lost to the reaper in between: someone else owns it now
            await self._fetch_page(rec, slot, turn)
            self._release_host(host, turn)
            return
        self.frontier.schedule(host)

    def _claim_rule(self, host: str) -> tuple[ClaimRule | None, bool]:
        """What the store may do with the host's next URL in the claim's own step (a store that
        `claim_starts`: its politeness gate is this process's slot, passed by this turn): start
        it when robots allows it, a page of the budget is reserved for it and it is not ours in
        flight already; give it back when robots.txt comes first (only its scheme was wanted).
        Else (None) the claim only, and the steps below it one by one. Also: whether a page of
        the budget was reserved (the caller gives it back unless the URL started)."""
        if not self.store.claim_starts or host in self.parking.dropped:
            return None, False
        policy = self.robots.get(host)
        if policy is None:
            return _give_back, False
        if not self.store.reserve_page(self.config.max_pages):
            return None, False
        fetching = self._fetching_ids

        def rule(rec: URLRecord) -> bool:  # on the store's own thread: reads only
            return rec.id not in fetching and policy.allows(rec.url)

        return rule, True

    def _gate(self, host: str, slot: HostSlot, *, robots: bool = False) -> bool:
        """Pass the host's shared politeness record before a request (a no-op on a store one
        process owns). False: not yet (the host is rescheduled at the shared next time).

        The record says when the host may be asked next should this worker die mid-request;
        the end of the request rewrites it (from the response's end, with Retry-After). While
        robots.txt is being read the Crawl-delay is unknown: a conservative second."""
        now_wall = time.time()
        delay = slot.delay_for(self.config.politeness)
        if robots:
            delay = max(delay, _UNKNOWN_ROBOTS_DELAY)
        wait_until = self.store.gate_host(host, now_wall, slot.record(now_wall + delay + _GATE_MARGIN))
        return self._gated_or_held(host, slot, delay, wait_until)

    async def _gate_start(self, host: str, slot: HostSlot, rec: URLRecord) -> tuple[bool, bool]:
        """_gate and the claimed URL's start together (store.agate_start): (passed, started)."""
        now_wall = time.time()
        delay = slot.delay_for(self.config.politeness)
        wait_until, started = await self.store.agate_start(
            host,
            now_wall,
            slot.record(now_wall + delay + _GATE_MARGIN),
            rec.id,
            self.owner,
            self.config.lease_seconds,
        )
        return self._gated_or_held(host, slot, delay, wait_until), started

    def _gated_or_held(self, host: str, slot: HostSlot, delay: float, wait_until: float | None) -> bool:
        if wait_until is None:
            self._gated[host] = (time.monotonic(), delay)
            return True
        self.stats.count("politeness_waits")
        slot.next_eligible = max(slot.next_eligible, self.frontier.mono_from_wall(wait_until))
        self.frontier.schedule(host)
        return False

    def _cancel_gate(self, host: str, slot: HostSlot) -> None:
        """A passed gate whose request is not sent after all: the record goes back to the
        host's own next time (and the request no longer counts as in flight)."""
        next_wall = time.time() + max(0.0, slot.next_eligible - time.monotonic())
        with contextlib.suppress(Fenced):
            self.store.save_host(host, slot.record(next_wall))

    def _robots_policy(self, host: str) -> RobotsPolicy | None:
        policy = self.robots.get(host)
        if policy is None:
            shared = self.store.load_robots(host)
            if shared is not None:
                policy = policy_from_shared(shared, ROBOTS_TOKEN)
                self.robots.put(host, policy)
                slot = self.frontier.slot(host)
                slot.crawl_delay = policy.crawl_delay
                if policy.crawl_delay is not None and not self.parking.allow_delay(host, policy.crawl_delay):
                    slot.crawl_delay = None  # dropped, as in _fetch_robots: its URLs end FAILED at once
        return policy

    async def _deny(self, rec: URLRecord, policy: RobotsPolicy) -> None:
        reason = (
            "robots_disallowed" if policy.mode is RobotsMode.RULES else f"robots_unavailable: {policy.reason}"
        )
        await self.store.afinish(Finish(rec.id, Outcome(URLState.FAILED, error=reason), now=time.time()))
        self.stats.count("robots_denied")
        self.stats.count("failed")

    async def _drop(self, rec: URLRecord) -> None:
        """A URL of a dropped host (it asked for a wait past the max host delay): FAILED, no request."""
        reason = f"host_dropped: {self.parking.dropped[rec.host]}"
        await self.store.afinish(Finish(rec.id, Outcome(URLState.FAILED, error=reason), now=time.time()))
        self.stats.count("failed")

    def _asked_wait(self, host: str, status: int, seconds: float | None) -> float | None:
        """A Retry-After on a 3xx, 429 or 5xx is honoured in full: the host is parked that long,
        or, past the max host delay, dropped (None: nothing to wait for, no request follows)."""
        if seconds is None or not (300 <= status < 400 or status == 429 or status >= 500):
            return seconds
        return seconds if self.parking.asked(host, seconds, "Retry-After") else None

    def _begin_request(self, host: str, slot: HostSlot) -> float:
        slot.on_start(time.monotonic(), self.config.politeness)
        self.stats.request(host)
        metrics.IN_FLIGHT.inc()
        return time.monotonic()

    def _end_request(self, slot: HostSlot, t0: float, status: int | None, retry_after: float | None) -> None:
        metrics.IN_FLIGHT.dec()
        now = time.monotonic()
        delay = slot.on_finish(now, now - t0, status, retry_after, self.config.politeness)
        with contextlib.suppress(Fenced):  # lost the host meanwhile: its new owner has the start record
            self.store.save_host(slot.host, slot.record(time.time() + (slot.next_eligible - now)))
        metrics.POLITENESS_DELAY.observe(delay)
        metrics.FETCH_LATENCY.observe(now - t0)

    def _check_lease(self, host: str, slot: HostSlot) -> None:
        """Last check before a request goes out: a worker frozen (SIGSTOP) after its gate and
        woken past its partition lease must not send it (the new owner may have asked the host)."""
        if not self.store.may_request(host):
            self._cancel_gate(host, slot)
            raise Fenced(f"host {host}: partition lease ran out before the request went out")
        gated_at, delay = self._gated.pop(host, (time.monotonic(), 0.0))
        if time.monotonic() - gated_at > _GATE_MARGIN / 2:
            try:  # slow since the gate: the shared record must still cover this request
                self.store.save_host(host, slot.record(time.time() + delay + _GATE_MARGIN), end=False)
            except Fenced:
                self._cancel_gate(host, slot)
                raise

    async def _fetch_robots(self, host: str, slot: HostSlot, url: str, hops: int) -> None:
        """One request of the robots.txt protocol (robots.RobotsFetch decides what it led to)."""
        self._check_lease(host, slot)
        t0 = self._begin_request(host, slot)
        self.stats.count("robots_fetches")
        status: int | None = None
        retry_after = None
        try:
            result = await self.fetcher.fetch(url, max_body_bytes=MAX_ROBOTS_BYTES, allowed_types=["*"])
        except FetchError as exc:
            self.stats.response(type(exc).__name__)
            step = self.robots_fetch.failed(
                host, url, hops, str(exc), retryable=exc.retryable, timeout=isinstance(exc, TimeoutException)
            )
        else:
            status = result.status
            if self.warc is not None:
                self.warc.write(result)  # robots.txt exchanges (and their redirect hops) are archived
            retry_after = self._asked_wait(host, status, parse_retry_after(result.header("Retry-After")))
            self.stats.response(str(status), len(result.body), page=False)
            step = self.robots_fetch.answered(host, url, hops, status, result.location, result.body)
        if step.retry_attempt is not None:
            self._end_request(slot, t0, status, self.retry.backoff(step.retry_attempt, retry_after))
            return
        if step.redirect:  # the host's Crawl-delay is still unknown: wait a conservative second
            self._end_request(slot, t0, status, max(retry_after or 0.0, _UNKNOWN_ROBOTS_DELAY))
            return
        policy, shared = step.policy, step.shared
        assert policy is not None and shared is not None
        slot.crawl_delay = policy.crawl_delay
        with contextlib.suppress(Fenced):
            ttl = self.config.robots_error_ttl if policy.is_error else self.config.robots_ttl
            self.store.save_robots(host, shared, ttl)
        if policy.crawl_delay is not None and not self.parking.allow_delay(host, policy.crawl_delay):
            slot.crawl_delay = None  # dropped: no request follows, its URLs end FAILED at once
        self.robots.put(host, policy)
        metrics.ROBOTS_FETCHES.labels(policy.mode.value).inc()
        self._end_request(slot, t0, status, retry_after)

    async def _fetch_page(self, rec: URLRecord, slot: HostSlot, turn: _HostTurn) -> None:
        attempts_made = rec.attempts + 1
        try:
            self._check_lease(rec.host, slot)
        except Fenced:
            self.store.unreserve_page()
            raise
        self._fetching_ids.add(rec.id)
        self._fetches_in_flight += 1
        t0 = self._begin_request(rec.host, slot)
        counted = False
        try:
            try:
                async with self.spans.span("crawler.fetch", host=rec.host, depth=rec.depth):
                    result = await self.fetcher.fetch(rec.url)
            except FetchError as exc:
                self._end_request(slot, t0, None, None)
                self._release_host(rec.host, turn)
                self.stats.response(type(exc).__name__)
                async with self._recording(turn):
                    await self._retry_or_fail(
                        rec, attempts_made, type(exc).__name__, None, None, exc.retryable, str(exc)
                    )
                return
            asked = parse_retry_after(result.header("Retry-After"))
            retry_after = self._asked_wait(rec.host, result.status, asked)
            asked_host = retry_after if is_retryable_status(result.status) else None
            self._end_request(slot, t0, result.status, asked_host)
            self._release_host(rec.host, turn)
            async with self._recording(turn):
                counted = await self._handle_response(rec, result, attempts_made, retry_after)
        finally:
            self._fetching_ids.discard(rec.id)
            self._fetches_in_flight -= 1
            if not counted:
                self.store.unreserve_page()  # not a fetched page (retry, failure, fenced)
            if self.on_progress:
                self.on_progress(self)

    @contextlib.asynccontextmanager
    async def _recording(self, turn: _HostTurn) -> AsyncIterator[None]:
        """Record a page whose request has ended outside the fetch slot: the slot goes to the
        next host turn as soon as a recording permit is held (waiting for one keeps the slot)."""
        async with self._recorders:
            turn.free_slot()
            yield

    async def _retry_or_fail(
        self,
        rec: URLRecord,
        attempts_made: int,
        reason: str,
        status: int | None,
        retry_after: float | None,
        retryable: bool,
        error: str,
    ) -> None:
        now = time.time()
        if rec.host in self.parking.dropped:  # it asked for a longer wait than the crawl may give
            retryable = False
            error = f"{error}; host_dropped: {self.parking.dropped[rec.host]}"
        if retryable and self.retry.should_retry(attempts_made):
            wait = self.retry.backoff(attempts_made, retry_after)
            await self.store.aretry(rec.id, now + wait, error, status)
            self.stats.retry(reason)
            return
        await self.store.afinish(
            Finish(rec.id, Outcome(URLState.FAILED, status=status, error=error, fetched_at=now), now=now)
        )
        self.stats.count("failed")

    async def _handle_response(
        self, rec: URLRecord, result: FetchResult, attempts_made: int, retry_after: float | None
    ) -> bool:
        """Record a response; True when it counts as a fetched page (of the page budget)."""
        status = result.status
        now = time.time()
        self.stats.response(str(status), len(result.body))
        if is_retryable_status(status):
            await self._retry_or_fail(
                rec, attempts_made, str(status), status, retry_after, True, f"HTTP {status}"
            )
            return False
        warc = self.warc
        warc_file = (
            await self._durable(lambda: warc.write(result), warc.directory) if warc is not None else None
        )
        new_urls: list[NewURL] = []
        sha: str | None = None
        if 300 <= status < 400 and result.location:
            if rec.redirects < self.config.fetch.max_redirects:
                try:
                    target = normalize(result.location, rec.url)
                except InvalidURL:
                    target = None
                if target is not None:
                    admitted = self._admit(
                        target, rec.depth, redirects=rec.redirects + 1, via=rec.via or rec.url
                    )
                    if admitted is not None:
                        new_urls.append(admitted)
        elif 200 <= status < 300 and not result.body_skipped:
            # (A body outside the content-type allow list was never read: nothing to hash or parse.)
            sha = hashlib.sha256(result.body).hexdigest()
            duplicate = False
            if self.config.skip_duplicate_content_links:  # asked first: it decides the links
                duplicate = await self.store.afirst_with_content(sha, rec.id) != rec.id
                if duplicate:
                    self.stats.count("duplicate_content")
            with self.spans.span("crawler.parse", bytes=len(result.body)):
                page = await self._parse(result)
            if not duplicate:
                for link in page.links:
                    admitted = self._admit(link, rec.depth + 1)
                    if admitted is not None:
                        new_urls.append(admitted)
            if self.sink is not None:
                where = getattr(self.sink, "path", None) or getattr(
                    getattr(self.sink, "outbox", None), "path", None
                )
                await self._durable(lambda: self._emit(rec, result, sha, page, warc_file, now), where)
        with self.spans.span("crawler.store", links=len(new_urls)):
            new, duplicate = await self._durable(
                lambda: self._finish_fetched(rec, status, sha, new_urls, now),
                getattr(self.store, "path", None),
            )
        if duplicate:
            self.stats.count("duplicate_content")
        self.stats.count("fetched")
        if new:
            self.stats.count("discovered", new)
            for host in {u.host for u in new_urls}:
                self.frontier.schedule(host)
        return True

    def _finish_fetched(
        self, rec: URLRecord, status: int, sha: str | None, new_urls: list[NewURL], now: float
    ) -> Awaitable[tuple[int, bool]]:
        """The page's outcome and links, and (unless asked before the parse) whether its body
        was another URL's first: one store step (store.afinish_page)."""
        return self.store.afinish_page(
            Finish(
                rec.id,
                Outcome(URLState.FETCHED, status=status, content_sha256=sha, fetched_at=now),
                new_urls,
                max_per_host=self.config.max_pages_per_host,
                max_depth=self.config.max_depth,
                parent_depth=rec.depth,
                now=now,
            ),
            content_known=self.config.skip_duplicate_content_links,
        )

    async def _parse(self, result: FetchResult) -> ParsedPage:
        html = decode_body(result.body, result.charset)
        text = self.sink is not None  # (the page's text goes nowhere else)
        if len(result.body) > _PARSE_OFF_LOOP_BYTES:
            return await asyncio.to_thread(functools.partial(parse_html, html, result.url, text=text))
        return parse_html(html, result.url, text=text)

    async def _emit(
        self,
        rec: URLRecord,
        result: FetchResult,
        sha: str,
        page: ParsedPage,
        warc_file: str | None,
        now: float,
    ) -> None:
        assert self.sink is not None
        event = {
            "crawl_id": self.crawl_id,
            "url": rec.via or rec.url,
            "final_url": rec.url,
            "status": result.status,
            "content_type": result.content_type,
            "content_sha256": sha,
            "text": page.text,
            "links": page.links,
            "canonical": page.canonical,
            "fetched_at": now,
            "warc_file": warc_file,
        }
        await self.sink.emit(event)
        self.stats.count("pages_emitted")

    def _note_limit_stop(self) -> None:
        """Say it when a limit, not the end of the web, stopped the crawl (status and log)."""
        if self.state is not CrawlState.FINISHED or self._budget_left():
            return
        counts = self.store.counts()
        left = counts["DISCOVERED"] + counts["RETRYABLE"]
        if left:
            self.stopped_by = "max_pages"
            log.warning(
                "crawl %s stopped by max_pages=%d with %d URLs still queued",
                self.crawl_id,
                self.config.max_pages,
                left,
            )

    # -- views -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        counts = self.store.counts()
        stats = self.stats.as_dict()
        elapsed = (
            ((self.stats.finished_at or time.time()) - self.stats.started_at) if self.stats.started_at else 0
        )
        return {
            "crawl_id": self.crawl_id,
            "state": self.state.value,
            "error": self.error,
            "paused_reason": self.paused_reason,
            "stopped_by": self.stopped_by,
            "hosts_parked": self.parking.count(),
            "hosts_dropped": dict(self.parking.dropped),
            "urls": counts,
            "frontier_size": counts["DISCOVERED"] + counts["RETRYABLE"],
            "hosts_known": len(self.frontier.seen),
            "hosts_queued": len(self.frontier),
            "in_flight": self._fetches_in_flight,
            "stats": stats,
            "elapsed_seconds": round(elapsed, 3),
            "pages_per_second": round(self.stats.fetched / elapsed, 3) if elapsed > 0 else 0.0,
            "trap_cuts": self.traps.summary(),
        }

    def host_view(self, host: str) -> dict[str, Any]:
        slot = self.frontier.slots.get(host) if host in self.frontier.seen else None
        policy = self.robots.get(host)
        now = time.monotonic()
        out: dict[str, Any] = {
            "host": host,
            "urls": self.store.host_counts(host),
            "robots": policy.summary() if policy else None,
            **self.parking.view(host),
        }
        if slot is not None:
            out.update(
                {
                    "delay_seconds": round(slot.delay, 3),
                    "crawl_delay": slot.crawl_delay,
                    "backoff_multiplier": slot.backoff_multiplier,
                    "in_flight": slot.in_flight,
                    "requests": slot.requests,
                    "next_eligible_in_seconds": round(max(0.0, slot.next_eligible - now), 3),
                    "latency_ewma_seconds": None
                    if slot.latency_ewma is None
                    else round(slot.latency_ewma, 4),
                    "requests_per_second_60s": round(slot.request_rate(now), 3),
                    "last_request_at": slot.last_request_at,
                }
            )
        return out

    def hosts_view(self) -> list[dict[str, Any]]:
        return [self.host_view(h) for h in sorted(self.frontier.seen)]
