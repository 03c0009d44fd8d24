"""BoundedQueue: a FIFO queue for threads with a hard bound and a close() that wakes everyone.

Shaped after CPython's queue.Queue (one mutex, three conditions named after their predicates,
``while not predicate: wait()`` loops) plus what Python 3.11 lacks: close() with a drain-or-cancel
choice. Every method takes the one lock for a few deque operations and releases it before
returning; nothing else (no callback, no I/O, no logging) ever runs under it.
"""

from __future__ import annotations

import threading
from collections import deque
from queue import Empty, Full
from time import monotonic
from typing import Generic, TypeVar

from libs.queues.errors import Closed

T = TypeVar("T")

__all__ = ["BoundedQueue"]


def check_maxsize(maxsize: int) -> int:
    """Validate a queue bound: a bounded queue with no room is a deadlock, not a queue."""
    if isinstance(maxsize, bool) or not isinstance(maxsize, int):
        raise TypeError(f"maxsize: expected an int, got {type(maxsize).__name__}")
    if maxsize < 1:
        raise ValueError(f"maxsize: expected an integer >= 1, got {maxsize}")
    return maxsize


def check_timeout(timeout: float | None) -> None:
    # `not timeout >= 0` also refuses NaN, which would otherwise reach Lock.acquire().
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout: expected a non-negative number or None, got {timeout!r}")


