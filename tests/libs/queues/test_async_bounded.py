"""AsyncBoundedQueue: the BoundedQueue contract on an event loop, and cancellation losing nothing."""

from __future__ import annotations

import asyncio

import pytest

from libs.queues import AsyncBoundedQueue, Closed, QueueEmpty, QueueFull


async def settle() -> None:
    """Let every ready task run until it parks (a few loop turns are plenty here)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_items_come_out_in_the_order_they_went_in() -> None:
    q: AsyncBoundedQueue[int] = AsyncBoundedQueue(4)
    for i in range(4):
        await q.put(i)
    assert [await q.get() for _ in range(4)] == [0, 1, 2, 3]


async def test_nowait_calls_raise_the_asyncio_errors() -> None:
    q: AsyncBoundedQueue[int] = AsyncBoundedQueue(1)
    with pytest.raises(QueueEmpty):
        q.get_nowait()
    q.put_nowait(1)
    with pytest.raises(QueueFull):
        q.put_nowait(2)
    assert (q.qsize(), q.empty(), q.full()) == (1, False, True)


def test_the_queue_can_be_built_before_a_loop_runs() -> None:
    q: AsyncBoundedQueue[int] = AsyncBoundedQueue(2)
    q.put_nowait(1)

    async def main() -> int:
        await q.put(2)
        return await q.get() + await q.get()

    assert asyncio.run(main()) == 3


async def test_timeouts_raise_queue_full_and_queue_empty_and_change_nothing() -> None:
    q: AsyncBoundedQueue[int] = AsyncBoundedQueue(1)
    with pytest.raises(QueueEmpty):
        await q.get(timeout=0.01)
    await q.put(1)
    with pytest.raises(QueueFull):
        await q.put(2, timeout=0.01)
    assert q.qsize() == 1
    assert await q.get(timeout=0) == 1
    with pytest.raises(ValueError, match="timeout"):
        await q.get(timeout=-1)


async def test_a_waiting_get_receives_the_next_put() -> None:
    q: AsyncBoundedQueue[str] = AsyncBoundedQueue(1)
    getter = asyncio.create_task(q.get())
    await settle()
    assert not getter.done()
    await q.put("x")
    assert await asyncio.wait_for(getter, 5) == "x"


async def test_a_waiting_put_proceeds_when_a_slot_frees() -> None:
    q: AsyncBoundedQueue[int] = AsyncBoundedQueue(1)
    await q.put(1)
    putter = asyncio.create_task(q.put(2))
    await settle()
    assert not putter.done()
    assert q.get_nowait() == 1
    await asyncio.wait_for(putter, 5)
    assert q.get_nowait() == 2


async def test_join_waits_for_task_done_and_honours_a_timeout() -> None:
    q: AsyncBoundedQueue[int] = AsyncBoundedQueue(2)
    await q.put(1)
    assert await q.join(timeout=0.01) is False
    joiner = asyncio.create_task(q.join())
    await q.get()
    await settle()
    assert not joiner.done()
    q.task_done()
    assert await asyncio.wait_for(joiner, 5) is True
    with pytest.raises(ValueError, match="task_done"):
        q.task_done()


# -- cancellation: no item lost ----------------------------------------------------------------


async def test_a_getter_cancelled_right_after_its_wakeup_passes_the_item_on() -> None:
    q: AsyncBoundedQueue[str] = AsyncBoundedQueue(1)
    first = asyncio.create_task(q.get())
    second = asyncio.create_task(q.get())
    await settle()
    q.put_nowait("x")  # resolves first's future: first is woken but has not run yet
    first.cancel()  # ...and is cancelled before it can take the item
    assert await asyncio.wait_for(second, 5) == "x"
    assert first.cancelled()
    assert q.qsize() == 0


async def test_a_putter_cancelled_right_after_its_wakeup_passes_the_slot_on() -> None:
    q: AsyncBoundedQueue[str] = AsyncBoundedQueue(1)
    q.put_nowait("a")
    first = asyncio.create_task(q.put("b"))
    second = asyncio.create_task(q.put("c"))
    await settle()
    assert q.get_nowait() == "a"  # wakes first
    first.cancel()
    await asyncio.wait_for(second, 5)
    assert first.cancelled()
    assert q.get_nowait() == "c"  # b was never queued: its put() was cancelled
    assert q.empty()


async def test_a_get_timing_out_right_after_its_wakeup_passes_the_item_on() -> None:
    q: AsyncBoundedQueue[str] = AsyncBoundedQueue(1)
    first = asyncio.create_task(q.get(timeout=30))
    second = asyncio.create_task(q.get())
    await settle()
    q.put_nowait("x")
    first.cancel()  # a timeout is a cancellation inside get(); this takes the same path
    assert await asyncio.wait_for(second, 5) == "x"


async def test_a_cancelled_waiter_that_was_never_woken_takes_no_wakeup_with_it() -> None:
    q: AsyncBoundedQueue[int] = AsyncBoundedQueue(1)
    getters = [asyncio.create_task(q.get()) for _ in range(3)]
    await settle()
    getters[0].cancel()
    await settle()
    q.put_nowait(1)
    assert await asyncio.wait_for(getters[1], 5) == 1
    assert not getters[2].done()
    q.put_nowait(2)
    assert await asyncio.wait_for(getters[2], 5) == 2


# -- close -----------------------------------------------------------------------------------


async def test_close_with_drain_hands_out_the_rest_then_raises_closed() -> None:
    q: AsyncBoundedQueue[int] = AsyncBoundedQueue(3)
    for i in range(3):
        q.put_nowait(i)
    assert q.close() == []
    assert q.closed
    assert [await q.get(), q.get_nowait(), await q.get(timeout=1)] == [0, 1, 2]
    with pytest.raises(Closed, match="nothing left"):
        await q.get()
    with pytest.raises(Closed, match="not queued"):
        await q.put(9)
    with pytest.raises(Closed):
        q.put_nowait(9)


async def test_close_without_drain_returns_the_items_and_releases_join() -> None:
    q: AsyncBoundedQueue[int] = AsyncBoundedQueue(3)
    for i in range(3):
        q.put_nowait(i)
    joiner = asyncio.create_task(q.join())
    await settle()
    assert q.close(drain=False) == [0, 1, 2]
    assert await asyncio.wait_for(joiner, 5) is True
    with pytest.raises(Closed):
        q.get_nowait()


async def test_close_wakes_every_waiting_getter_and_putter() -> None:
    empty: AsyncBoundedQueue[int] = AsyncBoundedQueue(1)
    full: AsyncBoundedQueue[int] = AsyncBoundedQueue(1)
    full.put_nowait(0)
    getters = [asyncio.create_task(empty.get()) for _ in range(10)]
    putters = [asyncio.create_task(full.put(i, timeout=60)) for i in range(10)]
    await settle()
    assert not any(t.done() for t in getters + putters)
    empty.close()
    assert full.close(drain=False) == [0]
    results = await asyncio.wait_for(asyncio.gather(*getters, *putters, return_exceptions=True), 5)
    assert all(isinstance(r, Closed) for r in results)


async def test_getters_waiting_at_a_drain_close_share_the_remaining_items() -> None:
    q: AsyncBoundedQueue[int] = AsyncBoundedQueue(2)
    getters = [asyncio.create_task(q.get()) for _ in range(5)]
    await settle()
    q.put_nowait(1)
    q.put_nowait(2)
    q.close()
    results = await asyncio.wait_for(asyncio.gather(*getters, return_exceptions=True), 5)
    assert sorted(r for r in results if isinstance(r, int)) == [1, 2]
    assert sum(isinstance(r, Closed) for r in results) == 3
