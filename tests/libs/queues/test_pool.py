"""WorkerPool and parallel_map: every item once, backpressure, errors at join, no thread left."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from libs.queues import Closed, Full, PoolError, WorkerPool, parallel_map
from tests.libs.queues.waiters import until


class Recorder:
    """A worker function that records what it processed (thread-safe) and may wait on a gate."""

    def __init__(self, gate: threading.Event | None = None, fail: set[int] | None = None) -> None:
        self.lock = threading.Lock()
        self.done: list[int] = []
        self.started = 0
        self.threads: set[str] = set()
        self.gate = gate
        self.fail = fail or set()

    def __call__(self, item: int) -> None:
        with self.lock:
            self.started += 1
            self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            assert self.gate.wait(10), "gate never opened"
        if item in self.fail:
            raise ValueError(f"bad item {item}")
        with self.lock:
            self.done.append(item)


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("WorkerPool[", "parallel_map["))]


def test_every_submitted_item_is_processed_exactly_once_by_the_workers() -> None:
    work = Recorder()
    with WorkerPool(work, workers=4, maxsize=8) as pool:
        assert pool.workers == 4
        for i in range(2_000):
            pool.submit(i)
    assert Counter(work.done) == Counter(range(2_000))
    assert pool_threads() == []


def test_submit_blocks_while_the_queue_is_full() -> None:
    gate = threading.Event()
    work = Recorder(gate)
    pool = WorkerPool(work, workers=2, maxsize=3)
    for i in range(2 + 3):  # two taken by the (gated) workers, three queued
        pool.submit(i, timeout=5)
    until(lambda: work.started == 2, what="both workers busy")
    with pytest.raises(Full):
        pool.submit(99, timeout=0.05)
    blocked = threading.Thread(target=pool.submit, args=(5,))
    blocked.start()
    blocked.join(0.05)
    assert blocked.is_alive(), "submit returned although the queue was full"
    gate.set()
    blocked.join(5)
    assert not blocked.is_alive()
    pool.join()
    assert sorted(work.done) == [0, 1, 2, 3, 4, 5]


def test_join_raises_every_worker_error_as_a_pool_error() -> None:
    work = Recorder(fail={3, 7, 11})
    pool = WorkerPool(work, workers=3, maxsize=4)
    for i in range(20):
        pool.submit(i)
    pool.close()
    with pytest.raises(PoolError) as caught:
        pool.join()
    error = caught.value
    assert isinstance(error, ExceptionGroup)
    assert sorted(str(e) for e in error.exceptions) == ["bad item 11", "bad item 3", "bad item 7"]
    assert all(any("for item" in note for note in e.__notes__) for e in error.exceptions)
    assert "3 item(s) failed" in str(error)
    # The other items were all processed: one failure does not stop a worker.
    assert sorted(work.done) == sorted(set(range(20)) - {3, 7, 11})
    assert pool_threads() == []


def test_pool_errors_can_be_caught_by_kind_with_except_star() -> None:
    def work(item: int) -> None:
        raise (KeyError if item % 2 else ValueError)(item)

    caught: list[type[BaseException]] = []
    try:
        with WorkerPool(work, workers=2, maxsize=2) as pool:
            for i in range(4):
                pool.submit(i)
    except* KeyError as group:
        assert isinstance(group, PoolError)
        caught += [type(e) for e in group.exceptions]
    except* ValueError as group:
        caught += [type(e) for e in group.exceptions]
    assert sorted(c.__name__ for c in caught) == ["KeyError", "KeyError", "ValueError", "ValueError"]


def test_a_worker_that_raises_system_exit_keeps_working_and_reports_it() -> None:
    def work(item: int) -> None:
        if item < 3:
            raise SystemExit(item)  # would end a bare thread silently

    pool = WorkerPool(work, workers=1, maxsize=1)
    for i in range(10):
        pool.submit(i, timeout=10)  # with its only worker dead this would block
    with pytest.raises(PoolError) as caught:
        pool.join(timeout=10)
    assert [type(e.__cause__) for e in caught.value.exceptions] == [SystemExit] * 3


def test_close_without_drain_returns_the_items_never_started() -> None:
    gate = threading.Event()
    work = Recorder(gate)
    pool = WorkerPool(work, workers=2, maxsize=10)
    for i in range(12):
        pool.submit(i)
    until(lambda: work.started == 2, what="both workers busy")
    dropped = pool.close(drain=False)
    gate.set()
    pool.join()
    assert len(dropped) == 10
    assert sorted(work.done + dropped) == list(range(12))
    with pytest.raises(Closed):
        pool.submit(99)


def test_join_with_a_timeout_reports_a_worker_still_running() -> None:
    gate = threading.Event()
    pool = WorkerPool(Recorder(gate), workers=1, maxsize=1)
    pool.submit(1)
    with pytest.raises(TimeoutError, match="still running"):
        pool.join(timeout=0.05)
    gate.set()
    pool.join(timeout=5)
    assert pool_threads() == []


def test_a_failing_block_cancels_the_pool_and_keeps_its_own_exception() -> None:
    gate = threading.Event()
    work = Recorder(gate, fail={0})
    with (
        pytest.raises(RuntimeError, match="producer broke") as caught,
        WorkerPool(work, workers=1, maxsize=5) as pool,
    ):
        for i in range(4):
            pool.submit(i)
        until(lambda: work.started == 1, what="worker busy")
        gate.set()
        raise RuntimeError("producer broke")
    assert pool_threads() == []
    # Item 0 failed in the worker; that error is reported on the body's exception, not lost.
    assert any("bad item 0" in note for note in getattr(caught.value, "__notes__", []))


def test_wait_idle_waits_for_submitted_work_and_keeps_the_pool_open() -> None:
    work = Recorder()
    with WorkerPool(work, workers=2, maxsize=4) as pool:
        for i in range(10):
            pool.submit(i)
        assert pool.wait_idle(timeout=10)
        assert sorted(work.done) == list(range(10))
        pool.submit(10)
    assert sorted(work.done) == list(range(11))


@pytest.mark.parametrize("drain", [True, False])
def test_many_producers_and_a_close_in_mid_flight_account_for_every_item(drain: bool) -> None:
    # 8 producer threads submit into 4 workers; the pool closes while they are still at it.
    # Each item ends processed, dropped (returned by close), or refused (submit raised Closed).
    work = Recorder()
    pool = WorkerPool(work, workers=4, maxsize=16)
    refused: list[list[int]] = [[] for _ in range(8)]

    def produce(p: int) -> None:
        rng = random.Random(p)
        for n in range(1_000):
            item = p * 1_000 + n
            try:
                pool.submit(item, timeout=rng.choice([None, 0.001]))
            except (Closed, Full):
                refused[p].append(item)

    producers = [threading.Thread(target=produce, args=(p,)) for p in range(8)]
    for t in producers:
        t.start()
    until(lambda: len(work.done) >= 2_000, timeout=15, what="2000 items processed")
    dropped = pool.close(drain=drain)
    for t in producers:
        t.join(15)
        assert not t.is_alive()
    pool.join(timeout=15)
    everything = Counter(work.done) + Counter(dropped) + Counter(x for xs in refused for x in xs)
    assert everything == Counter(range(8_000))
    if drain:
        assert dropped == []


def test_pool_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="workers"):
        WorkerPool(print, workers=0, maxsize=1)
    with pytest.raises(ValueError, match="maxsize"):
        WorkerPool(print, workers=1, maxsize=0)


# -- parallel_map ------------------------------------------------------------------------------


def test_parallel_map_yields_every_item_with_its_result_or_error() -> None:
    def inverse(x: int) -> float:
        return 1 / x

    results = {
        item: (value, error) for item, value, error in parallel_map(inverse, range(-50, 50), workers=4)
    }
    assert set(results) == set(range(-50, 50))
    assert isinstance(results[0][1], ZeroDivisionError) and results[0][0] is None
    assert all(results[x] == (1 / x, None) for x in range(-50, 50) if x)
    assert pool_threads() == []


def test_parallel_map_runs_the_calls_on_all_workers_at_once() -> None:
    # Each call waits for three others: only four calls running together can pass the barrier.
    barrier = threading.Barrier(4, timeout=10)
    outcomes = list(parallel_map(lambda x: barrier.wait(), range(8), workers=4))
    assert [error for _, _, error in outcomes] == [None] * 8


def test_parallel_map_keeps_at_most_maxsize_items_in_flight() -> None:
    in_flight = 0
    peak = 0

    def source() -> Iterator[int]:
        nonlocal in_flight, peak
        for i in range(500):
            in_flight += 1  # the generator runs in the consumer's thread: no race
            peak = max(peak, in_flight)
            yield i

    seen = []
    for item, value, _ in parallel_map(lambda x: x * 2, source(), workers=4, maxsize=6):
        in_flight -= 1
        seen.append((item, value))
    assert sorted(seen) == [(i, 2 * i) for i in range(500)]
    assert 1 <= peak <= 6


def test_leaving_parallel_map_early_stops_its_threads_and_the_source() -> None:
    drawn = 0

    def endless() -> Iterator[int]:
        nonlocal drawn
        while True:
            drawn += 1
            yield drawn

    results = parallel_map(lambda x: x, endless(), workers=3, maxsize=5)
    taken = [next(results) for _ in range(10)]
    results.close()  # what a `break` out of a for loop does
    assert len(taken) == 10
    assert drawn <= 10 + 5
    assert pool_threads() == []


def test_an_error_from_the_source_propagates_and_stops_the_threads() -> None:
    def broken() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("source broke")

    with pytest.raises(OSError, match="source broke"):
        list(parallel_map(lambda x: x, broken(), workers=2))
    assert pool_threads() == []


def test_parallel_map_returns_even_a_system_exit_instead_of_hanging() -> None:
    def work(item: int) -> int:
        if item == 2:
            raise SystemExit("bye")
        return item

    outcomes = {item: error for item, _, error in parallel_map(work, range(5), workers=1)}
    assert isinstance(outcomes.pop(2), SystemExit)
    assert outcomes == dict.fromkeys([0, 1, 3, 4])


def test_parallel_map_on_nothing_yields_nothing() -> None:
    assert list(parallel_map(lambda x: x, [], workers=2)) == []


def test_parallel_map_arguments_are_validated_at_the_call() -> None:
    with pytest.raises(ValueError, match="workers"):
        parallel_map(lambda x: x, [1], workers=0)
    with pytest.raises(ValueError, match="maxsize"):
        parallel_map(lambda x: x, [1], workers=1, maxsize=0)


def test_parallel_map_on_empty_and_single_inputs_returns_at_once():
    from libs.queues import parallel_map

    assert list(parallel_map(lambda x: x, [], workers=4)) == []
    assert list(parallel_map(lambda x: x * 2, [21], workers=4)) == [(21, 42, None)]
