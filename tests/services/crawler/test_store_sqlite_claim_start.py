"""A claim and its start in one store step (store.aclaim_start): SQLite applies the claim rule on
its thread in one operation; the default (a shared store's) claims only. The engine crawls the
same with both."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from services.crawler.engine import Crawl, CrawlState
from services.crawler.fetcher import Fetcher, ResolverMap, ResolveRule
from services.crawler.settings import CrawlConfig
from services.crawler.store import Claimed, Finish, FrontierStore, NewURL, Outcome, URLRecord, URLState
from services.crawler.store_sqlite import SQLiteStore

from .test_engine import chain_site


def _u(path: str, host: str = "a.test", depth: int = 0) -> NewURL:
    return NewURL(f"http://{host}{path}", host, depth)


def _state(path: Path, url_id: int) -> tuple[int, int]:
    """(state, attempts) as another connection sees it: what is committed."""
    db = sqlite3.connect(str(path))
    try:
        row = db.execute("SELECT state, attempts FROM urls WHERE id=?", (url_id,)).fetchone()
    finally:
        db.close()
    return int(row[0]), int(row[1])


async def test_a_rule_starts_keeps_or_gives_back_the_claimed_url(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = SQLiteStore(path)
    try:
        store.add([_u("/a"), _u("/b", depth=1), _u("/c", depth=2)], now=0)
        seen: list[str] = []

        def start(rec: URLRecord) -> bool:
            seen.append(rec.url)
            return True

        got = await store.aclaim_start("a.test", "w", 30, 100, start)
        assert got.started and not got.released and got.rec is not None and seen == ["http://a.test/a"]
        # durable when answered: committed, as a start before its request leaves
        assert _state(path, got.rec.id) == (int(URLState.FETCHING), 1)
        assert got.rec.state is URLState.SCHEDULED and got.rec.attempts == 0  # (as claimed)

        kept = await store.aclaim_start("a.test", "w", 30, 100, lambda rec: False)
        assert kept.rec is not None and kept.rec.url.endswith("/b") and not kept.started and not kept.released
        assert store.counts()["SCHEDULED"] == 1
        assert store.start(kept.rec.id, "w", 30, 100)  # still claimed by w: its caller goes on with it

        back = await store.aclaim_start("a.test", "w", 30, 100, lambda rec: None)
        assert back.rec is not None and back.rec.url.endswith("/c") and back.released and not back.started
        counts = store.counts()
        assert counts["DISCOVERED"] == 1 and counts["SCHEDULED"] == 0 and counts["FETCHING"] == 2

        plain = await store.aclaim_start("a.test", "w", 30, 100)  # no rule: the claim alone
        assert plain.rec is not None and plain.rec.url.endswith("/c") and not plain.started
        assert store.counts()["SCHEDULED"] == 1
    finally:
        store.close()


async def test_an_empty_host_answers_its_next_ready_time(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    try:
        assert await store.aclaim_start("a.test", "w", 30, 100, lambda rec: True) == Claimed(None)
        store.add([_u("/a")], now=0)
        rec = store.claim("a.test", "w", 30, now=100)
        assert rec is not None and store.start(rec.id, "w", 30, now=100)
        store.retry(rec.id, 150.0, "HTTP 503", 503)
        got = await store.aclaim_start("a.test", "w", 30, 100, lambda rec: True)
        assert got == Claimed(None, ready_at=150.0)
        assert store.counts()["RETRYABLE"] == 1
    finally:
        store.close()


async def test_the_default_claims_only_and_asks_the_next_ready_time(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    try:
        store.add([_u("/a")], now=0)
        got = await FrontierStore.aclaim_start(store, "a.test", "w", 30, 100, lambda rec: True)
        assert got.rec is not None and not got.started and not got.released
        assert store.counts()["SCHEDULED"] == 1
        empty = await FrontierStore.aclaim_start(store, "a.test", "w", 30, 100, lambda rec: True)
        assert empty == Claimed(None)
    finally:
        store.close()


async def test_a_failing_rule_undoes_its_claim(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    try:
        store.add([_u("/a")], now=0)

        def broken(rec: URLRecord) -> bool:
            raise ValueError("rule")

        try:
            await store.aclaim_start("a.test", "w", 30, 100, broken)
        except ValueError:
            pass
        else:
            raise AssertionError("the rule's error was not raised")
        assert store.counts()["DISCOVERED"] == 1 and store.counts()["SCHEDULED"] == 0
    finally:
        store.close()


class _Counting(SQLiteStore):
    """Counts the engine's claims and starts; `fused` False: claims the way a shared store does."""

    def __init__(self, path: Path, fused: bool) -> None:
        super().__init__(path)
        self.calls: Counter[str] = Counter()
        self.claim_starts = fused

    async def aclaim_start(self, *args: Any, **kwargs: Any) -> Claimed:
        self.calls["aclaim_start"] += 1
        if not self.claim_starts:
            return await FrontierStore.aclaim_start(self, *args, **kwargs)
        got = await super().aclaim_start(*args, **kwargs)
        self.calls["started"] += got.started
        return got

    async def astart(self, url_id: int, owner: str, lease_seconds: float, now: float) -> bool:
        self.calls["astart"] += 1
        return await super().astart(url_id, owner, lease_seconds, now)


