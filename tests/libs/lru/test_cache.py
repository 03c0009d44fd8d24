"""LRUCache: recency, eviction, TTL, callbacks and counters, one property per test."""

from __future__ import annotations

import pytest

from libs.lru import CacheStats, LRUCache


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_get_hit_refreshes_recency_so_the_other_key_is_evicted() -> None:
    c: LRUCache[str, int] = LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1
    c.put("c", 3)
    assert c.items() == [("a", 1), ("c", 3)]
    assert "b" not in c


def test_overwrite_refreshes_recency_and_replaces_value() -> None:
    c: LRUCache[str, int] = LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    c.put("a", 10)
    c.put("c", 3)
    assert c.items() == [("a", 10), ("c", 3)]


def test_peek_and_contains_do_not_change_recency() -> None:
    c: LRUCache[str, int] = LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.peek("a") == 1
    assert "a" in c
    c.put("c", 3)
    assert c.items() == [("b", 2), ("c", 3)]
    assert c.peek("a", "gone") == "gone"


def test_items_are_ordered_least_to_most_recent() -> None:
    c: LRUCache[int, int] = LRUCache(5)
    for k in range(5):
        c.put(k, k * k)
    c.get(2)
    c.get(0)
    assert [k for k, _ in c.items()] == [1, 3, 4, 2, 0]


def test_eviction_happens_after_insert_and_only_when_over_capacity() -> None:
    evicted: list[tuple[int, str]] = []
    c: LRUCache[int, str] = LRUCache(3, on_evict=lambda k, v: evicted.append((k, v)))
    for k in range(3):
        c.put(k, str(k))
    assert evicted == [] and len(c) == 3
    c.put(3, "3")
    assert evicted == [(0, "0")]
    assert len(c) == 3
    c.put(3, "three")  # overwrite of a present key never evicts
    assert evicted == [(0, "0")]


def test_capacity_one_keeps_only_the_latest() -> None:
    c: LRUCache[str, int] = LRUCache(1)
    c.put("a", 1)
    c.put("b", 2)
    assert c.items() == [("b", 2)]
    assert c.get("a") is None


def test_delete_reports_whether_something_was_removed() -> None:
    c: LRUCache[str, int] = LRUCache(2)
    c.put("a", 1)
    assert c.delete("a") is True
    assert c.delete("a") is False
    assert len(c) == 0 and c.items() == []
    c.put("b", 2)
    c.put("c", 3)
    c.put("d", 4)
    assert c.items() == [("c", 3), ("d", 4)]


def test_get_default_and_falsy_values_are_distinguished() -> None:
    c: LRUCache[str, object] = LRUCache(3)
    c.put("none", None)
    c.put("zero", 0)
    sentinel = object()
    assert c.get("none", sentinel) is None
    assert c.get("zero", sentinel) == 0
    assert c.get("missing", sentinel) is sentinel


def test_counters_count_hits_misses_and_evictions() -> None:
    c: LRUCache[int, int] = LRUCache(2)
    c.put(1, 1)
    c.put(2, 2)
    c.get(1)
    c.get(3)
    c.put(3, 3)
    c.peek(1)  # peeks are not counted
    assert c.stats() == CacheStats(hits=1, misses=1, evictions=1, expirations=0, size=2, capacity=2)
    c.reset_stats()
    assert c.stats() == CacheStats(0, 0, 0, 0, 2, 2)


