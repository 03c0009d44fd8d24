"""The Bloom filter in front of the Redis store's exact seen-set: a bitfield per partition kept by
the same Lua script that adds URLs (so every worker keeps it), never changing an answer, and its
false-positive rate measured where it runs (counted live: "maybe seen" but absent)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from services.crawler.partitions import PartitionManager
from services.crawler.store import NewURL

from .test_workers_redis import redis_cluster_url  # noqa: F401  (the 3-master cluster fixture)


def _u(i: int, host: str) -> NewURL:
    return NewURL(f"http://{host}/page/{i}", host, 1)


@pytest.fixture
def client(redis_url: str) -> Iterator[object]:
    import redis

    c = redis.Redis.from_url(redis_url)
    c.flushall()
    yield c
    c.close()


@pytest.fixture
def mgr(client: object) -> PartitionManager:
    m = PartitionManager(client, "w-bloom", partitions=4, lease_seconds=600)
    m.tick()
    assert len(m.owned) == 4
    return m


def _store(client: object, mgr: PartitionManager, crawl: str) -> Any:
    from services.crawler.store_redis import RedisStore

    return RedisStore(client, crawl, mgr)


def _bloom_never_changes_an_answer(client: object, mgr: PartitionManager, partitions: int) -> float:
    """4,000 URLs into a filter sized for them (1%), then 20,000 fresh ones looked up: return the
    false-positive rate the filter counted there."""
    from services.crawler.bloom import BloomFilter
    from services.crawler.store_redis import configure_bloom

    hosts = [f"h{i}.test" for i in range(300)]  # many hosts: the partitions fill evenly
    urls = [_u(i, hosts[i % len(hosts)]) for i in range(4000)]
    plain, bloomed = _store(client, mgr, "plain"), _store(client, mgr, "bloomed")
    assert configure_bloom(client, "bloomed", capacity=4000, error_rate=0.01) == partitions
    assert plain.bloom_stats() is None
    for start in range(0, 4000, 500):  # 4000 new URLs, in batches, each batch with repeats
        batch = urls[start : start + 500] + urls[start : start + 50] + urls[: start // 10]
        assert plain.add(batch, now=0) == bloomed.add(batch, now=0) == 500
    assert plain.counts() == bloomed.counts()
    stats = bloomed.bloom_stats()
    assert stats["added"] == 4000 and stats["skips"] > 0
    # At capacity, probe 20,000 fresh URLs that are looked up but not admitted (deeper than
    # max_depth): the share the filter calls "maybe seen" is its false-positive rate there.
    probes = [
        NewURL(f"http://{hosts[i % len(hosts)]}/probe/{i}", hosts[i % len(hosts)], 1) for i in range(20_000)
    ]
    before = stats["skips"] + stats["false_positives"]
    assert bloomed.add(probes, now=0, max_depth=0) == 0
    after = bloomed.bloom_stats()
    assert after["skips"] + after["false_positives"] - before == 20_000 and after["added"] == 4000
    rate = (after["false_positives"] - stats["false_positives"]) / 20_000
    print(f"redis bloom at capacity: {after}, false-positive rate over 20,000 fresh URLs {rate:.4f}")
    # Sized for 1% at 4000 URLs (4000/P a partition; 300 hosts fill the partitions about evenly).
    assert 0.002 < rate < 0.02, (rate, after)
    per_partition = BloomFilter(4000 // partitions, 0.01)
    assert after["bits"] == partitions * per_partition.bits and after["hashes"] == per_partition.hashes == 7
    # Repeats are all found (no false negatives): adding everything again adds nothing.
    assert bloomed.add(urls[:4000], now=0) == 0
    return rate


def test_the_redis_bloom_filter_never_changes_an_answer_and_reports_its_false_positive_rate(
    client: object, mgr: PartitionManager
) -> None:
    _bloom_never_changes_an_answer(client, mgr, partitions=4)


def test_the_bloom_filter_on_a_real_three_master_redis_cluster(redis_cluster_url: str) -> None:  # noqa: F811
    """The same on a cluster: each partition's bitfield sits in its {pN} slot, the partitions
    spread over the three masters, and the add script keeps filter and seen-set in one slot."""
    from services.crawler.store_redis import connect

    client = connect(redis_cluster_url)
    try:
        mgr = PartitionManager(client, "w-bloom", partitions=8, lease_seconds=600)
        mgr.tick()
        assert len(mgr.owned) == 8
        _bloom_never_changes_an_answer(client, mgr, partitions=8)
        per_node = [int(client.dbsize(target_nodes=node)) for node in client.get_primaries()]
        assert len(per_node) == 3 and all(n > 0 for n in per_node), per_node
    finally:
        client.close()


def test_a_bloom_filter_cannot_be_put_in_front_of_urls_already_added(
    client: object, mgr: PartitionManager
) -> None:
    from services.crawler.store_redis import configure_bloom

    store = _store(client, mgr, "late")
    store.add([_u(i, f"h{i}.test") for i in range(20)], now=0)
    with pytest.raises(ValueError, match="already has URLs"):
        configure_bloom(client, "late", capacity=1000)
    assert configure_bloom(client, "fresh", capacity=1000) == 4
    assert configure_bloom(client, "fresh", capacity=1000) == 4  # a resumed crawl keeps its filter


def test_register_crawl_puts_the_filter_in_front_of_the_seeds(client: object, mgr: PartitionManager) -> None:
    """The control API's `bloom_capacity` reaches a Redis crawl through register_crawl; a worker's
    store (no setting of its own) keeps the filter because the add script reads its shape."""
    from services.crawler.store_redis import register_crawl

    seeds = [_u(i, f"h{i}.test") for i in range(10)]
    assert register_crawl(client, "reg", "{}", seeds, None, bloom_capacity=1000) == 10
    worker = _store(client, mgr, "reg")
    assert worker.add([*seeds, _u(99, "h1.test")], now=0) == 1
    stats = worker.bloom_stats()
    assert stats["added"] == 11 and stats["hashes"] == 7
    assert register_crawl(client, "reg", "{}", seeds, None, bloom_capacity=1000) == 0  # resumed
