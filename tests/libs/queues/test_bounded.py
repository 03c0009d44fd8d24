"""BoundedQueue, one behaviour per test: FIFO, bounds, timeouts, task accounting, close."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import pytest

from libs.queues import BoundedQueue, Closed, Empty, Full
from tests.libs.queues.waiters import parked


class Outcome:
    """Run ``call`` on a thread and keep what it returned or raised."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.value: object = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], object]) -> None:
        try:
            self.value = call()
        except BaseException as exc:
            self.error = exc

    def wait(self) -> Outcome:
        self.thread.join(5.0)
        assert not self.thread.is_alive(), "the call never returned"
        return self


def test_items_come_out_in_the_order_they_went_in() -> None:
    q: BoundedQueue[int] = BoundedQueue(5)
    for i in range(5):
        q.put(i)
    assert [q.get() for _ in range(5)] == [0, 1, 2, 3, 4]


def test_empty_and_full_errors_are_the_standard_librarys() -> None:
    assert Empty is queue.Empty and Full is queue.Full
    q: BoundedQueue[int] = BoundedQueue(1)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.put_nowait(1)
    with pytest.raises(queue.Full):
        q.put_nowait(2)
    with pytest.raises(queue.Full):
        q.put(2, block=False)


def test_qsize_empty_full_follow_the_contents() -> None:
    q: BoundedQueue[str] = BoundedQueue(2)
    assert (q.qsize(), q.empty(), q.full()) == (0, True, False)
    q.put("a")
    assert (q.qsize(), q.empty(), q.full()) == (1, False, False)
    q.put("b")
    assert (q.qsize(), q.empty(), q.full()) == (2, False, True)
    q.get()
    assert (q.qsize(), q.empty(), q.full()) == (1, False, False)


@pytest.mark.parametrize("maxsize", [0, -1])
def test_a_queue_without_room_is_refused(maxsize: int) -> None:
    with pytest.raises(ValueError, match="maxsize"):
        BoundedQueue(maxsize)


