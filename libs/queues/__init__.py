"""Bounded queues for threads and asyncio with close(drain=True|False), and a worker pool on top.

    from libs.queues import BoundedQueue, AsyncBoundedQueue, Closed, WorkerPool, PoolError, parallel_map

Timeouts raise the standard library's own errors (queue.Empty / queue.Full for threads,
asyncio.QueueEmpty / asyncio.QueueFull for asyncio); they are re-exported here.
"""

from libs.queues.async_bounded import AsyncBoundedQueue
from libs.queues.bounded import BoundedQueue
from libs.queues.errors import Closed, Empty, Full, PoolError, QueueEmpty, QueueFull
from libs.queues.pool import WorkerPool, parallel_map

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
