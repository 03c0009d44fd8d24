"""A worker whose partition renewal comes late (a starved process: the ticker thread did not run
for longer than its local trust, 0.8 of the lease) while its lease is still alive in Redis.

Before: the partition was dropped and taken again by the same worker under a new epoch, which
handed back its own URLs in flight and refused their finishes: the pages were fetched twice
(the Redis Cluster e2e's duplicates on a loaded box). Now the renewal keeps the epoch when the
lease still names this worker under it (nobody can have taken it over), its hosts are scheduled
again, and an outcome that arrived in the gap waits for the renewal instead of being refused.
Time is a fake monotonic clock; Redis-side expiry is forced by deleting the lease key."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from services.crawler.partitions import Fenced, PartitionManager, lease_key
from services.crawler.store import Finish, NewURL, Outcome, URLState
from services.crawler.store_redis import RedisStore, asked_twice_counts

from .test_partitions import FakeClock, _host_in


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    import redis

    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def _one(client: Any) -> tuple[PartitionManager, FakeClock, RedisStore, str]:
    clock = FakeClock()
    mgr = PartitionManager(client, "a", partitions=1, lease_seconds=30, clock=clock)
    mgr.tick()
    store = RedisStore(client, "t", mgr)
    host = _host_in(0, 1)
    store.add([NewURL(f"http://{host}/x", host, 0), NewURL(f"http://{host}/y", host, 0)], now=0)
    store.changed_hosts()
    return mgr, clock, store, host


def test_a_late_renewal_of_a_live_lease_keeps_the_epoch_and_the_urls_in_flight(client: Any) -> None:
    mgr, clock, store, host = _one(client)
    rec = store.claim(host, "a", 600, now=1)
    assert rec is not None and store.start(rec.id, "a", 600, now=1)
    clock.t += 25  # the ticker starved past 0.8 of the 30 s lease; Redis still holds it
    assert store.claim(host, "a", 600, now=2) is None  # not trusted meanwhile: nothing claimed
    with pytest.raises(Fenced):
        store.save_host(host, {"next": 0.0})
    gained, lost = mgr.tick()
    assert (gained, lost) == ([], []) and mgr.owned[0].epoch == 1 and mgr.resumed == 1
    assert (host, 0.0) in store.changed_hosts()  # its hosts compete again
    assert store.expire_leases(now=2) == 0  # nothing handed back: the URL in flight is still ours
    store.finish(Finish(rec.id, Outcome(URLState.FETCHED, status=200), [], now=3))  # accepted, same epoch
    assert store.counts()["FETCHED"] == 1


def test_a_late_renewal_of_an_expired_lease_loses_the_partition(client: Any) -> None:
    mgr, clock, store, host = _one(client)
    rec = store.claim(host, "a", 600, now=1)
    assert rec is not None and store.start(rec.id, "a", 600, now=1)
    clock.t += 40
    client.delete(lease_key(0))  # what the TTL did: another worker may own it now
    b = PartitionManager(client, "b", partitions=1, lease_seconds=30)
    b.tick()
    assert b.owned[0].epoch == 2
    mgr.tick()
    assert 0 not in mgr.owned and mgr.resumed == 0
    with pytest.raises(Fenced):
        store.finish(Finish(rec.id, Outcome(URLState.FETCHED, status=200), [], now=3))


async def test_an_outcome_that_arrives_before_the_late_renewal_waits_for_it(client: Any) -> None:
    mgr, clock, store, host = _one(client)
    rec = store.claim(host, "a", 600, now=1)
    assert rec is not None and store.start(rec.id, "a", 600, now=1)
    clock.t += 25
    finish = asyncio.create_task(
        store.afinish(Finish(rec.id, Outcome(URLState.FETCHED, status=200), [], now=3))
    )
    for _ in range(100):  # bounded: it must still be waiting, not refused
        await asyncio.sleep(0)
    assert not finish.done()
    await asyncio.to_thread(mgr.tick)  # the ticker's renewal (its own thread in a worker)
    await asyncio.wait_for(finish, timeout=10)
    assert store.counts()["FETCHED"] == 1


async def test_an_outcome_waiting_for_a_renewal_is_refused_when_the_lease_is_lost(client: Any) -> None:
    mgr, clock, store, host = _one(client)
    rec = store.claim(host, "a", 600, now=1)
    assert rec is not None and store.start(rec.id, "a", 600, now=1)
    clock.t += 40
    client.delete(lease_key(0))
    PartitionManager(client, "b", partitions=1, lease_seconds=30).tick()
    retry = asyncio.create_task(store.aretry(rec.id, not_before=0, error="x"))
    await asyncio.to_thread(mgr.tick)
    with pytest.raises(Fenced):
        await asyncio.wait_for(retry, timeout=10)
    assert store.counts()["FETCHING"] == 1  # as the old owner left it; its new owner hands it back


async def test_an_answer_lost_to_fencing_is_counted_as_a_page_the_server_will_see_twice(client: Any) -> None:
    """The worker's own count of duplicates (the workers e2e compares it with websim's log)."""
    mgr, clock, store, host = _one(client)
    recs = [store.claim(host, "a", 600, now=1) for _ in range(2)]
    assert all(r is not None and store.start(r.id, "a", 600, now=1) for r in recs)
    first, second = (r.id for r in recs if r is not None)
    await store.aretry(first, not_before=0, error="ReadTimeout")  # no answer: maybe answered late
    assert (store.answers_lost, store.unanswered_retries) == (0, 1)
    clock.t += 40
    client.delete(lease_key(0))
    PartitionManager(client, "b", partitions=1, lease_seconds=30).tick()
    mgr.tick()
    with pytest.raises(Fenced):  # a 200 in hand, refused: b's worker will ask the page again
        await store.afinish(Finish(second, Outcome(URLState.FETCHED, status=200), [], now=3))
    assert store.answers_lost == 1
    assert asked_twice_counts(client, "t") == {"answers_lost": 1, "unanswered_retries": 1}  # kept in Redis
