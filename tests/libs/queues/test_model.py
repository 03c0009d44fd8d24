"""Both queues against a plain model (a deque and three counters), driven by Hypothesis.

Random sequences of put/get/task_done/close(drain|cancel) must give the same results and errors
as the model, and qsize/empty/full/closed must agree with it after every step. The async queue's
non-blocking half (put_nowait/get_nowait/close/task_done) is the same state machine.
"""

from __future__ import annotations

import queue
from collections import deque

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from libs.queues import AsyncBoundedQueue, BoundedQueue, Closed, QueueEmpty, QueueFull

SETTINGS = settings(
    max_examples=150, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


class QueueMachine(RuleBasedStateMachine):
    full_error: type[Exception]
    empty_error: type[Exception]

    def new_queue(self, maxsize: int) -> BoundedQueue[int] | AsyncBoundedQueue[int]:
        raise NotImplementedError

    def put(self, item: int) -> None:
        raise NotImplementedError

    def get(self) -> int:
        raise NotImplementedError

    @initialize(maxsize=st.integers(min_value=1, max_value=6))
    def start(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.q = self.new_queue(maxsize)
        self.items: deque[int] = deque()
        self.unfinished = 0
        self.closed = False
        self.cancelled = False

    @precondition(lambda self: hasattr(self, "q"))
    @rule(item=st.integers())
    def put_one(self, item: int) -> None:
        if self.closed:
            with pytest.raises(Closed):
                self.put(item)
        elif len(self.items) == self.maxsize:
            with pytest.raises(self.full_error):
                self.put(item)
        else:
            self.put(item)
            self.items.append(item)
            self.unfinished += 1

    @precondition(lambda self: hasattr(self, "q"))
    @rule()
    def get_one(self) -> None:
        if self.items:
            assert self.get() == self.items.popleft()
        elif self.closed:
            with pytest.raises(Closed):
                self.get()
        else:
            with pytest.raises(self.empty_error):
                self.get()

    @precondition(lambda self: hasattr(self, "q"))
    @rule()
    def task_done(self) -> None:
        if self.unfinished == 0:
            with pytest.raises(ValueError):
                self.q.task_done()
        else:
            self.q.task_done()
            self.unfinished -= 1

    @precondition(lambda self: hasattr(self, "q"))
    @rule(drain=st.booleans())
    def close(self, drain: bool) -> None:
        dropped = self.q.close(drain=drain)
        self.closed = True
        if drain:
            assert dropped == []
        else:
            assert dropped == list(self.items)
            self.unfinished = max(0, self.unfinished - len(self.items))
            self.items.clear()
            self.cancelled = True

    @precondition(lambda self: hasattr(self, "q"))
    @invariant()
    def observers_agree_with_the_model(self) -> None:
        assert self.q.qsize() == len(self.items)
        assert self.q.empty() == (not self.items)
        assert self.q.full() == (len(self.items) == self.maxsize)
        assert self.q.closed == self.closed


class BoundedQueueMachine(QueueMachine):
    full_error = queue.Full
    empty_error = queue.Empty

    def new_queue(self, maxsize: int) -> BoundedQueue[int]:
        return BoundedQueue(maxsize)

    def put(self, item: int) -> None:
        # The three spellings of a non-blocking put must behave alike.
        q: BoundedQueue[int] = self.q  # type: ignore[assignment]
        spelling = item % 3
        if spelling == 0:
            q.put_nowait(item)
        elif spelling == 1:
            q.put(item, block=False)
        else:
            q.put(item, timeout=0)

    def get(self) -> int:
        q: BoundedQueue[int] = self.q  # type: ignore[assignment]
        self.gets = getattr(self, "gets", 0) + 1
        return q.get_nowait() if self.gets % 2 else q.get(timeout=0)

    @precondition(lambda self: hasattr(self, "q"))
    @invariant()
    def join_is_done_exactly_when_the_model_says(self) -> None:
        assert self.q.join(timeout=0) == (self.unfinished == 0 or self.cancelled)  # type: ignore[union-attr]


class AsyncBoundedQueueMachine(QueueMachine):
    full_error = QueueFull
    empty_error = QueueEmpty

    def new_queue(self, maxsize: int) -> AsyncBoundedQueue[int]:
        return AsyncBoundedQueue(maxsize)

    def put(self, item: int) -> None:
        self.q.put_nowait(item)

    def get(self) -> int:
        return self.q.get_nowait()

    @precondition(lambda self: hasattr(self, "q"))
    @invariant()
    def join_is_done_exactly_when_the_model_says(self) -> None:
        done = self.q._all_tasks_done.is_set()  # type: ignore[union-attr]
        assert done == (self.unfinished == 0 or self.cancelled)


TestBoundedQueueAgainstModel = BoundedQueueMachine.TestCase
TestBoundedQueueAgainstModel.settings = SETTINGS
TestAsyncBoundedQueueAgainstModel = AsyncBoundedQueueMachine.TestCase
TestAsyncBoundedQueueAgainstModel.settings = SETTINGS
