"""The frontier's durable state: the interface every backend implements (SQLite now, Redis later).

URL state machine (every transition is one atomic store operation, so a crash leaves no half state):

    DISCOVERED --claim--> SCHEDULED --start--> FETCHING --finish--> FETCHED | FAILED
        ^                     |                    |
        |                     +---- lease expires -+--> RETRYABLE --claim--> SCHEDULED ...
        +--------------------------- release (pause/cancel) ------+
    FETCHING --retry (429/5xx/timeout)--> RETRYABLE (not_before = now + backoff)

A claim carries a lease (owner, until). A worker that dies leaves its URLs SCHEDULED/FETCHING;
`expire_leases` hands them back, so fetching is at-least-once. `finish` writes the outcome and the
newly discovered links in one transaction, and finishing a FETCHED URL again changes nothing, so
writes are idempotent.

Two implementations: SQLite (store_sqlite.py, one process) and Redis (store_redis.py, several
workers over host partitions). Every per-URL operation names its host or an id that names its
partition, `claim` works on one host's queue only, and the global questions (`pending_hosts`,
`counts`) are answered per partition and merged. The non-abstract methods at the end are what a
shared backend needs beyond that (crawl-wide page budget, completion from counters, hosts other
workers added URLs for, per-host politeness and robots records, fencing); their defaults are
right for a store one process owns alone.
"""

from __future__ import annotations

import abc
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple


class URLState(IntEnum):
    DISCOVERED = 0
    SCHEDULED = 1
    FETCHING = 2
    FETCHED = 3
    FAILED = 4
    RETRYABLE = 5


READY_STATES = (URLState.DISCOVERED, URLState.RETRYABLE)
LEASED_STATES = (URLState.SCHEDULED, URLState.FETCHING)


def url_key(url: str) -> bytes:
    """128-bit digest of a normalised URL: the exact-dedup key (collision odds ~n^2/2^129)."""
    return hashlib.blake2b(url.encode("utf-8"), digest_size=16).digest()


@dataclass(frozen=True)
class NewURL:
    url: str
    host: str
    depth: int
    redirects: int = 0
    via: str | None = None  # the URL whose redirect led here


@dataclass(frozen=True)
class URLRecord:
    id: int
    url: str
    host: str
    depth: int
    redirects: int
    via: str | None
    state: URLState
    attempts: int


class Claimed(NamedTuple):
    """What `aclaim_start` did. `rec` None: the host had no ready URL (`ready_at`: its earliest
    waiting one, None when it has none). `started`: the claimed URL is FETCHING, committed
    (durable) before this answer; `released`: it was given back at once (the rule asked only to
    see it); neither: it is SCHEDULED under the caller's lease, as after `claim`."""

    rec: URLRecord | None
    started: bool = False
    released: bool = False
    ready_at: float | None = None


#: Decides, for the URL just claimed, in the claim's own step: True = start it, False = keep it
#: claimed (the caller deals with it), None = give it back.
ClaimRule = Callable[[URLRecord], bool | None]


@dataclass(frozen=True)
class Outcome:
    state: URLState  # FETCHED or FAILED
    status: int | None = None
    content_sha256: str | None = None
    error: str | None = None
    fetched_at: float | None = None


@dataclass(frozen=True, slots=True)
class Finish:
    """One URL's finish (`FrontierStore.finish`): its final outcome, the links found on it and
    how they are admitted. `max_per_host`: URLs admitted per host; `max_depth`: the BFS depth
    limit (links are then remembered as edges, so a shorter path found later re-derives their
    depths); `parent_depth`: the depth the URL was claimed at (the links' depths are relative to
    it; None: the store reads it); `now`: wall seconds, the links' discovery time."""

    url_id: int
    outcome: Outcome
    new_urls: Sequence[NewURL] = ()
    max_per_host: int | None = None
    max_depth: int | None = None
    parent_depth: int | None = None
    now: float = 0.0


