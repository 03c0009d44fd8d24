"""watch.next_batch: when a batch of changes ends. A scripted RustNotify and a clock the test
moves, so nothing here depends on how fast the machine is."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from services.dedup.files.watch import FINE_STEP_MS, QUIET_MIN_MS, next_batch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ScriptedNotify:
    """Answers RustNotify.watch from a script: each item is (seconds the call takes, answer)."""

    def __init__(self, clock: Clock, script: list[tuple[float, Any]]) -> None:
        self.clock = clock
        self.script = list(script)
        self.calls: list[tuple[int, int, int]] = []

    def watch(self, debounce_ms: int, step_ms: int, timeout_ms: int, stop_event: Any) -> Any:
        self.calls.append((debounce_ms, step_ms, timeout_ms))
        took, answer = self.script.pop(0)
        self.clock.now += took
        return answer


def _batch(notify: ScriptedNotify, clock: Clock, **kw: Any) -> Any:
    kw.setdefault("step_ms", 10)
    kw.setdefault("debounce_ms", 1600)
    return next_batch(notify, threading.Event(), clock=clock, **kw)


@pytest.mark.parametrize("answer", ["timeout", "stop", "signal"])
def test_idle_answers_pass_through(answer: str) -> None:
    clock = Clock()
    notify = ScriptedNotify(clock, [(0.5, answer)])
    assert _batch(notify, clock) == answer
    assert notify.calls == [(1, 10, 500)]  # idle: looked at every step_ms


def test_a_burst_is_one_batch_until_the_quiet_window() -> None:
    clock = Clock()
    a, b, c = (1, "/r/a"), (1, "/r/b"), (2, "/r/c")
    notify = ScriptedNotify(clock, [(0.02, {a}), (0.002, {b}), (0.002, {c, a}), (0.003, "timeout")])
    assert _batch(notify, clock) == {a, b, c}
    assert not notify.script
    # after the idle look, the set is looked at every FINE_STEP_MS; a gap of one fine step
    # between changes keeps the quiet window at its minimum
    assert [call[1] for call in notify.calls] == [10, FINE_STEP_MS, FINE_STEP_MS, FINE_STEP_MS]
    assert notify.calls[-1][2] == QUIET_MIN_MS


def test_the_quiet_window_grows_with_the_gaps_of_the_burst() -> None:
    clock = Clock()
    notify = ScriptedNotify(clock, [(0.02, {(1, "/r/a")}), (0.004, {(1, "/r/b")}), (0.007, "timeout")])
    assert _batch(notify, clock, step_ms=50) == {(1, "/r/a"), (1, "/r/b")}
    # a gap of 3 ms (4 ms less the step that returned it): the next window is twice that
    assert notify.calls[1][2] == QUIET_MIN_MS
    assert notify.calls[2][2] == 6


def test_the_quiet_window_is_at_most_step_ms() -> None:
    clock = Clock()
    notify = ScriptedNotify(clock, [(0.02, {(1, "/r/a")}), (0.2, {(1, "/r/b")}), (0.01, "timeout")])
    assert _batch(notify, clock, step_ms=10) == {(1, "/r/a"), (1, "/r/b")}
    assert notify.calls[2][2] == 10


def test_debounce_ends_a_batch_that_never_goes_quiet() -> None:
    clock = Clock()
    script: list[tuple[float, Any]] = [(0.02, {(1, "/r/0")})]
    script += [(0.002, {(1, f"/r/{i}")}) for i in range(1, 100)]
    notify = ScriptedNotify(clock, script)
    got = _batch(notify, clock, debounce_ms=50)
    assert isinstance(got, set)
    assert 20 <= len(got) <= 30  # 50 ms of changes 2 ms apart, then the batch is answered
    assert notify.script  # the rest comes in the next batch


def test_stop_during_a_burst_stops() -> None:
    clock = Clock()
    notify = ScriptedNotify(clock, [(0.02, {(1, "/r/a")}), (0.001, "stop")])
    assert _batch(notify, clock) == "stop"


def test_a_slow_caller_is_not_made_to_wait_again() -> None:
    """The window counts from the last change seen: time spent before looking again counts."""

    class LateClock(Clock):
        def __call__(self) -> float:
            self.now += 0.003  # every look at the clock takes 3 ms (a loaded box)
            return self.now

    clock = LateClock()
    notify = ScriptedNotify(clock, [(0.02, {(1, "/r/a")})])
    assert _batch(notify, clock) == {(1, "/r/a")}
    assert len(notify.calls) == 1  # 3 ms passed between the last change seen and the check
