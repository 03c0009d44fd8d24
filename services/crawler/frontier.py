"""The frontier: the crawl's control plane. It alone decides which host may be fetched next.

Structure (Mercator-style "back queues"):
- per-host queues live in the store (`FrontierStore.claim(host)` pops the host's best URL);
- one in-memory min-heap of (next eligible time, host) holds every host that has work and a free
  slot; a host appears in it at most once (`_queued` is the membership set);
- per-host politeness state lives in one HostSlot per host (politeness.py); the slots may be
  shared by several crawls (`slots=`): a host popped by one crawl's frontier is reserved
  (`slot.turns`) until that turn ends, and the other frontiers wait for it as `slot.waiters`;
- on a shared store a new slot starts from the host's shared record (`store.load_host`).

Fairness: a host re-enters the heap only after its request finished, keyed by its own next eligible
time, so one huge host gets one turn per delay like every other host and cannot starve the rest.

Order among hosts eligible at once (more eligible hosts than free fetch slots): the longest
remaining chain first. A host's requests are a chain, each one a delay after the last, so the
crawl cannot end before its deepest host's chain does; serving hosts only in the order they
became eligible leaves the deep ones waiting for slots early and alone at the end (list
scheduling, longest chain first). The remaining chain is not known (a redirect's target, a page's
links, show up one response at a time), so the host's size so far stands for it: the requests
it has had plus the URLs it has ready as far as known (`work[host]`: the store's count at its
last claim, plus links found since). An eligible host is ranked by (eligible since - head start),
the head start HEAD_START_PER_URL_S for each, at most MAX_HEAD_START_S: the bigger host goes
first, and a small host waits at most that long behind bigger ones. A host of unknown size (fewer
than two requests: robots.txt and a first page) is ranked as the mean size of the hosts known so
far: behind the bigger ones (their chains are the crawl's end), ahead of the smaller ones.
Politeness is untouched: a host still gets at most one turn per delay.
Memory: O(hosts) here; URLs stay on disk in the store. Backpressure: the engine pulls the next host
only when it has a free fetch slot, so nothing upstream of the fetcher accumulates.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable

from services.crawler import metrics
from services.crawler.politeness import HostSlot
from services.crawler.settings import PolitenessConfig
from services.crawler.store import FrontierStore

#: How far each request made and URL ready moves a host ahead of hosts eligible before it (s) ...
HEAD_START_PER_URL_S = 2.0
#: ... and at most (so no host waits longer than this behind deeper ones).
MAX_HEAD_START_S = 60.0


class Frontier:
    def __init__(
        self,
        store: FrontierStore,
        politeness: PolitenessConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        slots: dict[str, HostSlot] | None = None,
    ) -> None:
        self.store = store
        self.politeness = politeness
        self.clock = clock
        self.wall = wall
        self.slots: dict[str, HostSlot] = {} if slots is None else slots
        self.seen: set[str] = set()  # hosts this crawl has scheduled (its host view)
        self._heap: list[tuple[float, int, str]] = []  # (next eligible, seq, host): not yet eligible
        self._ready: list[tuple[float, int, str]] = []  # (eligible since - head start, seq, host)
        self.work: dict[str, int] = {}  # host -> ready URLs as far as known (the head start)
        self._sizes: dict[str, int] = {}  # explored host -> requests + ready at its last note
        self._sizes_total = 0
        self._queued: set[str] = set()  # hosts in either heap
        self._waiting: set[str] = set()  # hosts whose slot was busy (another turn): back on end_turn
        self._seq = itertools.count()
        self._changed = asyncio.Event()

    # -- host slots ----------------------------------------------------------------------------
    def slot(self, host: str) -> HostSlot:
        slot = self.slots.get(host)
        if slot is None:
            slot = self.slots[host] = HostSlot(host, self.politeness)
            record = self.store.load_host(host)
            if record is not None:
                self.apply_record(slot, record)
        return slot

    def apply_record(self, slot: HostSlot, record: dict[str, float | None]) -> None:
        """Merge a shared politeness record into the local slot (never earlier than either)."""
        nxt = record.get("next")
        if nxt is not None:
            slot.next_eligible = max(slot.next_eligible, self.mono_from_wall(nxt))
        until = record.get("retry_until")
        if until is not None:
            slot.retry_until = until
            slot.next_eligible = max(slot.next_eligible, self.mono_from_wall(until))
        if record.get("crawl_delay") is not None:
            slot.crawl_delay = record["crawl_delay"]
        backoff = record.get("backoff")
        if backoff is not None:
            slot.backoff_multiplier = max(1.0, backoff)

    def mono_from_wall(self, wall_time: float) -> float:
        return self._mono_from_wall(wall_time)

    def _mono_from_wall(self, wall_time: float) -> float:
        return self.clock() + max(0.0, wall_time - self.wall())

    # -- heap ----------------------------------------------------------------------------------
    def schedule(self, host: str, not_before_wall: float | None = None) -> None:
        """Put `host` in the heap (if not there) at its next eligible time."""
        if host in self._queued:
            return
        self._waiting.discard(host)
        self.seen.add(host)
        slot = self.slot(host)
        at = slot.next_eligible
        if not_before_wall is not None:
            at = max(at, self._mono_from_wall(not_before_wall))
        heapq.heappush(self._heap, (at, next(self._seq), host))
        self._queued.add(host)
        metrics.FRONTIER_HOSTS.set(len(self._queued))
        self._changed.set()

    def load_pending(self) -> int:
        """Seed the heap from the store (start or restart of a crawl)."""
        hosts = self.store.pending_hosts()
        for host, not_before in hosts:
            self.schedule(host, not_before)
        return len(hosts)

    def note_work(self, host: str, ready: int, *, add: bool = False) -> None:
        """What the host has left to fetch: the store's count at a claim, or `add` links found."""
        work = self.work[host] = max(0, (self.work.get(host, 0) if add else 0) + ready)
        slot = self.slots.get(host)
        if slot is not None and slot.requests >= 2:  # explored: counts towards the mean size
            size = slot.requests + work
            self._sizes_total += size - self._sizes.get(host, 0)
            self._sizes[host] = size

    def _head_start(self, host: str, slot: HostSlot) -> float:
        if slot.requests < 2:  # size unknown until robots.txt and a first page are in
            size = self._sizes_total / len(self._sizes) if self._sizes else 0.0
        else:
            size = slot.requests + self.work.get(host, 0)
        return min(MAX_HEAD_START_S, size * HEAD_START_PER_URL_S)

    def after_fetch(self, host: str) -> None:
        """A host's request finished: it competes again from its next eligible time."""
        self.schedule(host)

    def end_turn(self, host: str) -> None:
        """The turn next_host handed out for `host` ended (whatever it did)."""
        self.slot(host).end_turn()

    @property
    def idle(self) -> bool:
        """Nothing queued and no host waiting for another turn (of this crawl or another) to end."""
        return not self._heap and not self._ready and not self._waiting

    def __len__(self) -> int:
        return len(self._heap) + len(self._ready)

    async def next_host(self, timeout: float | None = None) -> str | None:
        """Wait for the host with the earliest eligible time to become eligible, and pop it.

        Returns None if nothing became eligible within `timeout` (the engine uses that to check
        for completion, expired leases and pause/cancel).
        """
        deadline = None if timeout is None else self.clock() + timeout
        while True:
            now = self.clock()
            while self._heap and self._heap[0][0] <= now:  # eligible now: ranked in _ready
                at, seq, host = heapq.heappop(self._heap)
                slot = self.slot(host)
                if slot.next_eligible > now:  # its slot moved on (e.g. Retry-After): re-key it
                    heapq.heappush(self._heap, (slot.next_eligible, next(self._seq), host))
                    continue
                at = max(at, slot.next_eligible)
                heapq.heappush(self._ready, (at - self._head_start(host, slot), seq, host))
            while self._ready:
                _, _, host = heapq.heappop(self._ready)
                slot = self.slot(host)
                if slot.turns >= self.politeness.max_in_flight_per_host:
                    # Busy (this crawl's turn or another's): requeued when that turn ends.
                    self._queued.discard(host)
                    self._waiting.add(host)
                    slot.waiters.add(self)
                    continue
                if slot.next_eligible > now:  # moved on since it became eligible
                    heapq.heappush(self._heap, (slot.next_eligible, next(self._seq), host))
                    continue
                self._queued.discard(host)
                metrics.FRONTIER_HOSTS.set(len(self._queued))
                slot.turns += 1  # reserved until end_turn(host)
                return host
            wait = None if not self._heap else self._heap[0][0] - now
            if deadline is not None:
                remaining = deadline - now
                if remaining <= 0:
                    return None
                wait = remaining if wait is None else min(wait, remaining)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=wait)
            except TimeoutError:
                pass
