"""AsyncBoundedQueue: BoundedQueue's contract for coroutines on one event loop.

Shaped after asyncio.Queue: waiters are futures in two FIFO deques, and a put or get wakes
exactly one waiter on the other side. Two things asyncio.Queue (3.11) lacks are added: close()
with drain-or-cancel, and optional timeouts on put/get/join.

All methods must be called from the loop's thread (like asyncio.Queue). Another thread closes
the queue with ``loop.call_soon_threadsafe(queue.close)``.

Why no item is lost to cancellation: an item enters or leaves the deque only in put_nowait() /
get_nowait(), which never suspend, and put()/get() call them after their last await. So a
cancelled put() has not queued its item and a cancelled get() has not taken one. The one hazard
left is a wake-up: a waiter whose future was resolved ("go, there is an item/room now") and whose
task is cancelled before it runs would swallow that wake-up while the item or slot sits there
with others still asleep; such a waiter passes the wake-up on to the next in line.
"""

from __future__ import annotations

import asyncio
from asyncio import QueueEmpty, QueueFull
from collections import deque
from typing import Generic, TypeVar

from libs.queues.bounded import check_maxsize, check_timeout
from libs.queues.errors import Closed

T = TypeVar("T")

__all__ = ["AsyncBoundedQueue"]


class AsyncBoundedQueue(Generic[T]):
    """An asyncio FIFO queue holding at most ``maxsize`` items, with close(drain=True|False).

    ``await put(item)`` waits for room, ``await get()`` for an item; with ``timeout`` they raise
    asyncio.QueueFull / asyncio.QueueEmpty when it runs out. After close() every waiter wakes,
    put() raises Closed, and get() raises Closed once nothing is left to hand out.
    """

    def __init__(self, maxsize: int) -> None:
        self._maxsize = check_maxsize(maxsize)
        # Invariant: 0 <= len(self._items) <= self._maxsize, oldest item on the left.
        self._items: deque[T] = deque()
        # Futures of suspended get()/put() calls, oldest first. A future leaves its deque when
        # it is resolved (_wakeup_next, close) or when its waiter gives up; resolved futures are
        # never in a deque. After close() both stay empty: nobody waits on a closed queue.
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        # Items put and not yet acknowledged by task_done(), minus the ones close() dropped.
        self._unfinished = 0
        # Set exactly when join() may return: self._unfinished == 0 or self._cancelled.
        # asyncio.Event binds to a loop only when first awaited, so the queue can be built
        # before the loop runs.
        self._all_tasks_done = asyncio.Event()
        self._all_tasks_done.set()
        self._closed = False
        self._cancelled = False

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "closed" if self._closed else "open"
        return (
            f"<{type(self).__name__} maxsize={self._maxsize} size={len(self._items)} "
            f"getters={len(self._getters)} putters={len(self._putters)} "
            f"unfinished={self._unfinished} {state}>"
        )

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return len(self._items) >= self._maxsize

    @staticmethod
    def _wakeup_next(waiters: deque[asyncio.Future[None]]) -> None:
        # Resolve the oldest waiter still waiting; cancelled ones are skipped (and dropped).
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _wait(self, waiters: deque[asyncio.Future[None]]) -> None:
        """Suspend on a new future in ``waiters`` until resolved; pass the wake-up on if cancelled."""
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            waiter.cancel()  # a no-op when it was already resolved
            try:
                waiters.remove(waiter)
            except ValueError:
                pass  # _wakeup_next or close() already took it out
            # Resolved but cancelled before it could run: if the item (or slot) it was woken
            # for is still there, the next waiter in line must be told instead. After close()
            # nobody is left waiting, so there is no one to tell.
            if not waiter.cancelled() and not self._closed and self._can_proceed(waiters):
                self._wakeup_next(waiters)
            raise

    def _can_proceed(self, waiters: deque[asyncio.Future[None]]) -> bool:
        if waiters is self._getters:
            return bool(self._items)
        return len(self._items) < self._maxsize

    # -- producers -------------------------------------------------------------------------

    def put_nowait(self, item: T) -> None:
        """Append ``item`` now, or raise asyncio.QueueFull (no room) or Closed."""
        if self._closed:
            raise Closed(f"put() on a closed {type(self).__name__}: the item was not queued")
        if len(self._items) >= self._maxsize:
            raise QueueFull
        self._items.append(item)
        self._unfinished += 1
        self._all_tasks_done.clear()
        self._wakeup_next(self._getters)

    async def put(self, item: T, timeout: float | None = None) -> None:
        """Append ``item``, waiting for room (at most ``timeout`` seconds, then QueueFull).

        Raises Closed if the queue is or gets closed first. When it raises (Closed, QueueFull,
        CancelledError) the item was not queued.
        """
        if timeout is not None:
            return await self._put_within(item, timeout)
        # The common case is inlined: one coroutine frame per put, as in asyncio.Queue.
        while len(self._items) >= self._maxsize and not self._closed:
            await self._wait(self._putters)
        # No await from here on: the item is queued, or the call raises Closed.
        self.put_nowait(item)

    async def _put_within(self, item: T, timeout: float) -> None:
        check_timeout(timeout)
        try:
            async with asyncio.timeout(timeout):
                return await self.put(item)
        except TimeoutError:
            raise QueueFull from None

    # -- consumers -------------------------------------------------------------------------

    def get_nowait(self) -> T:
        """Remove and return the oldest item now, or raise asyncio.QueueEmpty or Closed."""
        if not self._items:
            if self._closed:
                raise Closed(f"get() on a closed {type(self).__name__} with nothing left to hand out")
            raise QueueEmpty
        item = self._items.popleft()
        self._wakeup_next(self._putters)
        return item

    async def get(self, timeout: float | None = None) -> T:
        """Remove and return the oldest item, waiting for one (at most ``timeout``, then QueueEmpty).

        Raises Closed once the queue is closed and empty. When it raises, no item was taken.
        """
        if timeout is not None:
            return await self._get_within(timeout)
        while not self._items and not self._closed:
            await self._wait(self._getters)
        # No await from here on: the item taken is the item returned.
        return self.get_nowait()

    async def _get_within(self, timeout: float) -> T:
        check_timeout(timeout)
        try:
            async with asyncio.timeout(timeout):
                return await self.get()
        except TimeoutError:
            raise QueueEmpty from None

    # -- task accounting -------------------------------------------------------------------

    def task_done(self) -> None:
        """Acknowledge that one item taken with get() is fully processed."""
        if self._unfinished <= 0:
            raise ValueError("task_done() called more times than items were put")
        self._unfinished -= 1
        if self._unfinished == 0:
            self._all_tasks_done.set()

    async def join(self, timeout: float | None = None) -> bool:
        """Wait until every item put is acknowledged, or the queue was closed with drain=False.

        Returns True when that happened, False when ``timeout`` seconds passed first.
        """
        check_timeout(timeout)
        if self._all_tasks_done.is_set():
            return True
        if timeout is None:
            await self._all_tasks_done.wait()
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._all_tasks_done.wait()
        except TimeoutError:
            return False
        return True

    # -- shutdown --------------------------------------------------------------------------

    def close(self, drain: bool = True) -> list[T]:
        """Close the queue and wake every waiter. Idempotent; returns the dropped items.

        drain=True: queued items stay for getters, which see Closed after the last one; returns [].
        drain=False: queued items are removed and returned, oldest first; join() returns.
        """
        self._closed = True
        dropped: list[T] = []
        if not drain:
            dropped = list(self._items)
            self._items.clear()
            # Nobody will acknowledge a dropped item. The floor at 0 covers a caller that
            # acknowledged items before taking them, which task_done() has always allowed.
            self._unfinished = max(0, self._unfinished - len(dropped))
            self._cancelled = True
            self._all_tasks_done.set()
        # Every waiter's loop condition is now false (the queue is closed), so all wake: each
        # getter takes a remaining item or raises Closed, each putter raises Closed.
        for waiters in (self._getters, self._putters):
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
        return dropped