def test_a_negative_timeout_is_refused() -> None:
    q: BoundedQueue[int] = BoundedQueue(1)
    with pytest.raises(ValueError, match="timeout"):
        q.get(timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        q.put(1, timeout=-0.5)
    with pytest.raises(ValueError, match="timeout"):
        q.join(timeout=-1)
    with pytest.raises(ValueError, match="timeout"):
        q.get(timeout=float("nan"))


def test_get_with_timeout_gives_up_with_empty() -> None:
    q: BoundedQueue[int] = BoundedQueue(1)
    with pytest.raises(Empty):
        q.get(timeout=0.02)
    with pytest.raises(Empty):
        q.get(timeout=0)


def test_put_with_timeout_gives_up_with_full_and_queues_nothing() -> None:
    q: BoundedQueue[int] = BoundedQueue(1)
    q.put(1)
    with pytest.raises(Full):
        q.put(2, timeout=0.02)
    assert q.get_nowait() == 1
    with pytest.raises(Empty):
        q.get_nowait()


def test_a_huge_timeout_is_clamped_not_an_overflow() -> None:
    q: BoundedQueue[int] = BoundedQueue(1)
    getter = Outcome(lambda: q.get(timeout=1e300))
    parked(q.not_empty, 1)
    q.put(7)
    assert getter.wait().value == 7


def test_a_blocked_get_receives_the_next_put() -> None:
    q: BoundedQueue[int] = BoundedQueue(1)
    getter = Outcome(q.get)
    parked(q.not_empty, 1)
    q.put(42)
    assert getter.wait().value == 42


def test_a_blocked_put_proceeds_when_a_slot_frees() -> None:
    q: BoundedQueue[int] = BoundedQueue(1)
    q.put(1)
    putter = Outcome(lambda: q.put(2))
    parked(q.not_full, 1)
    assert q.get() == 1
    assert putter.wait().error is None
    assert q.get_nowait() == 2


def test_join_waits_for_every_task_done() -> None:
    q: BoundedQueue[int] = BoundedQueue(3)
    for i in range(3):
        q.put(i)
    assert q.join(timeout=0) is False
    for _ in range(3):
        q.get()
    q.task_done()
    q.task_done()
    joiner = Outcome(q.join)
    parked(q.all_tasks_done, 1)
    q.task_done()
    assert joiner.wait().value is True


def test_task_done_more_often_than_puts_is_an_error() -> None:
    q: BoundedQueue[int] = BoundedQueue(1)
    q.put(1)
    q.get()
    q.task_done()
    with pytest.raises(ValueError, match="task_done"):
        q.task_done()


# -- close -----------------------------------------------------------------------------------


def test_close_with_drain_hands_out_the_rest_then_raises_closed() -> None:
    q: BoundedQueue[int] = BoundedQueue(3)
    for i in range(3):
        q.put(i)
    assert q.close() == []
    assert q.closed
    assert [q.get(), q.get_nowait(), q.get(timeout=1)] == [0, 1, 2]
    with pytest.raises(Closed, match="closed"):
        q.get()
    with pytest.raises(Closed):
        q.get_nowait()


def test_close_without_drain_returns_the_dropped_items_in_order() -> None:
    q: BoundedQueue[int] = BoundedQueue(3)
    for i in range(3):
        q.put(i)
    assert q.get() == 0
    assert q.close(drain=False) == [1, 2]
    assert q.qsize() == 0
    with pytest.raises(Closed):
        q.get()


def test_put_after_close_raises_closed_even_with_room() -> None:
    q: BoundedQueue[int] = BoundedQueue(3)
    q.close()
    with pytest.raises(Closed, match="not queued"):
        q.put(1)
    with pytest.raises(Closed):
        q.put_nowait(1)
    assert q.qsize() == 0


def test_close_wakes_every_blocked_getter_with_closed() -> None:
    q: BoundedQueue[int] = BoundedQueue(1)
    getters = [Outcome(q.get) for _ in range(8)]
    parked(q.not_empty, 8)
    q.close()
    for getter in getters:
        assert isinstance(getter.wait().error, Closed)


def test_close_wakes_every_blocked_putter_with_closed() -> None:
    q: BoundedQueue[int] = BoundedQueue(1)
    q.put(0)
    putters = [Outcome(lambda i=i: q.put(i)) for i in range(1, 9)]
    parked(q.not_full, 8)
    q.close()
    for putter in putters:
        assert isinstance(putter.wait().error, Closed)
    # The item queued before the close is still handed out (drain), and none of the refused.
    assert q.get() == 0
    with pytest.raises(Closed):
        q.get()


def test_close_wakes_putters_with_a_timeout_too() -> None:
    q: BoundedQueue[int] = BoundedQueue(1)
    q.put(0)
    putter = Outcome(lambda: q.put(1, timeout=60))
    parked(q.not_full, 1)
    assert q.close(drain=False) == [0]
    assert isinstance(putter.wait().error, Closed)


def test_blocked_getters_drain_what_was_queued_before_close() -> None:
    q: BoundedQueue[int] = BoundedQueue(4)
    q.put(0)
    q.put(1)
    # Two getters take the items at once; the other six park.
    getters = [Outcome(q.get) for _ in range(8)]
    parked(q.not_empty, 6)
    q.put(2)
    q.close()
    outcomes = [g.wait() for g in getters]
    got = sorted(o.value for o in outcomes if o.error is None)  # type: ignore[type-var]
    assert got == [0, 1, 2]
    assert sum(isinstance(o.error, Closed) for o in outcomes) == 5


def test_join_returns_once_closed_without_drain() -> None:
    q: BoundedQueue[int] = BoundedQueue(2)
    q.put(1)
    q.put(2)
    joiner = Outcome(q.join)
    parked(q.all_tasks_done, 1)
    assert q.close(drain=False) == [1, 2]
    assert joiner.wait().value is True


def test_join_after_close_with_drain_still_waits_for_the_work() -> None:
    q: BoundedQueue[int] = BoundedQueue(2)
    q.put(1)
    q.close()
    assert q.join(timeout=0.01) is False
    q.get()
    q.task_done()
    assert q.join(timeout=0) is True


def test_task_done_for_an_item_taken_before_a_cancel_still_counts() -> None:
    q: BoundedQueue[int] = BoundedQueue(2)
    q.put(1)
    q.put(2)
    assert q.get() == 1
    assert q.close(drain=False) == [2]
    q.task_done()  # the item taken before the close is acknowledged, no ValueError
    with pytest.raises(ValueError):
        q.task_done()


def test_close_is_idempotent_and_a_later_cancel_drops_the_rest() -> None:
    q: BoundedQueue[int] = BoundedQueue(3)
    for i in range(3):
        q.put(i)
    assert q.close() == []
    assert q.close() == []
    assert q.get() == 0
    assert q.close(drain=False) == [1, 2]
    assert q.close(drain=False) == []


def test_queue_is_generic_and_describes_itself() -> None:
    q = BoundedQueue[int](2)
    q.put(1)
    assert "maxsize=2 size=1" in repr(q)
    q.close(drain=False)
    assert "cancelled" in repr(q)
