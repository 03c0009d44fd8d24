"""Host partitions on a real Redis: fair shares, adoption after a lease runs out, fencing tokens.

Time is a fake monotonic clock where the test needs a lease to be "run out" locally; Redis-side
expiry is forced by deleting the lease key (what its TTL would do), so nothing waits on a timer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from services.crawler.partitions import (
    Fenced,
    PartitionManager,
    cluster_view,
    epoch_key,
    lease_key,
    partition_of,
    writes_key,
)
from services.crawler.store import Finish, NewURL, Outcome, URLState
from services.crawler.store_redis import RedisStore


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    import redis

    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def _mgr(client: Any, name: str, clock: FakeClock | None = None, partitions: int = 8) -> PartitionManager:
    return PartitionManager(client, name, partitions=partitions, lease_seconds=30, clock=clock or FakeClock())


def _host_in(p: int, partitions: int, prefix: str = "h") -> str:
    for i in range(10_000):
        h = f"{prefix}{i}.sim.test"
        if partition_of(h, partitions) == p:
            return h
    raise AssertionError("no host found")


def test_partition_of_is_stable_and_spread() -> None:
    assert partition_of("a.sim.test", 16) == partition_of("a.sim.test", 16)
    counts = [0] * 16
    for i in range(1600):
        counts[partition_of(f"h{i}.sim.test", 16)] += 1
    assert min(counts) > 50 and max(counts) < 150


def test_workers_rebalance_to_a_fair_share_on_join_and_leave(client: Any) -> None:
    a, b, c = _mgr(client, "a"), _mgr(client, "b"), _mgr(client, "c")
    a.tick()
    assert len(a.owned) == 8
    b.tick()  # b sees 2 workers but every partition is leased
    a.tick()  # a is above ceil(8/2)=4: drains (nothing in flight) and releases 4
    b.tick()
    assert len(a.owned) == 4 and len(b.owned) == 4
    c.tick()
    a.tick(), b.tick(), c.tick()
    assert sorted(len(m.owned) for m in (a, b, c)) == [2, 3, 3]
    assert set(a.owned) | set(b.owned) | set(c.owned) == set(range(8))
    assert not set(a.owned) & set(b.owned)
    c.leave()  # a clean stop releases at once
    a.tick(), b.tick()
    assert len(a.owned) + len(b.owned) == 8
    view = cluster_view(client)
    assert {w["worker"] for w in view["workers"]} == {"a", "b"}
    assert {p["owner"] for p in view["partition_owners"]} == {"a", "b"}


def test_a_draining_partition_is_released_only_when_its_claims_ended(client: Any) -> None:
    a = _mgr(client, "a", partitions=2)
    a.tick()
    store = RedisStore(client, "t", a)
    host = _host_in(1, 2)  # the highest partitions are drained first
    store.add([NewURL(f"http://{host}/x", host, 0), NewURL(f"http://{host}/y", host, 0)], now=0)
    rec = store.claim(host, "a", 60, now=1)
    assert rec is not None
    b = _mgr(client, "b", partitions=2)
    b.tick()
    a.tick()
    assert a.owned[1].draining  # above its share of 1, with a claim still out
    assert store.claim(host, "a", 60, now=1) is None  # no new claims while draining
    b.tick()
    assert 1 not in b.owned
    assert store.start(rec.id, "a", 60, now=1)  # but the claim in hand may finish
    store.finish(Finish(rec.id, Outcome(URLState.FETCHED, status=200), [], now=2))
    a.tick()
    assert set(a.owned) == {0}
    b.tick()
    assert set(b.owned) == {1}
    assert store.counts()["FETCHED"] == 1


def test_a_dead_workers_partitions_are_adopted_and_its_leases_handed_back(client: Any) -> None:
    clock_a = FakeClock()
    a = _mgr(client, "a", clock_a, partitions=2)
    a.tick()
    store_a = RedisStore(client, "t", a)
    host = _host_in(1, 2)
    store_a.add([NewURL(f"http://{host}/x", host, 0)], now=0)
    rec = store_a.claim(host, "a", 600, now=1)
    assert rec is not None and store_a.start(rec.id, "a", 600, now=1)
    # a dies: its heartbeat and leases run out (the TTL deletes the keys)
    client.zrem("pg:{workers}:live", "a")
    client.delete(lease_key(0), lease_key(1))
    b = _mgr(client, "b", partitions=2)
    store_b = RedisStore(client, "t", b)
    b.tick()
    assert set(b.owned) == {0, 1} and b.owned[1].epoch == 2
    # the URL a held comes back at once (not after its 600 s lease): a cannot write it any more
    assert store_b.expire_leases(now=2) == 1
    assert (host, 0.0) in store_b.changed_hosts()
    again = store_b.claim(host, "b", 60, now=2)
    assert again is not None and again.id == rec.id and again.attempts == 1


def test_a_stale_owner_writes_nothing(client: Any) -> None:
    """Frozen past its lease: its local clock says the lease is gone, and the store refuses its
    epoch anyway; the audit hash shows no write under the old epoch after the new owner came."""
    clock_a = FakeClock()
    a = _mgr(client, "a", clock_a, partitions=1)
    a.tick()
    store_a = RedisStore(client, "t", a)
    store_a.add([NewURL("http://x.test/1", "x.test", 0), NewURL("http://x.test/2", "x.test", 0)], now=0)
    rec = store_a.claim("x.test", "a", 600, now=1)
    assert rec is not None and store_a.start(rec.id, "a", 600, now=1)
    store_a.save_host("x.test", {"next": 5.0, "crawl_delay": None, "backoff": 1.0, "retry_until": None})
    before = client.hgetall(writes_key(0))
    # a freezes; its lease runs out; b adopts partition 0 with epoch 2
    client.delete(lease_key(0))
    b = _mgr(client, "b", partitions=1)
    store_b = RedisStore(client, "t", b)
    b.tick()
    assert b.owned[0].epoch == int(client.get(epoch_key(0))) == 2
    # a wakes: its own clock says its lease ran out, so it refuses before writing
    clock_a.t += 31
    with pytest.raises(Fenced):
        store_a.finish(
            Finish(
                rec.id, Outcome(URLState.FETCHED, status=200), [NewURL("http://y.test/", "y.test", 1)], now=3
            )
        )
    with pytest.raises(Fenced):
        store_a.save_host("x.test", {"next": 0.0})
    assert store_a.claim("x.test", "a", 600, now=3) is None
    # even with a clock that lies, the store refuses the stale epoch
    clock_a.t -= 31
    with pytest.raises(Fenced):
        store_a.retry(rec.id, not_before=0, error="x")
    assert 0 not in a.owned  # the refusal made a forget the partition
    after = client.hgetall(writes_key(0))
    assert after.get(b"a:1") == before.get(b"a:1")  # not one write under a's epoch since
    counts = store_b.counts()
    assert counts["FETCHED"] == 0 and counts["DISCOVERED"] == counts["RETRYABLE"] == 1
    record = store_b.load_host("x.test")  # (kept in Redis server time, read back in ours)
    assert record is not None and record["next"] == pytest.approx(5.0, abs=0.5)
    assert record["crawl_delay"] is None and record["backoff"] == 1.0 and record["retry_until"] is None


def test_links_to_another_partition_reach_its_owner(client: Any) -> None:
    a, b = _mgr(client, "a", partitions=2), _mgr(client, "b", partitions=2)
    a.tick(), b.tick(), a.tick(), b.tick()
    assert len(a.owned) == len(b.owned) == 1
    pa, pb = next(iter(a.owned)), next(iter(b.owned))
    ha, hb = _host_in(pa, 2), _host_in(pb, 2)
    store_a, store_b = RedisStore(client, "t", a), RedisStore(client, "t", b)
    store_b.changed_hosts()
    store_a.add([NewURL(f"http://{ha}/", ha, 0)], now=0)
    rec = store_a.claim(ha, "a", 60, now=0)
    assert rec is not None and store_a.start(rec.id, "a", 60, now=0)
    link = NewURL(f"http://{hb}/p", hb, 1)
    assert store_a.finish(Finish(rec.id, Outcome(URLState.FETCHED, status=200), [link], now=1)) == 1
    assert store_b.changed_hosts() == [(hb, 0.0)]
    assert store_a.pending_hosts() == []  # a does not see b's hosts
    assert store_a.claim(hb, "a", 60, now=1) is None  # nor can it claim them
    got = store_b.claim(hb, "b", 60, now=1)
    assert got is not None and got.url == link.url


def test_a_restarted_worker_takes_its_own_partitions_back_at_once(client: Any) -> None:
    a = _mgr(client, "a", partitions=2)
    a.tick()
    store = RedisStore(client, "t", a)
    host = _host_in(0, 2)
    store.add([NewURL(f"http://{host}/x", host, 0)], now=0)
    rec = store.claim(host, "a", 600, now=1)
    assert rec is not None and store.start(rec.id, "a", 600, now=1)
    # "a" dies (kill -9) and starts again under the same id, its leases still running in Redis
    again = _mgr(client, "a", partitions=2)
    other = _mgr(client, "b", partitions=2)  # (never ticks: not a live worker)
    assert other._acquire(keys=[lease_key(0), epoch_key(0)], args=["b", 30_000]) == 0  # not b's yet
    store2 = RedisStore(client, "t", again)
    again.tick()
    assert set(again.owned) == {0, 1} and again.owned[0].epoch == 2
    assert store2.expire_leases(now=2) == 1  # the URL the dead run held is back at once
    got = store2.claim(host, "a", 60, now=2)
    assert got is not None and got.id == rec.id
    with pytest.raises(Fenced):  # the dead run's epoch is stale
        store.finish(Finish(rec.id, Outcome(URLState.FETCHED, status=200), [], now=3))


def test_the_politeness_gate_lets_one_request_through_per_gap(client: Any) -> None:
    a = _mgr(client, "a", partitions=1)
    a.tick()
    store = RedisStore(client, "t", a)
    now = time.time()
    rec = {"next": now + 30.0, "crawl_delay": 30.0, "backoff": 1.0, "retry_until": None}
    assert store.gate_host("x.test", now, rec) is None  # go; the record now says "not for 30 s"
    wait_until = store.gate_host("x.test", now, rec)
    assert wait_until is not None and 29.0 < wait_until - now <= 30.0
    store.save_host("x.test", {**rec, "next": now - 1.0, "retry_until": now + 60.0})  # Retry-After
    wait_until = store.gate_host("x.test", now, rec)
    assert wait_until is not None and 59.0 < wait_until - now <= 60.0
