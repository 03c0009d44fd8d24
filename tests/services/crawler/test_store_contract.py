"""One contract for every FrontierStore: the same tests against SQLite and against a real Redis.

The Redis runs start their own redis-server (the `redis_url` fixture) and own every partition
through a PartitionManager, as a lone worker would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.crawler.partitions import PartitionManager
from services.crawler.store import Finish, FrontierStore, NewURL, Outcome, URLState


def _u(path: str, host: str = "a.test", depth: int = 0) -> NewURL:
    return NewURL(f"http://{host}{path}", host, depth)


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FrontierStore]:
    if request.param == "sqlite":
        from services.crawler.store_sqlite import SQLiteStore

        s: FrontierStore = SQLiteStore(tmp_path / "s.sqlite")
        yield s
        s.close()
        return
    import redis

    from services.crawler.store_redis import RedisStore

    url = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url)
    mgr = PartitionManager(client, "w-test", partitions=4, lease_seconds=600)
    mgr.tick()
    assert len(mgr.owned) == 4
    rs = RedisStore(client, "t", mgr)
    yield rs
    rs.close()
    client.close()


def _state_of(store: FrontierStore, host: str = "a.test") -> dict[str, int]:
    return {k: v for k, v in store.host_counts(host).items() if v}


def test_exact_dedup_and_per_host_cap(store: FrontierStore) -> None:
    assert store.add([_u("/a"), _u("/b"), _u("/a")], now=0) == 2
    assert store.add([_u("/a"), _u("/c"), _u("/d")], max_per_host=3, now=0) == 1
    assert store.counts()["DISCOVERED"] == 3


def test_claim_orders_by_depth_and_moves_through_states(store: FrontierStore) -> None:
    store.add([_u("/deep", depth=2), _u("/shallow", depth=0), _u("/other", host="b.test")], now=0)
    rec = store.claim("a.test", "w1", 10, now=100)
    assert rec is not None and rec.url.endswith("/shallow") and rec.state is URLState.SCHEDULED
    assert rec.host == "a.test" and rec.depth == 0 and rec.via is None and rec.attempts == 0
    assert not store.start(rec.id, "w2", 10, now=100)  # another owner cannot start it
    assert store.start(rec.id, "w1", 10, now=100)
    new = store.finish(Finish(rec.id, Outcome(URLState.FETCHED, status=200), [_u("/x", depth=1)], now=101))
    assert new == 1
    counts = store.counts()
    assert counts["FETCHED"] == 1 and counts["DISCOVERED"] == 3
    # finishing again (an at-least-once refetch) changes nothing and adds nothing
    assert store.finish(Finish(rec.id, Outcome(URLState.FAILED), [_u("/y")], now=102)) == 0
    assert store.counts()["FETCHED"] == 1 and store.counts()["FAILED"] == 0
    assert _state_of(store) == {"FETCHED": 1, "DISCOVERED": 2}
    assert _state_of(store, "b.test") == {"DISCOVERED": 1}


def test_expired_lease_hands_the_url_back(store: FrontierStore) -> None:
    store.add([_u("/a")], now=0)
    rec = store.claim("a.test", "dead-worker", 5, now=100)
    assert rec is not None
    store.start(rec.id, "dead-worker", 5, now=100)
    assert store.earliest_lease_expiry() == 105
    assert not store.quiescent()
    assert store.claim("a.test", "w2", 5, now=101) is None
    assert store.expire_leases(now=104) == 0
    assert store.expire_leases(now=106) == 1
    again = store.claim("a.test", "w2", 5, now=106)
    assert again is not None and again.id == rec.id and again.attempts == 1


def test_retry_waits_until_not_before(store: FrontierStore) -> None:
    store.add([_u("/a")], now=0)
    rec = store.claim("a.test", "w", 5, now=10)
    assert rec is not None and store.start(rec.id, "w", 5, now=10)
    store.retry(rec.id, not_before=4e9, error="HTTP 503", status=503)
    assert store.counts()["RETRYABLE"] == 1
    assert store.claim("a.test", "w", 5, now=15) is None
    assert store.next_ready_at("a.test") == 4e9
    assert store.pending_hosts() == [("a.test", 4e9)]
    again = store.claim("a.test", "w", 5, now=4e9)
    assert again is not None and again.attempts == 1


def test_release_gives_a_claim_back_untouched(store: FrontierStore) -> None:
    store.add([_u("/a")], now=0)
    rec = store.claim("a.test", "w", 5, now=10)
    assert rec is not None
    store.release(rec.id)
    assert store.counts()["DISCOVERED"] == 1
    assert store.pending_hosts() == [("a.test", 0)]
    rec = store.claim("a.test", "w", 5, now=10)
    assert rec is not None and store.start(rec.id, "w", 5, now=10)
    store.release(rec.id)
    assert store.counts()["RETRYABLE"] == 1  # it had been attempted once


def test_finished_host_leaves_the_pending_set(store: FrontierStore) -> None:
    store.add([_u("/a"), _u("/b", host="b.test")], now=0)
    assert sorted(store.pending_hosts()) == [("a.test", 0), ("b.test", 0)]
    rec = store.claim("a.test", "w", 5, now=1)
    assert rec is not None and store.start(rec.id, "w", 5, now=1)
    store.finish(Finish(rec.id, Outcome(URLState.FAILED, error="robots_disallowed"), [], now=2))
    assert store.pending_hosts() == [("b.test", 0)]
    assert store.next_ready_at("a.test") is None
    assert store.counts()["FAILED"] == 1
    rec = store.claim("b.test", "w", 5, now=1)
    assert rec is not None and not store.quiescent()
    store.finish(Finish(rec.id, Outcome(URLState.FAILED, error="x"), [], now=2))
    assert store.quiescent() and store.pending_hosts() == []


def test_content_dedup_remembers_the_first_url(store: FrontierStore) -> None:
    assert store.first_with_content("ab" * 32, 7) == 7
    assert store.first_with_content("ab" * 32, 9) == 7
    assert store.first_with_content("ab" * 32, 7) == 7  # idempotent for the first URL itself


def test_page_budget_is_one_counter(store: FrontierStore) -> None:
    assert [store.reserve_page(3) for _ in range(4)] == [True, True, True, False]
    store.unreserve_page()
    assert store.pages_reserved() == 2
    assert store.reserve_page(3)


def test_a_shorter_path_found_later_lowers_depths_and_admits_cut_links(store: FrontierStore) -> None:
    """max_depth means BFS depth even when hosts are crawled out of BFS order (across hosts too)."""
    store.add([_u("/far", depth=3)], now=0, max_depth=3)
    rec = store.claim("a.test", "w", 10, now=0)
    assert rec is not None and store.start(rec.id, "w", 10, now=0)
    links = [_u("/child", depth=4), _u("/c2", host="zz.test", depth=4)]
    new = store.finish(
        Finish(rec.id, Outcome(URLState.FETCHED, status=200), links, max_depth=3, parent_depth=3, now=0)
    )
    assert new == 0 and store.counts()["DISCOVERED"] == 0
    # then a page at depth 0 links to /far: /far is now depth 1, so its links (depth 2) get in
    store.add([_u("/far", depth=1)], now=0, max_depth=3)
    assert store.counts()["DISCOVERED"] == 2
    got = {}
    for host in ("a.test", "zz.test"):
        r = store.claim(host, "w", 10, now=0)
        assert r is not None
        got[r.url] = r.depth
    assert got == {"http://a.test/child": 2, "http://zz.test/c2": 2}
