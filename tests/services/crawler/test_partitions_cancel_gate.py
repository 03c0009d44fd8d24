"""Review of engine.Crawl._cancel_gate (issue 10): `_turn` calls it whenever the merged gate and
start (store.agate_start) raises or does not start the URL, whether or not the gate was taken.

A cancel is `store.save_host(host, slot.record(...))`, end=True. Before, on Redis it
- ended another request's in-flight count (it popped the host's oldest open gate, not one of its
  own: a gate never taken has none), so a draining partition could be released mid-request;
- wrote the host's record under the partition's *current* epoch from this process's slot: after
  the partition went to another worker and came back, a cancel for a URL claimed under the old
  epoch overwrote the other worker's "not before" with our own earlier time (a politeness hole).
Now a cancel undoes only a gate this store took, under that gate's epoch (refused if stale);
with no gate of its own open it writes nothing. The engine's own method is called here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from services.crawler.engine import Crawl
from services.crawler.partitions import Fenced, PartitionManager, lease_key
from services.crawler.politeness import HostSlot
from services.crawler.settings import PolitenessConfig
from services.crawler.store import NewURL
from services.crawler.store_redis import RedisStore

from .test_partitions import FakeClock, _host_in


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    import redis

    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def _cancel_gate(store: RedisStore, host: str, slot: HostSlot) -> None:
    Crawl._cancel_gate(SimpleNamespace(store=store), host, slot)  # type: ignore[arg-type]


def _record(next_wall: float) -> dict[str, float | None]:
    return {"next": next_wall, "crawl_delay": None, "backoff": 1.0, "retry_until": None}


def _owner_of_one(client: Any, paths: list[str]) -> tuple[PartitionManager, RedisStore, str]:
    """Worker "a" owning the one partition (epoch 1), with URLs at these paths of one host."""
    a = PartitionManager(client, "a", partitions=1, lease_seconds=30, clock=FakeClock())
    a.tick()
    store = RedisStore(client, "t", a)
    host = _host_in(0, 1)
    store.add([NewURL(f"http://{host}{path}", host, 0) for path in paths], now=0)
    return a, store, host


def test_a_cancelled_gate_never_taken_under_a_stale_claim_keeps_the_new_owners_gap(client: Any) -> None:
    a, store_a, host = _owner_of_one(client, ["/x"])
    rec = store_a.claim(host, "a", 600, now=1)
    assert rec is not None  # claimed under epoch 1
    # a's lease runs out; b takes the partition (epoch 2), asks the host (30 s gap), and stops
    client.delete(lease_key(0))
    b = PartitionManager(client, "b", partitions=1, lease_seconds=30)
    b.tick()
    store_b = RedisStore(client, "t", b)
    now = time.time()
    assert store_b.gate_host(host, now, _record(now + 30.0)) is None
    b.leave()
    a.tick()  # a owns it again, under epoch 3
    assert a.owned[0].epoch == 3
    # the engine's turn: the merged gate and start refuses the stale claim, then cancels the gate
    slot = HostSlot(host, PolitenessConfig(min_delay=0.05))
    with pytest.raises(Fenced):
        store_a.gate_start(host, now, _record(now + 0.3), rec.id, "a", 60)
    _cancel_gate(store_a, host, slot)
    wait_until = store_a.gate_host(host, time.time(), _record(time.time() + 0.3))
    assert wait_until is not None and wait_until - now > 25.0  # b's gap still holds


def test_a_cancelled_gate_never_taken_does_not_end_another_request_in_flight(client: Any) -> None:
    a, store, host = _owner_of_one(client, ["/x", "/y"])
    now = time.time()
    assert store.gate_host(host, now, _record(now - 1.0)) is None  # a robots.txt request in flight
    assert a.inflight[(0, 1)] == 1
    rec = store.claim(host, "a", 600, now=1)
    assert rec is not None and a.inflight[(0, 1)] == 2
    store.release(rec.id)  # its lease lost meanwhile: the gate and start will not start it
    assert store.gate_start(host, now, _record(now - 1.0), rec.id, "a", 60) == (None, False)
    _cancel_gate(store, host, HostSlot(host, PolitenessConfig(min_delay=0.05)))
    assert a.inflight[(0, 1)] == 1  # the robots.txt request is still in flight
    a.owned[0].draining = True
    a.tick()
    assert 0 in a.owned  # so a draining partition waits for its end
    store.save_host(host, _record(time.time() + 0.05))  # its end
    assert a.inflight[(0, 1)] == 0
    a.tick()  # released now (and, the only worker, taken afresh under a new epoch)
    assert a.owned[0].epoch == 2


def test_a_cancelled_gate_that_was_taken_is_given_back_under_its_own_epoch(client: Any) -> None:
    a, store, host = _owner_of_one(client, ["/x"])
    rec = store.claim(host, "a", 600, now=1)
    assert rec is not None
    now = time.time()
    assert store.gate_start(host, now, _record(now + 30.0), rec.id, "a", 60) == (None, True)
    assert a.inflight[(0, 1)] == 2  # the claim and the request
    _cancel_gate(store, host, HostSlot(host, PolitenessConfig(min_delay=0.05)))  # not sent after all
    assert a.inflight[(0, 1)] == 1
    assert store.gate_host(host, time.time(), _record(time.time())) is None  # the 30 s is given back
