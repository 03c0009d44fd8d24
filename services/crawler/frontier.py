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
        self._heap: list[tuple[float, int, str]] = []
        self._queued: set[str] = set()
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

    def after_fetch(self, host: str) -> None:
        """A host's request finished: it competes again from its next eligible time."""
        self.schedule(host)

    def end_turn(self, host: str) -> None:
        """The turn next_host handed out for `host` ended (whatever it did)."""
        self.slot(host).end_turn()

    @property
    def idle(self) -> bool:
        """Nothing queued and no host waiting for another turn (of this crawl or another) to end."""
        return not self._heap and not self._waiting

    def __len__(self) -> int:
        return len(self._heap)

    async def next_host(self, timeout: float | None = None) -> str | None:
        """Wait for the host with the earliest eligible time to become eligible, and pop it.

        Returns None if nothing became eligible within `timeout` (the engine uses that to check
        for completion, expired leases and pause/cancel).
        """
        deadline = None if timeout is None else self.clock() + timeout
        while True:
            now = self.clock()
            while self._heap:
                at, _, host = self._heap[0]
                slot = self.slot(host)
                if slot.turns >= self.politeness.max_in_flight_per_host:
                    # Busy (this crawl's turn or another's): requeued when that turn ends.
                    heapq.heappop(self._heap)
                    self._queued.discard(host)
                    self._waiting.add(host)
                    slot.waiters.add(self)
                    continue
                at = max(at, slot.next_eligible)
                if at > now:
                    if at != self._heap[0][0]:  # its slot moved on (e.g. Retry-After): re-key it
                        heapq.heapreplace(self._heap, (at, next(self._seq), host))
                        continue
                    break
                heapq.heappop(self._heap)
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
