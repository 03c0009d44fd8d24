"""BoundedQueue under many threads: every item delivered once, dropped, or refused; nobody hangs.

Each run has P producers and C consumers with random timeouts on both sides and, in most
variants, a close() in mid-flight. The ledger at the end must balance exactly:

    received (by consumers)  +  dropped (returned by close)  ==  accepted (put() returned)
    accepted  +  refused (put() raised Full or Closed)  +  never tried  ==  every item

with no item received twice. Within one consumer, items of one producer arrive in the order
that producer put them (FIFO seen through any single consumer). Every thread must finish within
a bound: a thread still alive is a lost wake-up.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from libs.queues import BoundedQueue, Closed, Empty, Full
from tests.libs.queues.waiters import parked

JOIN_BOUND_S = 15.0
# Timeouts a call picks from: None blocks, 0 is a poll, the rest expire now and then.
TIMEOUTS = (None, None, 0.0, 0.0005, 0.002)

Item = tuple[int, int]  # (producer, sequence number)


@dataclass
class Ledger:
    accepted: list[list[Item]] = field(default_factory=list)
    refused: list[list[Item]] = field(default_factory=list)
    never_tried: list[list[Item]] = field(default_factory=list)
    received: list[list[Item]] = field(default_factory=list)
    dropped: list[Item] = field(default_factory=list)


def run(
    *,
    producers: int,
    consumers: int,
    items: int,
    maxsize: int,
    close_after: int | None,
    drain: bool,
    seed: int,
    parked_putters: int = 0,
    close_at_depth: int = 0,
    put_timeouts: tuple[float | None, ...] = TIMEOUTS,
) -> tuple[Ledger, BoundedQueue[Item]]:
    """Run one storm; close once ``close_after`` items were received (None: after the producers)
    with at least ``close_at_depth`` items queued and ``parked_putters`` producers blocked in put()."""
    q: BoundedQueue[Item] = BoundedQueue(maxsize)
    per_producer = items // producers
    ledger = Ledger(
        accepted=[[] for _ in range(producers)],
        refused=[[] for _ in range(producers)],
        never_tried=[[] for _ in range(producers)],
        received=[[] for _ in range(consumers)],
    )
    start = threading.Barrier(producers + consumers + 1)

    def produce(p: int) -> None:
        rng = random.Random(seed * 1000 + p)
        accepted, refused = ledger.accepted[p], ledger.refused[p]
        start.wait()
        for n in range(per_producer):
            item = (p, n)
            try:
                q.put(item, timeout=rng.choice(put_timeouts))
            except Full:
                refused.append(item)
            except Closed:
                refused.append(item)
                ledger.never_tried[p].extend((p, m) for m in range(n + 1, per_producer))
                return
            else:
                accepted.append(item)

    def consume(c: int) -> None:
        rng = random.Random(seed * 1000 + 500 + c)
        received = ledger.received[c]
        start.wait()
        while True:
            try:
                item = q.get(timeout=rng.choice(TIMEOUTS))
            except Empty:
                continue
            except Closed:
                return
            received.append(item)
            q.task_done()

    threads = [threading.Thread(target=produce, args=(p,), name=f"producer-{p}") for p in range(producers)]
    threads += [threading.Thread(target=consume, args=(c,), name=f"consumer-{c}") for c in range(consumers)]
    for thread in threads:
        thread.start()
    start.wait()
    deadline = time.monotonic() + JOIN_BOUND_S
    if close_after is None:
        for thread in threads[:producers]:
            thread.join(max(0.0, deadline - time.monotonic()))
        ledger.dropped = q.close(drain=drain)
    else:
        # Reading list lengths from another thread is a racy snapshot, which is all we need.
        while (
            sum(map(len, ledger.received)) < close_after or q.qsize() < close_at_depth
        ) and time.monotonic() < deadline:
            time.sleep(0.0005)
        if parked_putters:
            parked(q.not_full, parked_putters)
        ledger.dropped = q.close(drain=drain)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"deadlock: {alive} still blocked after {JOIN_BOUND_S} s"
    return ledger, q


def check_ledger(ledger: Ledger, *, producers: int, items: int) -> None:
    flat = lambda lists: [x for xs in lists for x in xs]  # noqa: E731
    received = flat(ledger.received)
    accepted, refused, never_tried = flat(ledger.accepted), flat(ledger.refused), flat(ledger.never_tried)

    duplicates = [item for item, n in Counter(received).items() if n > 1]
    assert not duplicates, f"delivered twice: {duplicates[:5]}"
    assert not set(received) & set(ledger.dropped), "an item both delivered and dropped"
    assert Counter(received) + Counter(ledger.dropped) == Counter(accepted), "accepted items lost or invented"
    everything = Counter(accepted) + Counter(refused) + Counter(never_tried)
    per_producer = items // producers
    assert everything == Counter((p, n) for p in range(producers) for n in range(per_producer))

    for c, got in enumerate(ledger.received):
        last: dict[int, int] = {}
        for p, n in got:
            assert n > last.get(p, -1), f"consumer {c} saw producer {p}'s items out of order"
            last[p] = n
    # close() hands back the dropped items oldest first: per producer, increasing.
    last = {}
    for p, n in ledger.dropped:
        assert n > last.get(p, -1)
        last[p] = n


def test_sixteen_by_sixteen_threads_deliver_fifty_thousand_items_exactly_once() -> None:
    ledger, q = run(
        producers=16, consumers=16, items=50_000, maxsize=64, close_after=None, drain=True, seed=1
    )
    check_ledger(ledger, producers=16, items=50_000)
    assert ledger.dropped == []
    assert q.join(timeout=JOIN_BOUND_S)  # every received item was acknowledged
    # With random timeouts some puts give up; most still get through.
    assert sum(map(len, ledger.accepted)) > 0


@pytest.mark.parametrize("seed", [2, 3])
def test_close_with_drain_in_mid_flight_delivers_every_accepted_item(seed: int) -> None:
    ledger, q = run(
        producers=16, consumers=16, items=30_000, maxsize=32, close_after=5_000, drain=True, seed=seed
    )
    check_ledger(ledger, producers=16, items=30_000)
    assert ledger.dropped == []
    assert q.join(timeout=JOIN_BOUND_S)


@pytest.mark.parametrize("seed", [4, 5])
def test_close_with_cancel_in_mid_flight_returns_what_was_not_delivered(seed: int) -> None:
    # Fewer consumers than producers and a close when the queue is at least half full, so the
    # cancel has items to drop (and hand back).
    ledger, q = run(
        producers=16,
        consumers=8,
        items=30_000,
        maxsize=256,
        close_after=5_000,
        close_at_depth=128,
        drain=False,
        seed=seed,
    )
    check_ledger(ledger, producers=16, items=30_000)
    assert q.join(timeout=0)  # a cancelled queue never keeps join() waiting


def test_a_one_slot_queue_with_many_waiters_and_short_timeouts_loses_no_wakeup() -> None:
    # The smallest bound maximises parked threads on both conditions and timeouts that race
    # a notify(): a waiter whose wait timed out while being notified must still take the item.
    ledger, q = run(producers=8, consumers=8, items=8_000, maxsize=1, close_after=None, drain=True, seed=6)
    check_ledger(ledger, producers=8, items=8_000)
    assert q.join(timeout=JOIN_BOUND_S)


def test_close_while_only_producers_run_refuses_or_returns_every_item() -> None:
    # No consumer: producers fill the queue and all park in put(); the cancel must wake them
    # all, and what they had queued comes back to the caller.
    ledger, _ = run(
        producers=8,
        consumers=0,
        items=4_000,
        maxsize=16,
        close_after=0,
        drain=False,
        seed=7,
        parked_putters=8,
        put_timeouts=(None,),
    )
    check_ledger(ledger, producers=8, items=4_000)
    assert sum(map(len, ledger.received)) == 0
    assert len(ledger.dropped) == 16