class BoundedQueue(Generic[T]):
    """A multi-producer, multi-consumer FIFO queue holding at most ``maxsize`` items.

    put() blocks while the queue is full, get() while it is empty; both accept ``block`` and
    ``timeout`` like queue.Queue and raise queue.Full / queue.Empty when they give up.
    close(drain=True) lets getters take what is queued and then raises Closed;
    close(drain=False) drops the queued items and returns them to the caller. Either way every
    blocked put() and get() wakes, and put() raises Closed from then on.
    """

    def __init__(self, maxsize: int) -> None:
        self._maxsize = check_maxsize(maxsize)
        # Invariant: 0 <= len(self._items) <= self._maxsize, oldest item on the left.
        self._items: deque[T] = deque()

        # The mutex guards every field below and self._items. It is shared by the three
        # conditions, so `with self.not_full:` and friends acquire and release this one lock.
        self.mutex = threading.Lock()
        # Predicate "a get() may proceed": self._items or self._closed. Notified once per put
        # (one item wakes one getter) and notify_all()ed by close().
        self.not_empty = threading.Condition(self.mutex)
        # Predicate "a put() may proceed": len(self._items) < maxsize or self._closed.
        # Notified once per get and notify_all()ed by close().
        self.not_full = threading.Condition(self.mutex)
        # Predicate "join() may return": self._unfinished == 0 or self._cancelled.
        self.all_tasks_done = threading.Condition(self.mutex)

        # Items put and not yet acknowledged by task_done(): the queued ones plus those handed
        # out and still being processed. close(drain=False) subtracts the dropped ones, which
        # nobody will ever acknowledge.
        self._unfinished = 0
        # Once true, never false again: put() refuses, waits end, get() hands out what is left.
        self._closed = False
        # close(drain=False) happened: the queued items were dropped and join() returns at once.
        self._cancelled = False

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        with self.mutex:
            state = "cancelled" if self._cancelled else "closed" if self._closed else "open"
            return (
                f"<{type(self).__name__} maxsize={self._maxsize} size={len(self._items)} "
                f"unfinished={self._unfinished} {state}>"
            )

    # -- producers -------------------------------------------------------------------------

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        """Append ``item``, waiting for room if ``block`` (up to ``timeout`` seconds).

        Raises queue.Full when there is no room and it may not wait (any longer), and Closed
        when the queue is closed before or while it waits; the item is then not in the queue.
        """
        check_timeout(timeout)
        with self.not_full:
            if len(self._items) >= self._maxsize and not self._closed:
                if not block:
                    raise Full
                if timeout is None:
                    while len(self._items) >= self._maxsize and not self._closed:
                        self.not_full.wait()
                else:
                    # An absolute deadline: a wake-up that finds the queue full again waits
                    # only for what is left, never for a fresh `timeout`.
                    deadline = monotonic() + timeout
                    while len(self._items) >= self._maxsize and not self._closed:
                        remaining = deadline - monotonic()
                        if remaining <= 0.0:
                            raise Full
                        self.not_full.wait(min(remaining, threading.TIMEOUT_MAX))
            if self._closed:
                raise Closed(f"put() on a closed {type(self).__name__}: the item was not queued")
            self._items.append(item)
            self._unfinished += 1
            self.not_empty.notify()

    def put_nowait(self, item: T) -> None:
        """put(item, block=False): queue.Full at once when there is no room."""
        self.put(item, block=False)

    # -- consumers -------------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """Remove and return the oldest item, waiting for one if ``block`` (up to ``timeout``).

        Raises queue.Empty when there is none and it may not wait (any longer), and Closed once
        the queue is closed and holds nothing more to hand out.
        """
        check_timeout(timeout)
        with self.not_empty:
            if not self._items and not self._closed:
                if not block:
                    raise Empty
                if timeout is None:
                    while not self._items and not self._closed:
                        self.not_empty.wait()
                else:
                    deadline = monotonic() + timeout
                    # The predicate is tested before the deadline: a waiter whose wait timed
                    # out just as a put() notified it still takes the item, so that
                    # notification is not lost to a waiter that gives up.
                    while not self._items and not self._closed:
                        remaining = deadline - monotonic()
                        if remaining <= 0.0:
                            raise Empty
                        self.not_empty.wait(min(remaining, threading.TIMEOUT_MAX))
            if not self._items:
                raise Closed(f"get() on a closed {type(self).__name__} with nothing left to hand out")
            item = self._items.popleft()
            self.not_full.notify()
            return item

    def get_nowait(self) -> T:
        """get(block=False): queue.Empty at once when there is nothing queued."""
        return self.get(block=False)

    # -- size (a snapshot: another thread may change it right after) ------------------------

    def qsize(self) -> int:
        with self.mutex:
            return len(self._items)

    def empty(self) -> bool:
        with self.mutex:
            return not self._items

    def full(self) -> bool:
        with self.mutex:
            return len(self._items) >= self._maxsize

    # -- task accounting -------------------------------------------------------------------

    def task_done(self) -> None:
        """Acknowledge that one item taken with get() is fully processed.

        Raises ValueError when called more often than items were put (minus those dropped).
        """
        with self.all_tasks_done:
            if self._unfinished <= 0:
                raise ValueError("task_done() called more times than items were put")
            self._unfinished -= 1
            if self._unfinished == 0:
                self.all_tasks_done.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every item put has been acknowledged, or the queue was closed with drain=False.

        Returns True when that happened, False when ``timeout`` seconds passed first.
        """
        check_timeout(timeout)
        with self.all_tasks_done:
            if timeout is None:
                while self._unfinished and not self._cancelled:
                    self.all_tasks_done.wait()
                return True
            deadline = monotonic() + timeout
            while self._unfinished and not self._cancelled:
                remaining = deadline - monotonic()
                if remaining <= 0.0:
                    return False
                self.all_tasks_done.wait(min(remaining, threading.TIMEOUT_MAX))
            return True

    # -- shutdown --------------------------------------------------------------------------

    def close(self, drain: bool = True) -> list[T]:
        """Close the queue and wake every waiter. Idempotent; returns the dropped items.

        drain=True: queued items stay for getters, which see Closed after the last one; returns [].
        drain=False: queued items are removed and returned, oldest first; getters see Closed at
        once and join() returns. A later close(drain=False) cancels what a drain left behind.
        """
        with self.mutex:
            self._closed = True
            dropped: list[T] = []
            if not drain:
                dropped = list(self._items)
                self._items.clear()
                # Nobody will acknowledge a dropped item. The floor at 0 covers a caller that
                # acknowledged items before taking them, which task_done() has always allowed.
                self._unfinished = max(0, self._unfinished - len(dropped))
                self._cancelled = True
            # The getters' and putters' predicates now hold for every waiter (a getter that
            # finds nothing left raises Closed), so all of them wake: notify() would leave the
            # rest asleep forever. join()'s predicate changes only when the items were dropped.
            self.not_empty.notify_all()
            self.not_full.notify_all()
            if self._cancelled:
                self.all_tasks_done.notify_all()
        return dropped