async def _crawl(tmp_path: Path, fused: bool) -> tuple[Crawl, _Counting, list[tuple[str, str]]]:
    site = chain_site()
    config = CrawlConfig.model_validate(
        {"seeds": ["http://a.sim.test/"], "scope": ["*.sim.test"], "politeness": {"min_delay": 0.05}}
    )
    store = _Counting(tmp_path / f"{fused}.sqlite", fused)
    with site.serve() as port:
        rules = [ResolveRule.parse(f"*.sim.test=127.0.0.1:{port}")]
        async with Fetcher(config.fetch, ResolverMap(rules), config.user_agent) as fetcher:
            c = Crawl("t", config, store, fetcher, seed=1)
            await c.run()
    return c, store, [(e.host, e.path) for e in site.log]


async def test_the_engine_crawls_the_same_with_and_without_the_one_step_start(tmp_path: Path) -> None:
    fused, fused_store, fused_paths = await _crawl(tmp_path, True)
    plain, plain_store, plain_paths = await _crawl(tmp_path, False)
    for c in (fused, plain):
        assert c.state is CrawlState.FINISHED and c.stats.robots_denied == 1
    assert sorted(fused_paths) == sorted(plain_paths)  # the same requests, robots.txt first on each host
    assert ("a.sim.test", "/private/x") not in fused_paths
    assert Counter(fused_paths).most_common(1)[0][1] == 1
    assert fused_store.counts() == plain_store.counts()
    pages = len([p for p in fused_paths if p[1] != "/robots.txt"])
    # one step: every page's request started in its claim's round trip, none through astart
    assert fused_store.calls["astart"] == 0 and fused_store.calls["started"] == pages
    assert plain_store.calls["astart"] == pages
    for store in (fused_store, plain_store):
        store.close()


def test_outcome_of_a_started_claim_is_final_as_usual(tmp_path: Path) -> None:
    """A URL started in its claim finishes like any other (and a second finish changes nothing)."""
    import asyncio

    store = SQLiteStore(tmp_path / "s.sqlite")
    try:
        store.add([_u("/a")], now=0)
        got = asyncio.run(store.aclaim_start("a.test", "w", 30, 100, lambda rec: True))
        assert got.rec is not None and got.started
        done = Outcome(URLState.FETCHED, status=200)
        assert store.finish(Finish(got.rec.id, done, [_u("/b", depth=1)], now=101)) == 1
        assert store.finish(Finish(got.rec.id, Outcome(URLState.FAILED), [], now=102)) == 0
        assert store.counts()["FETCHED"] == 1 and store.counts()["DISCOVERED"] == 1
    finally:
        store.close()


async def test_a_page_finishes_with_its_content_hash_in_one_step(tmp_path: Path) -> None:
    """afinish_page: the outcome, the links and the body's first URL together; the default (a
    shared store's) makes the two calls and answers the same."""
    for one_step in (True, False):
        store = SQLiteStore(tmp_path / f"{one_step}.sqlite")
        try:
            store.add([_u("/a"), _u("/b"), _u("/c")], now=0)
            ids = []
            for _ in range(3):
                got = await store.aclaim_start("a.test", "w", 30, 100, lambda rec: True)
                assert got.rec is not None and got.started
                ids.append(got.rec.id)
            finish = SQLiteStore.afinish_page if one_step else FrontierStore.afinish_page
            same = Outcome(URLState.FETCHED, status=200, content_sha256="ab" * 32)
            first = await finish(store, Finish(ids[0], same, [_u("/d", depth=1)], max_depth=8, now=101))
            again = await finish(store, Finish(ids[1], same, [_u("/d", depth=1)], max_depth=8, now=101))
            # the caller asked the hash before (it decided the links): not asked again
            known = await finish(store, Finish(ids[2], same, [], now=101), content_known=True)
            assert (first, again, known) == ((1, False), (0, True), (0, False))
            assert store.first_with_content("ab" * 32, ids[2]) == ids[0]
            counts = store.counts()
            assert counts["FETCHED"] == 3 and counts["DISCOVERED"] == 1
        finally:
            store.close()