class FrontierStore(abc.ABC):
    """Durable URL set + per-host ready queues. Times are wall-clock Unix seconds (they outlive a process)."""

    @abc.abstractmethod
    def add(
        self, urls: list[NewURL], *, max_per_host: int | None = None, now: float, max_depth: int | None = None
    ) -> int:
        """Insert URLs not seen before (exact dedup); return how many were new. A URL seen before
        at a greater depth gets the smaller one (max_depth means BFS depth)."""

    @abc.abstractmethod
    def claim(self, host: str, owner: str, lease_seconds: float, now: float) -> URLRecord | None:
        """Move the host's best ready URL (lowest depth, oldest) to SCHEDULED under a lease."""

    @abc.abstractmethod
    def start(self, url_id: int, owner: str, lease_seconds: float, now: float) -> bool:
        """SCHEDULED -> FETCHING, counting one attempt; False if the lease was lost."""

    @abc.abstractmethod
    def finish(self, f: Finish) -> int:
        """Record a final outcome and the links found, atomically; return the number of new URLs."""

    @abc.abstractmethod
    def retry(self, url_id: int, not_before: float, error: str, status: int | None = None) -> None:
        """FETCHING -> RETRYABLE, eligible again at `not_before`."""

    @abc.abstractmethod
    def release(self, url_id: int) -> None:
        """Give a claimed URL back untouched (pause, cancel, robots not ready)."""

    @abc.abstractmethod
    def expire_leases(self, now: float) -> int:
        """Return URLs whose lease ran out to the ready states; return how many."""

    @abc.abstractmethod
    def pending_hosts(self) -> list[tuple[str, float]]:
        """Hosts with ready or waiting URLs, each with its earliest not_before."""

    @abc.abstractmethod
    def next_ready_at(self, host: str) -> float | None:
        """Earliest not_before among the host's ready URLs, or None when it has none."""

    @abc.abstractmethod
    def earliest_lease_expiry(self) -> float | None:
        """When the next held lease runs out, or None when no URL is leased."""

    @abc.abstractmethod
    def first_with_content(self, sha256: str, url_id: int) -> int:
        """Remember which URL first had this body; return that URL's id (content dedup)."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """URLs per state name."""

    @abc.abstractmethod
    def host_counts(self, host: str) -> dict[str, int]:
        """One host's URLs per state name."""

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- what the engine awaits (defaults: the plain method, on the event loop) -----------------
    # A backend that does its work elsewhere (SQLite: a thread of its own, in group commits)
    # answers these without blocking the loop; finish and retry return once durable.
    async def aclaim(self, host: str, owner: str, lease_seconds: float, now: float) -> URLRecord | None:
        return self.claim(host, owner, lease_seconds, now)

    async def astart(self, url_id: int, owner: str, lease_seconds: float, now: float) -> bool:
        return self.start(url_id, owner, lease_seconds, now)

    async def afinish(self, f: Finish) -> int:
        return self.finish(f)

    async def afinish_page(self, f: Finish, *, content_known: bool = False) -> tuple[int, bool]:
        """finish, and first_with_content for the outcome's body hash (unless `content_known`:
        the caller asked it already): (new URLs, whether another URL had this body first). A
        store that can does both in one step; the default makes the two calls."""
        duplicate = False
        sha = f.outcome.content_sha256
        if sha is not None and not content_known:
            duplicate = await self.afirst_with_content(sha, f.url_id) != f.url_id
        return await self.afinish(f), duplicate

    async def aretry(self, url_id: int, not_before: float, error: str, status: int | None = None) -> None:
        self.retry(url_id, not_before, error, status)

    async def agate_start(
        self,
        host: str,
        now: float,
        record: dict[str, float | None],
        url_id: int,
        owner: str,
        lease_seconds: float,
    ) -> tuple[float | None, bool]:
        """Pass the host's politeness gate (gate_host) and, only if it passes, start the claimed
        URL (start): (None, started), or (the wall time the host becomes eligible, False). A
        shared store does both in one step (one round trip, nothing written unless both can
        be). Passed but not started: the caller gives the gate back (no request is sent)."""
        wait = self.gate_host(host, now, record)
        if wait is not None:
            return wait, False
        return None, await self.astart(url_id, owner, lease_seconds, time.time())

    #: Whether `aclaim_start` applies its rule (claim and start in one step). Only a store whose
    #: politeness gate is this process's own (gate_host the default no-op) may say so: a started
    #: URL passed no shared gate.
    claim_starts = False

    async def aclaim_start(
        self, host: str, owner: str, lease_seconds: float, now: float, rule: ClaimRule | None = None
    ) -> Claimed:
        """Claim the host's best ready URL and, where `claim_starts`, apply `rule` to it in the
        same step (one round trip to the store for a claim and its start). The default claims
        only (the rule is not applied: the caller passes the shared gate with agate_start) and
        asks an empty host's next_ready_at."""
        rec = await self.aclaim(host, owner, lease_seconds, now)
        if rec is None:
            return Claimed(None, ready_at=await self.anext_ready_at(host))
        return Claimed(rec)

    async def arelease(self, url_id: int) -> None:
        self.release(url_id)

    async def aexpire_leases(self, now: float) -> int:
        return self.expire_leases(now)

    async def anext_ready_at(self, host: str) -> float | None:
        return self.next_ready_at(host)

    async def afirst_with_content(self, sha256: str, url_id: int) -> int:
        return self.first_with_content(sha256, url_id)

    async def acounts(self) -> dict[str, int]:
        return self.counts()

    async def aquiescent(self) -> bool:
        return self.quiescent()

    # -- shared-backend hooks (defaults: one process owns the store) ---------------------------
    def release_owner(self, owner: str) -> int:
        """Hand back at once every URL `owner` holds a lease on (SCHEDULED/FETCHING -> ready, as
        expire_leases does), and return how many. Called when `owner` starts: what it holds is
        from a previous run of its own that died. Other owners' leases keep running."""
        return 0

    _pages: int | None = None

    def reserve_page(self, limit: int) -> bool:
        """Take one unit of the crawl's page budget (one atomic counter on a shared store);
        False when `limit` pages are fetched or being fetched."""
        if self._pages is None:
            self._pages = self.counts()["FETCHED"]
        if self._pages >= limit:
            return False
        self._pages += 1
        return True

    def unreserve_page(self) -> None:
        """Give a unit back: the fetch did not end as a fetched page."""
        if self._pages is not None:
            self._pages = max(0, self._pages - 1)

    def pages_reserved(self) -> int:
        """Units of the page budget taken. On a shared store it may be what this process last saw
        while that was below the limit (others may have taken more since): the loop asks it every
        turn, reserve_page decides."""
        if self._pages is None:
            self._pages = self.counts()["FETCHED"]
        return self._pages

    def quiescent(self) -> bool:
        """Nothing of the crawl is left to do: no URL ready, waiting or leased, by anyone. A store
        one process owns answers for leases only (the caller's idle frontier covers the rest)."""
        return self.earliest_lease_expiry() is None

    def changed_hosts(self) -> list[tuple[str, float]]:
        """Hosts given work by someone else (another worker, an adopted partition) since the
        last call, with their earliest not_before."""
        return []

    def may_request(self, host: str) -> bool:
        """Whether this process may still send `host` a request now (on a shared store: its
        partition lease is still trusted). Asked just before the request goes out."""
        return True

    def gate_host(self, host: str, now: float, record: dict[str, float | None]) -> float | None:
        """Pass the host's shared politeness record before a request: None = go (and `record`,
        whose `next` is when the host may be asked again, is stored atomically with the check);
        else the wall time the host becomes eligible. Fenced on a shared store."""
        return None

    def load_host(self, host: str) -> dict[str, float | None] | None:
        """The host's shared politeness record (next: wall seconds, crawl_delay, backoff,
        retry_until), or None where politeness is kept in this process only."""
        return None

    def save_host(self, host: str, record: dict[str, float | None], *, end: bool = True) -> None:
        """Write the host's politeness record (fenced on a shared store); `end`: the request
        the gate let through has ended."""
        return None

    def load_robots(self, host: str) -> dict[str, Any] | None:
        """The host's shared robots.txt answer (status, body, error, fetched_at) or None."""
        return None

    def save_robots(self, host: str, record: dict[str, Any], ttl: float) -> None:
        """Share the host's robots.txt answer for `ttl` seconds (fenced on a shared store)."""
        return None
