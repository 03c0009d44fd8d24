"""Frontier order among hosts eligible at once: the bigger host first, unknown sizes before both,
a bounded head start, and politeness untouched (a fake clock: nothing here waits)."""

from __future__ import annotations

import asyncio
from typing import Any

from services.crawler.frontier import HEAD_START_PER_URL_S, MAX_HEAD_START_S, Frontier
from services.crawler.settings import PolitenessConfig


class _Store:
    """The frontier only asks a store for shared politeness records (none here)."""

    def load_host(self, host: str) -> None:
        return None


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _frontier(clock: _Clock) -> Frontier:
    store: Any = _Store()
    return Frontier(store, PolitenessConfig(min_delay=1.0), clock=clock, wall=clock)


def _pop(frontier: Frontier) -> str | None:
    return asyncio.run(frontier.next_host(timeout=0))


def _explored(frontier: Frontier, host: str, requests: int, ready: int) -> None:
    slot = frontier.slot(host)
    slot.requests = requests
    frontier.note_work(host, ready)


def _eligible_now(frontier: Frontier, clock: _Clock, host: str) -> None:
    """The host's gap ended now (as on_finish sets it), and it is queued."""
    frontier.slot(host).next_eligible = clock.now
    frontier.schedule(host)


def test_bigger_host_first_among_eligible() -> None:
    clock = _Clock()
    f = _frontier(clock)
    _explored(f, "small.test", requests=2, ready=1)
    _explored(f, "big.test", requests=2, ready=6)
    _explored(f, "mid.test", requests=3, ready=2)
    for host in ("small.test", "mid.test", "big.test"):  # eligible in this order
        _eligible_now(f, clock, host)
        clock.now += 0.001
    assert [_pop(f) for _ in range(3)] == ["big.test", "mid.test", "small.test"]


def test_unknown_size_ranks_as_the_mean_known_size() -> None:
    clock = _Clock()
    f = _frontier(clock)
    _explored(f, "small.test", requests=2, ready=0)  # size 2
    _explored(f, "big.test", requests=2, ready=8)  # size 10: the mean is 6
    for host in ("small.test", "big.test", "new.test"):  # new.test: no request yet
        _eligible_now(f, clock, host)
        clock.now += 0.001
    assert [_pop(f) for _ in range(3)] == ["big.test", "new.test", "small.test"]


def test_unknown_sizes_fifo_before_anything_is_known() -> None:
    clock = _Clock()
    f = _frontier(clock)
    for host in ("a.test", "b.test", "c.test"):
        _eligible_now(f, clock, host)
        clock.now += 0.001
    assert [_pop(f) for _ in range(3)] == ["a.test", "b.test", "c.test"]


def test_links_found_add_work() -> None:
    clock = _Clock()
    f = _frontier(clock)
    _explored(f, "a.test", requests=2, ready=0)
    _explored(f, "b.test", requests=2, ready=1)
    f.note_work("a.test", 3, add=True)  # a page of a.test linked three new URLs of it
    _eligible_now(f, clock, "b.test")
    clock.now += 0.001
    _eligible_now(f, clock, "a.test")
    assert _pop(f) == "a.test"
    f.note_work("a.test", -10, add=True)
    assert f.work["a.test"] == 0  # never below zero


def test_head_start_is_bounded() -> None:
    clock = _Clock()
    f = _frontier(clock)
    _explored(f, "huge.test", requests=2, ready=100_000)
    _explored(f, "small.test", requests=2, ready=0)
    _eligible_now(f, clock, "small.test")  # eligible longer ago than the largest head start
    clock.now += MAX_HEAD_START_S + 1
    _eligible_now(f, clock, "huge.test")
    assert _pop(f) == "small.test"
    assert MAX_HEAD_START_S / HEAD_START_PER_URL_S < 100_000


def test_priority_never_makes_a_host_eligible_sooner() -> None:
    clock = _Clock()
    f = _frontier(clock)
    _explored(f, "big.test", requests=5, ready=50)
    f.slot("big.test").next_eligible = clock.now + 0.5  # its politeness gap runs
    f.schedule("big.test")
    assert _pop(f) is None  # not before its time, however big
    _explored(f, "small.test", requests=2, ready=0)
    _eligible_now(f, clock, "small.test")
    assert _pop(f) == "small.test"
    clock.now += 0.5
    assert _pop(f) == "big.test"


def test_busy_host_waits_for_its_turn_to_end() -> None:
    clock = _Clock()
    f = _frontier(clock)
    _explored(f, "a.test", requests=2, ready=3)
    f.schedule("a.test")
    assert _pop(f) == "a.test"  # its turn is in progress
    f.schedule("a.test")  # (links found meanwhile)
    assert _pop(f) is None and not f.idle
    f.end_turn("a.test")
    assert _pop(f) == "a.test"
