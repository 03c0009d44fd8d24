"""AsyncBoundedQueue under a storm of cancellations, timeouts and a close in mid-flight.

Every put() and get() runs as its own task so that a "chaos" task can cancel any of them at
any moment: while parked, right after being woken, or before it started. The ledger must still
balance exactly, as in the thread stress test:

    received + dropped == accepted          (no item lost, none invented, none twice)
    accepted + refused + never tried == every item

A get() task that was cancelled must not have taken an item; a put() task that was cancelled
must not have queued one. Each run is bounded by asyncio.timeout: a hang is a lost wake-up.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from libs.queues import AsyncBoundedQueue, Closed, QueueEmpty, QueueFull

RUN_BOUND_S = 15.0
TIMEOUTS = (None, None, None, 0.0, 0.0005, 0.002)

Item = tuple[int, int]


@dataclass
class Ledger:
    accepted: list[Item] = field(default_factory=list)
    refused: list[Item] = field(default_factory=list)
    never_tried: list[Item] = field(default_factory=list)
    received: list[Item] = field(default_factory=list)
    dropped: list[Item] = field(default_factory=list)
    cancelled_ops: int = 0


async def storm(
    *,
    producers: int,
    consumers: int,
    items: int,
    maxsize: int,
    close_after: int | None,
    drain: bool,
    seed: int,
    cancel_every: int = 3,
    cancel_rate: float = 0.5,
) -> Ledger:
    rng = random.Random(seed)
    q: AsyncBoundedQueue[Item] = AsyncBoundedQueue(maxsize)
    ledger = Ledger()
    live: list[asyncio.Task[object]] = []  # put/get tasks the chaos task may cancel
    per_producer = items // producers

    async def run_op(coro: object) -> asyncio.Task[object]:
        task: asyncio.Task[object] = asyncio.create_task(coro)  # type: ignore[arg-type]
        live.append(task)
        await asyncio.wait([task])  # never raises: the outcome is read from the task
        live.remove(task)
        return task

    async def produce(p: int) -> None:
        for n in range(per_producer):
            item = (p, n)
            task = await run_op(q.put(item, timeout=rng.choice(TIMEOUTS)))
            if task.cancelled():
                ledger.cancelled_ops += 1
                ledger.refused.append(item)
                continue
            error = task.exception()
            if error is None:
                ledger.accepted.append(item)
            elif isinstance(error, QueueFull):
                ledger.refused.append(item)
            elif isinstance(error, Closed):
                ledger.refused.append(item)
                ledger.never_tried.extend((p, m) for m in range(n + 1, per_producer))
                return
            else:
                raise error

    async def consume() -> None:
        while True:
            task = await run_op(q.get(timeout=rng.choice(TIMEOUTS)))
            if task.cancelled():
                ledger.cancelled_ops += 1
                continue
            error = task.exception()
            if error is None:
                ledger.received.append(task.result())  # type: ignore[arg-type]
                q.task_done()
            elif isinstance(error, Closed):
                return
            elif not isinstance(error, QueueEmpty):
                raise error

    async def chaos(stop: asyncio.Event) -> None:
        # Every few loop turns, maybe cancel a random live op: some are parked, some were
        # just woken by a put/get and have not run yet, some have not started. Cancelling
        # only sometimes lets a lone op finish now and then (the storm must end).
        while not stop.is_set():
            for _ in range(rng.randint(0, cancel_every)):
                await asyncio.sleep(0)
            if live and rng.random() < cancel_rate:
                rng.choice(live).cancel()

    stop = asyncio.Event()
    async with asyncio.timeout(RUN_BOUND_S):
        chaos_task = asyncio.create_task(chaos(stop))
        producer_tasks = [asyncio.create_task(produce(p)) for p in range(producers)]
        consumer_tasks = [asyncio.create_task(consume()) for _ in range(consumers)]
        if close_after is None:
            await asyncio.gather(*producer_tasks)
        else:
            while len(ledger.received) < close_after:
                await asyncio.sleep(0)
        ledger.dropped = q.close(drain=drain)
        await asyncio.gather(*producer_tasks, *consumer_tasks)
        stop.set()
        await chaos_task
    return ledger


def check_ledger(ledger: Ledger, *, producers: int, items: int) -> None:
    duplicates = [item for item, n in Counter(ledger.received).items() if n > 1]
    assert not duplicates, f"delivered twice: {duplicates[:5]}"
    assert Counter(ledger.received) + Counter(ledger.dropped) == Counter(ledger.accepted)
    everything = Counter(ledger.accepted) + Counter(ledger.refused) + Counter(ledger.never_tried)
    assert everything == Counter((p, n) for p in range(producers) for n in range(items // producers))
    # Items of one producer leave the queue in the order they entered it.
    last: dict[int, int] = {}
    for p, n in ledger.received:
        assert n > last.get(p, -1), f"producer {p}'s items out of order"
        last[p] = n
    assert ledger.cancelled_ops > 0, "the storm cancelled nothing: it proved nothing"


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_cancellation_storm_loses_and_duplicates_nothing(seed: int) -> None:
    ledger = await storm(
        producers=16, consumers=16, items=20_000, maxsize=8, close_after=None, drain=True, seed=seed
    )
    check_ledger(ledger, producers=16, items=20_000)
    assert ledger.dropped == []


@pytest.mark.parametrize("seed", [21, 22])
async def test_close_with_drain_in_a_storm_delivers_every_accepted_item(seed: int) -> None:
    ledger = await storm(
        producers=16, consumers=16, items=20_000, maxsize=16, close_after=3_000, drain=True, seed=seed
    )
    check_ledger(ledger, producers=16, items=20_000)
    assert ledger.dropped == []


@pytest.mark.parametrize("seed", [31, 32])
async def test_close_with_cancel_in_a_storm_returns_every_undelivered_item(seed: int) -> None:
    ledger = await storm(
        producers=16, consumers=4, items=20_000, maxsize=64, close_after=3_000, drain=False, seed=seed
    )
    check_ledger(ledger, producers=16, items=20_000)


async def test_a_one_slot_queue_with_constant_cancellation_loses_no_wakeup() -> None:
    ledger = await storm(
        producers=8,
        consumers=8,
        items=4_000,
        maxsize=1,
        close_after=None,
        drain=True,
        seed=41,
        cancel_every=1,
    )
    check_ledger(ledger, producers=8, items=4_000)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.mark.parametrize("seed", [51, 52])
async def test_wakeups_then_cancellations_in_random_order_never_strand_an_item(seed: int) -> None:
    # The storm above can hide a lost wake-up: a later get() finds the stranded item itself.
    # Here nothing comes later. Each round parks getters, then (with no loop turn in between)
    # puts items and cancels getters in a random order, some of them already woken. Once the
    # loop settles, an item still queued while a getter still waits is a lost wake-up.
    rng = random.Random(seed)
    q: AsyncBoundedQueue[int] = AsyncBoundedQueue(8)
    next_item = 0
    received: list[int] = []
    for _ in range(300):
        getters = [asyncio.create_task(q.get()) for _ in range(rng.randint(1, 8))]
        await settle()
        actions = ["put"] * rng.randint(1, len(getters)) + ["cancel"] * rng.randint(0, len(getters))
        rng.shuffle(actions)
        for action in actions:
            if action == "put":
                q.put_nowait(next_item)
                next_item += 1
            else:
                rng.choice(getters).cancel()
        await settle()
        waiting = [g for g in getters if not g.done()]
        assert not (q.qsize() and waiting), f"{q.qsize()} item(s) queued while {len(waiting)} getter(s) wait"
        received += [g.result() for g in getters if g.done() and not g.cancelled()]
        for g in waiting:
            g.cancel()
        while not q.empty():
            received.append(q.get_nowait())
        await settle()
    assert sorted(received) == list(range(next_item))


@pytest.mark.parametrize("seed", [61, 62])
async def test_slot_wakeups_then_cancellations_in_random_order_never_strand_a_slot(seed: int) -> None:
    # The same for putters: room in the queue while a putter still waits is a lost wake-up.
    rng = random.Random(seed)
    q: AsyncBoundedQueue[int] = AsyncBoundedQueue(4)
    next_item = 0
    accepted: list[int] = []
    received: list[int] = []
    for _ in range(300):
        while not q.full():
            q.put_nowait(next_item)
            accepted.append(next_item)
            next_item += 1
        putters: dict[asyncio.Task[None], int] = {}
        for _ in range(rng.randint(1, 8)):
            putters[asyncio.create_task(q.put(next_item))] = next_item
            next_item += 1
        await settle()
        actions = ["get"] * rng.randint(1, q.maxsize) + ["cancel"] * rng.randint(0, len(putters))
        rng.shuffle(actions)
        for action in actions:
            if action == "get":
                received.append(q.get_nowait())
            else:
                rng.choice(list(putters)).cancel()
        await settle()
        waiting = [p for p in putters if not p.done()]
        assert not (not q.full() and waiting), f"room for {q.maxsize - q.qsize()} while {len(waiting)} wait"
        accepted += [item for p, item in putters.items() if p.done() and not p.cancelled()]
        for p in waiting:
            p.cancel()
        await settle()
    while not q.empty():
        received.append(q.get_nowait())
    assert sorted(received) == sorted(accepted)
