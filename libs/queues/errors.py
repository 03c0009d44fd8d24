"""The errors libs.queues raises.

Timeouts and non-blocking calls reuse the standard library's own classes, so code written
against queue.Queue or asyncio.Queue keeps its except clauses:

- ``queue.Empty`` / ``queue.Full`` from BoundedQueue,
- ``asyncio.QueueEmpty`` / ``asyncio.QueueFull`` from AsyncBoundedQueue.

The two errors below are what the standard library lacks in Python 3.11.
"""

from __future__ import annotations

from collections.abc import Sequence
from queue import Empty, Full
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncio import QueueEmpty, QueueFull

__all__ = ["Closed", "Empty", "Full", "PoolError", "QueueEmpty", "QueueFull"]


class Closed(Exception):
    """Raised by put() once the queue is closed, and by get() once it is closed and empty.

    With close(drain=True) getters keep receiving the items queued before the close and see
    Closed only after the last one; with close(drain=False) they see it at once.
    """


class PoolError(ExceptionGroup[Exception]):
    """Raised by WorkerPool.join(): every exception the worker function raised, one per failed item.

    Each exception carries a note (PEP 678) naming the item it failed on; ``except* ValueError``
    picks out one kind. A BaseException that is not an Exception (SystemExit, ...) appears as a
    RuntimeError whose __cause__ is the original, since an ExceptionGroup holds only Exceptions.
    """

    # typeshed's derive() also accepts BaseExceptions; split()/subgroup() only ever pass ours.
    def derive(self, excs: Sequence[Exception]) -> PoolError:  # type: ignore[override]
        # split()/subgroup() build their parts through derive(); keep the class so that
        # `except* SomeError as eg` still hands out PoolError instances.
        return PoolError(self.message, excs)


def __getattr__(name: str) -> Any:
    """asyncio's QueueEmpty / QueueFull, imported on first use: importing asyncio costs tens of
    milliseconds, which a program using only the thread queues should not pay at start-up."""
    if name in ("QueueEmpty", "QueueFull"):
        import asyncio

        return getattr(asyncio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
