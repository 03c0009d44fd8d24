"""Round trips to Redis per store operation (on one Redis): what a page costs a worker.

Each worker's event loop waits for every synchronous round trip, so the store folds what it can
into one: a finish with its links (any partitions) is one pipeline, an empty claim answers the
next_ready_at that follows it, the page budget is not read before every turn, the reaper's lease
expiry and the ticker's lease renewals take one round trip for all partitions. The counts come
from the client's own connection (every send is one round trip: a command or a pipeline).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from services.crawler.partitions import Fenced, PartitionManager, epoch_key, lease_key, partition_of
from services.crawler.store import Finish, NewURL, Outcome, URLState
from services.crawler.store_redis import RedisStore


class CountingConnection(redis.Connection):
    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    c = redis.Redis.from_url(redis_url, connection_class=CountingConnection)
    yield c
    c.close()


def _round_trips(fn: Any) -> tuple[Any, int]:
    before = CountingConnection.sent
    out = fn()
    return out, CountingConnection.sent - before


def _hosts(partitions: int) -> list[str]:
    """One host per partition, in partition order."""
    out: dict[int, str] = {}
    for i in range(10_000):
        h = f"h{i}.sim.test"
        out.setdefault(partition_of(h, partitions), h)
        if len(out) == partitions:
            return [out[p] for p in range(partitions)]
    raise AssertionError("no host found")


def _store(client: Any, name: str = "w", clock: Clock | None = None) -> tuple[RedisStore, PartitionManager]:
    mgr = PartitionManager(client, name, partitions=4, lease_seconds=30, clock=clock or Clock())
    mgr.tick()
    assert len(mgr.owned) == 4
    return RedisStore(client, "t", mgr), mgr


def test_a_page_with_links_to_three_partitions_finishes_in_one_round_trip(client: Any) -> None:
    store, _ = _store(client)
    h0, h1, h2, _h3 = _hosts(4)
    store.add([NewURL(f"http://{h0}/", h0, 0)], now=0)
    rec = store.claim(h0, "w", 60, now=0)
    assert rec is not None and store.start(rec.id, "w", 60, now=0)
    links = [NewURL(f"http://{h}/{k}", h, 1) for h in (h0, h1, h2) for k in ("a", "b")]
    links.append(NewURL(f"http://{h0}/", h0, 1))  # a link back to itself: seen, not new
    new, trips = _round_trips(
        lambda: store.finish(
            Finish(rec.id, Outcome(URLState.FETCHED, status=200), links, max_depth=5, parent_depth=0, now=1)
        )
    )
    assert (new, trips) == (6, 1)
    assert store.counts()["FETCHED"] == 1 and store.counts()["DISCOVERED"] == 6
    for h in (h0, h1, h2):
        assert store.host_counts(h)["DISCOVERED"] == 2
    got = store.claim(h1, "w", 60, now=1)
    assert got is not None and got.depth == 1
    # a second finish (an at-least-once refetch) writes nothing and adds nothing new
    again = store.finish(Finish(rec.id, Outcome(URLState.FAILED), links, max_depth=5, parent_depth=0, now=2))
    assert again == 0 and store.counts()["FETCHED"] == 1 and store.counts()["FAILED"] == 0


def test_a_depth_lowered_while_fetching_lowers_its_links(client: Any) -> None:
    """The finish adds links at the depth the page was claimed at; if a shorter path reached the
    page meanwhile the script says so and the links are added again, lower (BFS depth)."""
    store, _ = _store(client)
    h0, h1, _, _ = _hosts(4)
    store.add([NewURL(f"http://{h0}/far", h0, 3)], now=0, max_depth=3)
    rec = store.claim(h0, "w", 60, now=0)
    assert rec is not None and store.start(rec.id, "w", 60, now=0)
    store.add([NewURL(f"http://{h0}/far", h0, 1)], now=0, max_depth=3)  # found at depth 1 meanwhile
    links = [NewURL(f"http://{h0}/c", h0, 4), NewURL(f"http://{h1}/c", h1, 4)]
    new = store.finish(
        Finish(rec.id, Outcome(URLState.FETCHED, status=200), links, max_depth=3, parent_depth=3, now=1)
    )
    assert new == 2
    depths = {}
    for h in (h0, h1):
        r = store.claim(h, "w", 60, now=1)
        assert r is not None
        depths[h] = r.depth
    assert depths == {h0: 2, h1: 2}


def test_an_empty_claim_answers_the_next_ready_at_that_follows(client: Any) -> None:
    store, _ = _store(client)
    h0 = _hosts(4)[0]
    store.add([NewURL(f"http://{h0}/", h0, 0)], now=0)
    rec = store.claim(h0, "w", 60, now=0)
    assert rec is not None and store.start(rec.id, "w", 60, now=0)
    store.retry(rec.id, not_before=4e9, error="HTTP 503", status=503)
    assert store.claim(h0, "w", 60, now=10) is None
    assert _round_trips(lambda: store.next_ready_at(h0)) == (4e9, 0)
    assert _round_trips(lambda: store.next_ready_at(h0)) == (4e9, 1)  # asked again: read
    assert store.claim(_hosts(4)[1], "w", 60, now=10) is None  # a host with nothing at all
    assert _round_trips(lambda: store.next_ready_at(_hosts(4)[1])) == (None, 0)


def test_the_page_budget_is_not_read_before_every_turn_and_stays_one_counter(client: Any) -> None:
    a, _ = _store(client, "a")
    b = RedisStore(client, "t", a.mgr)  # another worker's view of the same crawl
    assert _round_trips(lambda: a.reserve_page(3)) == (True, 1)
    assert _round_trips(lambda: a.pages_reserved()) == (1, 0)  # below the limit: as last seen
    assert b.reserve_page(3) and b.reserve_page(3)
    assert not b.reserve_page(3)
    assert a.pages_reserved() == 1  # a hint: a has not reserved since
    assert not a.reserve_page(3)  # the counter decides
    assert a.pages_reserved() == 3 and b.pages_reserved() == 3
    b.unreserve_page()
    assert b.pages_reserved() == 2
    assert a.pages_reserved() == 2  # at the limit as last seen: read again
    assert a.reserve_page(3) and not b.reserve_page(3)


def test_lease_expiry_and_renewals_take_one_round_trip_for_all_partitions(client: Any) -> None:
    store, mgr = _store(client)
    hosts = _hosts(4)
    store.add([NewURL(f"http://{h}/", h, 0) for h in hosts], now=0)
    for h in hosts:
        assert store.claim(h, "w", 5, now=0) is not None
    assert _round_trips(lambda: store.expire_leases(now=10)) == (4, 1)
    assert store.counts()["DISCOVERED"] == 4
    # a tick: heartbeat and membership in one round trip, the 4 renewals in another
    assert _round_trips(mgr.tick) == (([], []), 2)
    assert len(mgr.owned) == 4


def test_a_stale_epoch_refused_by_the_server_adds_none_of_the_pages_own_links(client: Any) -> None:
    """Fencing holds for the links the finish script adds: a worker whose clock still trusts a
    lease that another worker has taken is refused by the server, and nothing of its partition
    is written (links to other partitions are unfenced adds, idempotent, as before)."""
    clock = Clock()
    store, mgr = _store(client, "a", clock)
    h0, h1, _, _ = _hosts(4)
    store.add([NewURL(f"http://{h0}/", h0, 0)], now=0)
    rec = store.claim(h0, "a", 600, now=0)
    assert rec is not None and store.start(rec.id, "a", 600, now=0)
    p = partition_of(h0, 4)
    client.delete(lease_key(p))  # its lease ran out in Redis; b adopts it under a new epoch
    b = PartitionManager(client, "b", partitions=4, lease_seconds=30, clock=Clock())
    assert b._acquire(keys=[lease_key(p), epoch_key(p)], args=["b", 30_000])
    links = [NewURL(f"http://{h0}/own", h0, 1), NewURL(f"http://{h1}/other", h1, 1)]
    with pytest.raises(Fenced):
        store.finish(Finish(rec.id, Outcome(URLState.FETCHED, status=200), links, parent_depth=0, now=1))
    assert store.host_counts(h0) == {**{s.name: 0 for s in URLState}, "FETCHING": 1}
    assert store.host_counts(h1)["DISCOVERED"] == 1
    assert p not in mgr.owned  # the refusal made it forget the partition


def test_the_gate_and_the_start_are_one_round_trip_and_write_nothing_when_held(client: Any) -> None:
    store, _ = _store(client)
    h0 = _hosts(4)[0]
    store.add([NewURL(f"http://{h0}/a", h0, 0), NewURL(f"http://{h0}/b", h0, 0)], now=0)
    rec = store.claim(h0, "w", 60, now=0)
    assert rec is not None
    record: dict[str, float | None] = {"next": 1e12, "crawl_delay": None, "backoff": 1.0, "retry_until": None}
    (wait, started), trips = _round_trips(lambda: store.gate_start(h0, time.time(), record, rec.id, "w", 60))
    assert (wait, started, trips) == (None, True, 1)
    assert store.host_counts(h0)["FETCHING"] == 1
    # the host's record now says "not before a long time": the next URL is held, not started
    nxt = store.claim(h0, "w", 60, now=0)
    assert nxt is not None
    wait, started = store.gate_start(h0, time.time(), record, nxt.id, "w", 60)
    assert wait is not None and wait > time.time() + 1e6 and not started
    assert store.host_counts(h0)["SCHEDULED"] == 1
    # a URL whose lease is gone (another owner name) passes no gate and writes no record
    client.delete(f"pg:host:{{p{partition_of(h0, 4)}}}:{h0}")
    assert store.gate_start(h0, time.time(), record, nxt.id, "other", 60) == (None, False)
    assert store.load_host(h0) is None and store.host_counts(h0)["SCHEDULED"] == 1


def test_a_stale_epoch_passes_no_gate_and_starts_nothing(client: Any) -> None:
    store, mgr = _store(client, "a")
    h0 = _hosts(4)[0]
    p = partition_of(h0, 4)
    store.add([NewURL(f"http://{h0}/a", h0, 0)], now=0)
    rec = store.claim(h0, "a", 60, now=0)
    assert rec is not None
    client.delete(lease_key(p))
    b = PartitionManager(client, "b", partitions=4, lease_seconds=30, clock=Clock())
    assert b._acquire(keys=[lease_key(p), epoch_key(p)], args=["b", 30_000])
    with pytest.raises(Fenced):
        store.gate_start(h0, time.time(), {"next": 1e12}, rec.id, "a", 60)
    assert store.load_host(h0) is None and store.host_counts(h0)["SCHEDULED"] == 1
    assert p not in mgr.owned
