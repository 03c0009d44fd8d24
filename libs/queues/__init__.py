"""Bounded queues for threads and asyncio with close(drain=True|False), and a worker pool on top.

    from libs.queues import BoundedQueue, AsyncBoundedQueue, Closed, WorkerPool, PoolError, parallel_map

Timeouts raise the standard library's own errors (queue.Empty / queue.Full for threads,
asyncio.QueueEmpty / asyncio.QueueFull for asyncio); they are re-exported here.
"""

from typing import TYPE_CHECKING, Any

from libs.queues.bounded import BoundedQueue
from libs.queues.errors import Closed, Empty, Full, PoolError
from libs.queues.pool import WorkerPool, parallel_map

if TYPE_CHECKING:
    from libs.queues.async_bounded import AsyncBoundedQueue
    from libs.queues.errors import QueueEmpty, QueueFull

# The asyncio parts are imported on first use (PEP 562): `import asyncio` costs tens of
# milliseconds, and the thread queues and the pool (a file scan's readers) never need it.
_LAZY = {
    "AsyncBoundedQueue": "libs.queues.async_bounded",
    "QueueEmpty": "libs.queues.errors",
    "QueueFull": "libs.queues.errors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AsyncBoundedQueue",
    "BoundedQueue",
    "Closed",
    "Empty",
    "Full",
    "PoolError",
    "QueueEmpty",
    "QueueFull",
    "WorkerPool",
    "parallel_map",
]
