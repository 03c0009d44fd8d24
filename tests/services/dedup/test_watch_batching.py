"""watch.Batcher: when a batch of changes ends. A scripted RustNotify and a clock the test
moves, so nothing here depends on how fast the machine is."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from services.dedup.files.watch import FINE_STEP_MS, HOT_MAX_MS, QUIET_MIN_MS, Batcher


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ScriptedNotify:
    """Answers RustNotify.watch from a script: each item is (seconds the call takes, answer).
    "timeout" is the Batcher's own deadline: the stop event it passed must say so by raising
    (RustNotify's timeout is never used: it can drop a change). Each call is recorded as
    (debounce_ms, step_ms, the deadline in ms from the call)."""

    def __init__(self, clock: Clock, script: list[tuple[float, Any]]) -> None:
        self.clock = clock
        self.script = list(script)
        self.calls: list[tuple[int, int, float]] = []

    def watch(self, debounce_ms: int, step_ms: int, timeout_ms: int, stop_event: Any) -> Any:
        assert timeout_ms == 0  # no watchfiles timeout, ever
        self.calls.append((debounce_ms, step_ms, round((stop_event.until - self.clock.now) * 1000, 6)))
        took, answer = self.script.pop(0)
        self.clock.now += took
        if answer == "timeout":
            stop_event.is_set()  # raises once the deadline has passed, as RustNotify would see
            raise AssertionError("the script ran a call past no deadline")
        return answer


def _batcher(clock: Clock, **kw: Any) -> Batcher:
    kw.setdefault("step_ms", 10)
    kw.setdefault("debounce_ms", 1600)
    return Batcher(clock=clock, **kw)


STOP = threading.Event()


@pytest.mark.parametrize("answer", ["timeout", "stop", "signal"])
def test_idle_answers_pass_through(answer: str) -> None:
    clock = Clock()
    notify = ScriptedNotify(clock, [(0.5, answer)])
    assert _batcher(clock).next(notify, STOP) == answer
    assert notify.calls == [(1, 10, 500)]  # idle: looked at every step_ms, 500 ms at most


def test_a_burst_is_one_batch_until_the_quiet_window() -> None:
    clock = Clock()
    a, b, c = (1, "/r/a"), (1, "/r/b"), (2, "/r/c")
    notify = ScriptedNotify(clock, [(0.02, {a}), (0.004, {b}), (0.004, {c, a}), (0.002, "timeout")])
    assert _batcher(clock).next(notify, STOP) == {a, b, c}
    assert not notify.script
    # after the idle look (every step_ms), fine looks until the quiet window ends
    assert notify.calls == [(1, 10, 500)] + [(1, FINE_STEP_MS, QUIET_MIN_MS)] * 3


def test_debounce_ends_a_batch_that_never_goes_quiet() -> None:
    clock = Clock()
    script: list[tuple[float, Any]] = [(0.02, {(1, "/r/0")})]
    script += [(0.002, {(1, f"/r/{i}")}) for i in range(1, 100)]
    notify = ScriptedNotify(clock, script)
    got = _batcher(clock, debounce_ms=50).next(notify, STOP)
    assert isinstance(got, set)
    assert 20 <= len(got) <= 30  # 50 ms of changes 2 ms apart, then the batch is answered
    assert notify.script  # the rest comes in the next batch


def test_stop_during_a_burst_stops() -> None:
    clock = Clock()
    notify = ScriptedNotify(clock, [(0.02, {(1, "/r/a")}), (0.001, "stop")])
    assert _batcher(clock).next(notify, STOP) == "stop"


def test_a_slow_caller_is_not_made_to_wait_again() -> None:
    """The window counts from the last change seen: time spent before looking again counts."""

    class LateClock(Clock):
        def __call__(self) -> float:
            self.now += 0.003  # every look at the clock takes 3 ms (a loaded box)
            return self.now

    clock = LateClock()
    notify = ScriptedNotify(clock, [(0.02, {(1, "/r/a")})])
    assert _batcher(clock).next(notify, STOP) == {(1, "/r/a")}
    assert len(notify.calls) == 1  # 3 ms passed between the last change seen and the check


def test_changes_right_after_an_answer_widen_the_window_and_quiet_answers_narrow_it() -> None:
    clock = Clock()
    batcher = _batcher(clock, step_ms=10)
    a, b = (1, "/r/a"), (1, "/r/b")
    # a burst, answered; more of it comes while the answer is made: taken at the first fine
    # look (not a step or two later), and the window doubles
    notify = ScriptedNotify(clock, [(0.02, {a}), (0.003, "timeout")])
    assert batcher.next(notify, STOP) == {a}
    clock.now += 0.03  # the answer
    batcher.answered()
    notify = ScriptedNotify(clock, [(0.002, {b}), (0.005, "timeout")])
    assert batcher.next(notify, STOP) == {b}
    assert notify.calls[0][1] == FINE_STEP_MS
    assert notify.calls[0][2] == 20  # hot for 2 x step_ms after the answer
    assert batcher.floor_ms == 2 * QUIET_MIN_MS and batcher.cuts == 1
    assert notify.calls[1] == (1, FINE_STEP_MS, 2 * QUIET_MIN_MS)
    # cut again and again: at most step_ms
    for _ in range(5):
        batcher.answered()
        notify = ScriptedNotify(clock, [(0.001, {a}), (0.02, "timeout")])
        batcher.next(notify, STOP)
    assert batcher.floor_ms == 10
    # answers that nothing follows: the window comes back down, to QUIET_MIN_MS at least
    for _ in range(20):
        batcher.answered()
        notify = ScriptedNotify(clock, [(0.02, "timeout")])
        assert batcher.next(notify, STOP) == "timeout"
    assert batcher.floor_ms == QUIET_MIN_MS
    # not hot any more: the idle step again
    notify = ScriptedNotify(clock, [(0.5, "timeout")])
    batcher.next(notify, STOP)
    assert notify.calls == [(1, 10, 500)]


def test_the_fine_looks_after_an_answer_are_bounded() -> None:
    clock = Clock()
    batcher = _batcher(clock, step_ms=1000)  # a long idle step: not 2 s of looks every 1 ms
    batcher.answered()
    notify = ScriptedNotify(clock, [(0.1, "timeout")])
    assert batcher.next(notify, STOP) == "timeout"
    assert notify.calls == [(1, FINE_STEP_MS, HOT_MAX_MS)]


def test_the_deadline_leaves_every_change_in_the_real_rustnotify(tmp_path: Any) -> None:
    """Why Batcher._watch raises through is_set instead of passing watchfiles a timeout: the
    raise leaves the event set alone, so a change that came before it is in the next answer.
    (watchfiles 1.2.0's own timeout clears the set after reading its size unlocked.) If an
    upgrade of watchfiles clears on this path too, this fails."""
    from watchfiles._rust_notify import RustNotify

    notify = RustNotify([str(tmp_path)], False, False, 300, True, True)
    try:
        batcher = Batcher(step_ms=1, debounce_ms=1600)
        (tmp_path / "a").write_bytes(b"x")
        first = batcher._watch(notify, 1, 5.0, threading.Event())
        assert isinstance(first, set) and any(p.endswith("/a") for _, p in first)
        (tmp_path / "b").write_bytes(b"y")
        # Let the notify thread put b's events in the set first (a longer wait only makes
        # the test stricter: if they come later, the check below passes either way).
        time.sleep(0.2)
        for _ in range(3):
            assert batcher._watch(notify, 1, 0.0, threading.Event()) == "timeout"
        got = batcher._watch(notify, 1, 5.0, threading.Event())
        assert isinstance(got, set) and any(p.endswith("/b") for _, p in got)
    finally:
        notify.close()
