"""WorkerPool and parallel_map: N threads fed through a BoundedQueue.

The bound is the backpressure: a producer that submits faster than the workers finish blocks
in submit() instead of growing memory. Shutdown is close() on the queue: workers leave their
loop when get() raises Closed, so no sentinel items and no thread is left behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from time import monotonic
from types import TracebackType
from typing import Generic, TypeVar

from libs.queues.bounded import BoundedQueue, check_maxsize, check_timeout
from libs.queues.errors import Closed, PoolError

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["WorkerPool", "parallel_map"]


def _check_workers(workers: int) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")
    return workers


def _describe(func: Callable[..., object]) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


def _as_failure(exc: BaseException, func: Callable[..., object], item: object) -> Exception:
    """The exception PoolError reports for ``item``, with a note naming the item.

    An ExceptionGroup holds only Exceptions, so a bare BaseException (SystemExit, ...) is
    reported as a RuntimeError caused by it.
    """
    if not isinstance(exc, Exception):
        wrapped = RuntimeError(f"{type(exc).__name__} raised in a worker: {exc!r}")
        wrapped.__cause__ = exc
        exc = wrapped
    exc.add_note(f"raised by {_describe(func)} for item {item!r}")
    return exc


class WorkerPool(Generic[T]):
    """Run ``func(item)`` for every submitted item on ``workers`` threads.

    submit() blocks while ``maxsize`` items wait (backpressure). close(drain=True) lets the
    workers finish everything submitted; close(drain=False) drops what is still queued and
    returns it. join() waits for every worker thread to exit and raises PoolError holding every
    exception ``func`` raised. Results are not collected: ``func`` delivers them itself (or use
    parallel_map).

        with WorkerPool(fetch, workers=8, maxsize=64) as pool:
            for url in urls:
                pool.submit(url)
        # leaving the block: close(drain=True) and join(); if the block raised instead,
        # close(drain=False) (items not started are dropped) and its exception propagates
    """

    def __init__(self, func: Callable[[T], object], *, workers: int, maxsize: int) -> None:
        self._func = func
        self._queue: BoundedQueue[T] = BoundedQueue(maxsize)
        # Each worker appends only to its own list and join() reads them after the threads
        # have exited (Thread.join is the happens-before edge), so they need no lock.
        self._errors: list[list[Exception]] = [[] for _ in range(_check_workers(workers))]
        name = _describe(func)
        self._threads = [
            # Daemon threads: a pool its owner forgot to close must not keep the process alive
            # at exit. Owners that care about the work call close() and join().
            threading.Thread(target=self._work, args=(i,), name=f"WorkerPool[{name}]-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> int:
        return len(self._threads)

    def _work(self, index: int) -> None:
        errors = self._errors[index]
        queue = self._queue
        while True:
            try:
                item = queue.get()
            except Closed:
                return
            try:
                self._func(item)
            except BaseException as exc:
                # SystemExit and friends are caught too: a worker that died would shrink the
                # pool silently, and with all of them gone submit() would block forever.
                errors.append(_as_failure(exc, self._func, item))
            finally:
                queue.task_done()

    def submit(self, item: T, timeout: float | None = None) -> None:
        """Queue ``item``; block while the pool's queue is full (up to ``timeout``, then queue.Full).

        Raises Closed once the pool is closed.
        """
        self._queue.put(item, timeout=timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every item submitted so far has been processed; the pool stays open."""
        return self._queue.join(timeout)

    def close(self, drain: bool = True) -> list[T]:
        """Refuse further submits. drain=True: the workers finish the queue; returns [].

        drain=False: items not yet started are dropped and returned (items being processed
        finish). Idempotent.
        """
        return self._queue.close(drain=drain)

    def join(self, timeout: float | None = None) -> None:
        """Wait for every worker thread to exit, then raise PoolError if any item failed.

        Closes the pool with drain=True first if it is still open (workers exit only once the
        queue is closed). Raises TimeoutError if threads still run after ``timeout`` seconds.
        """
        check_timeout(timeout)
        self._queue.close(drain=True)
        deadline = None if timeout is None else monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - monotonic()))
            if thread.is_alive():
                raise TimeoutError(f"{thread.name} still running after {timeout} s")
        errors = [exc for worker_errors in self._errors for exc in worker_errors]
        if errors:
            raise PoolError(f"{len(errors)} item(s) failed in {_describe(self._func)}", errors)

    def __enter__(self) -> WorkerPool[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.join()  # drains, then raises PoolError if items failed
            return
        # The body failed: stop feeding work, let running items finish, and let the body's
        # exception propagate; the workers' errors travel with it as a note, not lost.
        self.close(drain=False)
        try:
            self.join()
        except PoolError as pool_error:
            exc.add_note(f"also, while the pool shut down: {pool_error!r}")


def parallel_map(
    func: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    maxsize: int | None = None,
) -> Iterator[tuple[T, R | None, BaseException | None]]:
    """Apply ``func`` to every item on ``workers`` threads; yield (item, result, error) as each finishes.

    Unordered. At most ``maxsize`` items (default ``2 * workers``) are in flight, counted from
    the moment one is drawn from ``items`` to the moment its tuple is yielded, so ``items`` may
    be a huge or endless iterator. An item whose call raised yields (item, None, exception):
    errors are returned, not raised. ``items`` is consumed in the caller's thread; an exception
    from it propagates. Leaving the loop early drops the queued items and waits for the
    running calls to finish before the generator closes, so no thread outlives it.
    """
    _check_workers(workers)
    # Validated here, not in the generator body, so a bad call fails where it is made.
    limit = check_maxsize(2 * workers if maxsize is None else maxsize)
    return _parallel_map(func, iter(items), workers, limit)


def _parallel_map(
    func: Callable[[T], R], source: Iterator[T], workers: int, limit: int
) -> Iterator[tuple[T, R | None, BaseException | None]]:
    # Neither queue ever blocks a put: both are sized `limit` and at most `limit` items are in
    # flight (drawn and not yet yielded), so inputs + calls running + results <= limit.
    inputs: BoundedQueue[T] = BoundedQueue(limit)
    results: BoundedQueue[tuple[T, R | None, BaseException | None]] = BoundedQueue(limit)

    def work() -> None:
        while True:
            try:
                item = inputs.get()
            except Closed:
                return
            try:
                outcome: tuple[T, R | None, BaseException | None] = (item, func(item), None)
            except BaseException as exc:
                # Every BaseException: a worker that died here would leave its item forever
                # in flight and the consumer blocked in results.get().
                outcome = (item, None, exc)
            try:
                results.put(outcome)
            except Closed:
                return  # the consumer left early; nobody wants the result

    threads = [
        threading.Thread(target=work, name=f"parallel_map[{_describe(func)}]-{i}", daemon=True)
        for i in range(workers)
    ]
    for thread in threads:
        thread.start()
    in_flight = 0
    exhausted = False
    try:
        while True:
            while not exhausted and in_flight < limit:
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    inputs.close(drain=True)  # workers finish what is queued, then exit
                    break
                inputs.put(item)
                in_flight += 1
            if in_flight == 0:
                return
            outcome = results.get()
            in_flight -= 1
            yield outcome
    finally:
        inputs.close(drain=False)
        results.close(drain=False)
        for thread in threads:
            thread.join()