def test_clear_empties_and_the_cache_is_usable_after() -> None:
    c: LRUCache[int, int] = LRUCache(2)
    c.put(1, 1)
    c.put(2, 2)
    c.clear()
    assert len(c) == 0 and c.items() == []
    c.put(3, 3)
    assert c.items() == [(3, 3)]
    c._check_invariants()


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True, None])
def test_capacity_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValueError, match="capacity"):
        LRUCache(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan")])
def test_ttl_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        LRUCache(2, ttl=bad)
    with pytest.raises(ValueError, match="ttl"):
        LRUCache(2).put("a", 1, ttl=bad)


def test_entry_is_live_on_the_half_open_interval_of_its_ttl() -> None:
    clock = FakeClock()
    c: LRUCache[str, int] = LRUCache(4, ttl=10, clock=clock)
    c.put("a", 1)
    clock.now += 9.999
    assert c.get("a") == 1
    clock.now += 0.001
    assert c.get("a") is None
    assert len(c) == 0
    assert c.stats().expirations == 1
    assert c.stats().misses == 1


def test_hit_does_not_extend_the_ttl_but_overwrite_restarts_it() -> None:
    clock = FakeClock()
    c: LRUCache[str, int] = LRUCache(4, ttl=10, clock=clock)
    c.put("a", 1)
    clock.now += 6
    assert c.get("a") == 1
    clock.now += 6
    assert c.get("a") is None
    c.put("b", 1)
    clock.now += 6
    c.put("b", 2)
    clock.now += 6
    assert c.get("b") == 2


def test_per_entry_ttl_overrides_default_and_can_be_set_without_default() -> None:
    clock = FakeClock()
    c: LRUCache[str, int] = LRUCache(4, clock=clock)
    c.put("short", 1, ttl=1)
    c.put("forever", 2)
    clock.now += 1_000_000
    assert c.items() == [("forever", 2)]
    assert c.stats().expirations == 1


def test_expired_entries_vanish_from_peek_contains_delete_and_items() -> None:
    clock = FakeClock()
    dropped: list[tuple[str, int]] = []
    c: LRUCache[str, int] = LRUCache(8, ttl=5, clock=clock, on_evict=lambda k, v: dropped.append((k, v)))
    for i, k in enumerate("abcd"):
        c.put(k, i)
    c.put("z", 99, ttl=100)
    clock.now += 5
    assert c.peek("a") is None
    assert "b" not in c
    assert c.delete("c") is False
    assert c.items() == [("z", 99)]
    assert sorted(dropped) == [("a", 0), ("b", 1), ("c", 2), ("d", 3)]
    assert c.stats().expirations == 4
    c._check_invariants()


def test_capacity_victim_that_already_expired_counts_as_expiration() -> None:
    clock = FakeClock()
    c: LRUCache[str, int] = LRUCache(1, ttl=1, clock=clock)
    c.put("a", 1)
    clock.now += 2
    c.put("b", 2)
    s = c.stats()
    assert (s.evictions, s.expirations) == (0, 1)
    c.put("c", 3)
    assert c.stats().evictions == 1


def test_on_evict_runs_outside_the_lock_so_it_may_reenter_the_cache() -> None:
    seen: list[tuple[str, int, int]] = []
    c: LRUCache[str, int] = LRUCache(1)

    def on_evict(key: str, value: int) -> None:
        # Would deadlock if called under the (non-reentrant) lock.
        seen.append((key, value, len(c.items())))
        c.peek("anything")

    c._on_evict = on_evict
    c.put("a", 1)
    c.put("b", 2)
    assert seen == [("a", 1, 1)]
    assert c._lock.acquire(blocking=False)
    c._lock.release()


def test_callback_error_propagates_after_the_cache_is_consistent() -> None:
    def boom(key: str, value: int) -> None:
        raise RuntimeError(f"evicted {key}")

    c: LRUCache[str, int] = LRUCache(1, on_evict=boom)
    c.put("a", 1)
    with pytest.raises(RuntimeError, match="evicted a"):
        c.put("b", 2)
    assert c.items() == [("b", 2)]
    c._check_invariants()


def test_no_clock_reads_without_any_ttl() -> None:
    calls = 0

    def clock() -> float:
        nonlocal calls
        calls += 1
        return 0.0

    c: LRUCache[int, int] = LRUCache(2, clock=clock)
    for k in range(10):
        c.put(k, k)
        c.get(k)
        c.peek(k)
    c.items()
    assert calls == 0
