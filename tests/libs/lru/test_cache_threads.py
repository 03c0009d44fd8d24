"""LRUCache under many threads: invariants hold at every observation, counters add up."""

from __future__ import annotations

import itertools
import random
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from libs.lru import LRUCache

THREADS = 16
OPS_PER_THREAD = 4000
KEYS = 64
CAPACITY = 16
JOIN_TIMEOUT = 60.0


def _hammer(
    cache: LRUCache[int, tuple[int, int, int]], tid: int, gets: list[int], errors: list[str], capacity: int
) -> None:
    rng = random.Random(tid)
    n_gets = 0
    for seq in range(OPS_PER_THREAD):
        key = rng.randrange(KEYS)
        op = rng.random()
        if op < 0.45:
            cache.put(key, (key, tid, seq))
        elif op < 0.85:
            n_gets += 1
            got = cache.get(key)
            # A value is only ever stored under its own key; anything else is corruption.
            if got is not None and got[0] != key:
                errors.append(f"get({key}) returned {got}")
        elif op < 0.93:
            cache.delete(key)
        elif op < 0.97:
            cache.peek(key)
            _ = key in cache
        else:
            if len(cache.items()) > capacity:
                errors.append("items() longer than capacity")
    gets[tid] = n_gets


@pytest.fixture(autouse=True)
def _switch_often() -> Iterator[None]:
    # Thread switches every microsecond instead of every 5 ms, so operations interleave
    # mid-way; without this a lock-free cache passes the test by luck of the GIL.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _run(cache: LRUCache[int, tuple[int, int, int]], capacity: int = CAPACITY) -> tuple[list[int], list[str]]:
    gets = [0] * THREADS
    errors: list[str] = []
    stop = threading.Event()
    checks = 0

    def checker() -> None:
        nonlocal checks
        while not stop.is_set():
            try:
                cache._check_invariants()
            except AssertionError as e:
                errors.append(f"invariant: {e}")
            checks += 1
            time.sleep(0.001)

    workers = [
        threading.Thread(target=_hammer, args=(cache, t, gets, errors, capacity)) for t in range(THREADS)
    ]
    watcher = threading.Thread(target=checker)
    watcher.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join(JOIN_TIMEOUT)
    stop.set()
    watcher.join(JOIN_TIMEOUT)
    assert not any(w.is_alive() for w in workers), "a worker did not finish: deadlock?"
    assert not watcher.is_alive()
    assert checks > 0
    return gets, errors


def test_many_threads_keep_map_and_list_consistent_and_counters_exact() -> None:
    evicted: list[int] = []
    evict_lock = threading.Lock()

    def on_evict(key: int, value: tuple[int, int, int]) -> None:
        with evict_lock:
            evicted.append(key)

    cache: LRUCache[int, tuple[int, int, int]] = LRUCache(CAPACITY, on_evict=on_evict)
    gets, errors = _run(cache)
    assert errors == []
    cache._check_invariants()
    s = cache.stats()
    assert s.hits + s.misses == sum(gets)
    assert s.hits > 0 and s.misses > 0
    assert s.evictions == len(evicted) > 0
    assert s.size == len(cache) <= CAPACITY


def test_many_threads_with_expiry_keep_invariants() -> None:
    # Every clock read advances time by 1 ms (itertools.count is atomic under the GIL), so
    # entries expire mid-run and expiry races with eviction and deletion.
    ticks = itertools.count()
    cache: LRUCache[int, tuple[int, int, int]] = LRUCache(
        CAPACITY * 4, ttl=0.02, clock=lambda: next(ticks) * 0.001
    )
    gets, errors = _run(cache, capacity=CAPACITY * 4)
    assert errors == []
    cache._check_invariants()
    s = cache.stats()
    assert s.hits + s.misses == sum(gets)
    assert s.expirations > 0 and s.hits > 0
