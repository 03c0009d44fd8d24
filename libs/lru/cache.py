"""A thread-safe LRU cache with O(1) operations and optional per-entry TTL.

Shape (after CPython's pure-Python ``functools.lru_cache``): a dict maps each key to its
link, and the links form a circular doubly linked list through one sentinel ``root``.
``root.next`` is the least recently used entry, ``root.prev`` the most recently used one.
Because the list is circular and the sentinel is never removed, inserting, unlinking and
evicting have no empty-list or one-item special cases.

Invariants, true whenever ``_lock`` is free:
  * ``len(_map) <= capacity``;
  * following ``next`` from ``root`` visits every link of ``_map`` exactly once and returns to
    ``root``; ``link.next.prev is link`` for every link, ``root`` included;
  * ``_map[link.key] is link`` for every link in the list.

Every mutation of the map or the list happens under the one lock. Callbacks (``on_evict``) run
after the lock is released, so a callback may call back into the cache and a slow callback
does not stall other threads.

Expiry is lazy: an entry whose deadline has passed is removed when an operation touches it
(``get``, ``peek``, ``in``, ``delete``, ``items``) or when capacity pushes it out. ``len()``
stays O(1) and may therefore count expired entries that nothing has touched yet. An entry put
at time ``t`` with ``ttl`` is live on the half-open interval ``[t, t + ttl)``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_MISSING: Any = object()


class CacheStats(NamedTuple):
    """Counters since creation (or ``reset_stats``) plus the current size."""

    hits: int
    misses: int
    evictions: int  # entries pushed out by capacity while still live
    expirations: int  # entries removed because their TTL had passed
    size: int
    capacity: int


class _Link:
    """One entry, and also the sentinel root (whose key and value are unused)."""

    __slots__ = ("expires", "key", "next", "prev", "value")

    def __init__(self, key: Any = None, value: Any = None, expires: float = math.inf) -> None:
        self.prev: _Link = self
        self.next: _Link = self
        self.key = key
        self.value = value
        self.expires = expires


def _check_ttl(ttl: float | None) -> None:
    if ttl is not None and not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl: expected a positive finite number of seconds, got {ttl!r}")


class LRUCache(Generic[K, V]):
    """Least-recently-used cache: a hit and an overwrite both count as use.

    ``capacity``: the most entries held; a put that makes the cache one too large evicts
    the least recently used entry after inserting. ``ttl``: default lifetime in seconds of
    each entry (``put(..., ttl=)`` overrides it per entry). ``on_evict(key, value)``: called,
    outside the lock, for every entry the cache drops on its own (capacity or expiry), never
    for ``delete``, ``clear`` or an overwrite. ``clock``: monotonic seconds, injectable so that
    tests can move time.
    """

    def __init__(
        self,
        capacity: int,
        *,
        ttl: float | None = None,
        on_evict: Callable[[K, V], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity: expected an integer >= 1, got {capacity!r}")
        _check_ttl(ttl)
        self._capacity = capacity
        self._ttl = ttl
        self._on_evict = on_evict
        self._clock = clock
        self._lock = threading.Lock()
        self._map: dict[Any, _Link] = {}
        self._root = _Link()
        # Set once any entry carries a deadline; until then no operation reads the clock,
        # which keeps the common no-TTL path free of a function call per operation.
        self._timed = ttl is not None
        self._hits = self._misses = self._evictions = self._expirations = 0

    # ------------------------------------------------------------------ list primitives
    # Callers hold the lock. get() and put() inline the same rewiring (see get()).

    def _unlink(self, link: _Link) -> None:
        link.prev.next = link.next
        link.next.prev = link.prev

    def _remove_expired(self, link: _Link, dropped: list[tuple[Any, Any]]) -> None:
        self._unlink(link)
        del self._map[link.key]
        self._expirations += 1
        dropped.append((link.key, link.value))

    def _notify(self, dropped: list[tuple[Any, Any]]) -> None:
        # Runs after the lock is released (see module docstring).
        if self._on_evict is not None:
            for key, value in dropped:
                self._on_evict(key, value)

    # ------------------------------------------------------------------ public API

    @property
    def capacity(self) -> int:
        return self._capacity

    def get(self, key: K, default: Any = None) -> V | Any:
        """The value for ``key`` (and mark it most recently used), or ``default``."""
        with self._lock:
            link = self._map.get(key)
            if link is None:
                self._misses += 1
                return default
            if not (self._timed and link.expires <= self._clock()):
                # Hot path, kept free of calls and allocations on purpose: unlink and
                # re-insert just before root (the MRU end), as lru_cache does.
                link.prev.next = link.next
                link.next.prev = link.prev
                root = self._root
                last = root.prev
                link.prev = last
                link.next = root
                last.next = root.prev = link
                self._hits += 1
                return link.value
            dropped: list[tuple[Any, Any]] = []
            self._remove_expired(link, dropped)
            self._misses += 1
        self._notify(dropped)
        return default

    def put(self, key: K, value: V, *, ttl: float | None = None) -> None:
        """Insert or overwrite ``key``; either way it becomes the most recently used."""
        if ttl is None:
            ttl = self._ttl
        else:
            _check_ttl(ttl)
        with self._lock:
            if ttl is None:
                expires = math.inf
            else:
                self._timed = True
                expires = self._clock() + ttl
            root = self._root
            link = self._map.get(key)
            if link is not None:
                link.value = value
                link.expires = expires
                link.prev.next = link.next
                link.next.prev = link.prev
            else:
                link = _Link(key, value, expires)
                self._map[key] = link
            last = root.prev
            link.prev = last
            link.next = root
            last.next = root.prev = link
            if len(self._map) <= self._capacity:
                return
            # Over capacity only ever by one: evict the least recently used entry.
            victim = root.next
            root.next = victim.next
            victim.next.prev = root
            del self._map[victim.key]
            if self._timed and victim.expires <= self._clock():
                self._expirations += 1
            else:
                self._evictions += 1
        if self._on_evict is not None:
            self._on_evict(victim.key, victim.value)

    def peek(self, key: K, default: Any = None) -> V | Any:
        """The value for ``key`` without changing recency or hit/miss counters."""
        dropped: list[tuple[Any, Any]] = []
        with self._lock:
            link = self._map.get(key)
            if link is None:
                return default
            if not (self._timed and link.expires <= self._clock()):
                return link.value
            self._remove_expired(link, dropped)
        self._notify(dropped)
        return default

    def __contains__(self, key: object) -> bool:
        return self.peek(key, _MISSING) is not _MISSING  # type: ignore[arg-type]

    def delete(self, key: K) -> bool:
        """Remove ``key``; True when a live entry was removed."""
        dropped: list[tuple[Any, Any]] = []
        with self._lock:
            link = self._map.get(key)
            if link is None:
                return False
            if self._timed and link.expires <= self._clock():
                self._remove_expired(link, dropped)
                removed = False
            else:
                self._unlink(link)
                del self._map[key]
                return True
        self._notify(dropped)
        return removed

    def __len__(self) -> int:
        return len(self._map)

    def items(self) -> list[tuple[K, V]]:
        """Live entries, least to most recently used (expired ones are removed on the way)."""
        dropped: list[tuple[Any, Any]] = []
        with self._lock:
            now = self._clock() if self._timed else 0.0
            out: list[tuple[K, V]] = []
            link = self._root.next
            while link is not self._root:
                following = link.next
                if link.expires <= now:
                    self._remove_expired(link, dropped)
                else:
                    out.append((link.key, link.value))
                link = following
        self._notify(dropped)
        return out

    def clear(self) -> None:
        """Drop every entry (no callbacks: the caller asked for it). Counters are kept."""
        with self._lock:
            self._map.clear()
            self._root.prev = self._root.next = self._root

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits,
                self._misses,
                self._evictions,
                self._expirations,
                len(self._map),
                self._capacity,
            )

    def reset_stats(self) -> None:
        with self._lock:
            self._hits = self._misses = self._evictions = self._expirations = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(capacity={self._capacity}, size={len(self._map)})"

    def _check_invariants(self) -> None:
        """Raise AssertionError when the map and the linked list disagree (for tests)."""
        with self._lock:
            if len(self._map) > self._capacity:
                raise AssertionError(f"size {len(self._map)} > capacity {self._capacity}")
            seen = 0
            link = self._root
            while True:
                if link.next.prev is not link:
                    raise AssertionError("link.next.prev is not link")
                link = link.next
                if link is self._root:
                    break
                seen += 1
                if seen > len(self._map):
                    raise AssertionError("list longer than the map")
                if self._map.get(link.key) is not link:
                    raise AssertionError(f"map entry for {link.key!r} is not its list link")
            if seen != len(self._map):
                raise AssertionError(f"list holds {seen} links, map {len(self._map)}")
