"""Engine behaviour judged from the server's own request log (small sites of our own)."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from services.crawler.engine import Crawl, CrawlState
from services.crawler.fetcher import Fetcher, ResolverMap, ResolveRule
from services.crawler.settings import CrawlConfig
from services.crawler.sinks import JsonlSink
from services.crawler.store_sqlite import SQLiteStore
from services.crawler.warc import WarcOutput

from .minisite import Entry, MiniSite

TOLERANCE = 0.01


async def crawl(
    site_port: int, tmp_path: Path, *, warc: bool = False, sink: bool = False, **overrides: Any
) -> Crawl:
    raw: dict[str, Any] = {
        "seeds": ["http://a.sim.test/"],
        "scope": ["*.sim.test"],
        "politeness": {"min_delay": 0.05},
        "retry": {"base_delay": 0.05, "max_delay": 0.2},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    config = CrawlConfig.model_validate(raw)
    store = SQLiteStore(tmp_path / "store.sqlite")
    rules = [ResolveRule.parse(f"*.sim.test=127.0.0.1:{site_port}")]
    async with Fetcher(config.fetch, ResolverMap(rules), config.user_agent) as fetcher:
        c = Crawl(
            "t",
            config,
            store,
            fetcher,
            seed=1,
            warc=WarcOutput(tmp_path / "warc", "t") if warc else None,
            sink=JsonlSink(tmp_path / "pages.jsonl") if sink else None,
        )
        await c.run()
        if c.sink is not None:
            await c.sink.close()
        if c.warc is not None:
            c.warc.close()
    return c


def min_gaps(log: list[Entry]) -> dict[str, float]:
    by_host: dict[str, list[float]] = defaultdict(list)
    for e in log:
        by_host[e.host].append(e.ts)
    return {h: min((b - a for a, b in itertools.pairwise(ts)), default=99.0) for h, ts in by_host.items()}


def chain_site() -> MiniSite:
    site = MiniSite()
    site.page(
        "a.sim.test",
        "/robots.txt",
        "User-agent: *\nDisallow: /private\nAllow: /private/ok$\nCrawl-delay: 0.15\n",
        content_type="text/plain",
    )
    links = "".join(f'<a href="/p{i}">p</a>' for i in range(6))
    site.page(
        "a.sim.test",
        "/",
        links + '<a href="/private/x">x</a><a href="/private/ok">ok</a>'
        '<a href="http://B.SIM.TEST:80/">b</a><a href="/missing">m</a><a href="/gone">g</a>',
    )
    for i in range(6):
        site.page("a.sim.test", f"/p{i}", f'<a href="/p{(i + 1) % 6}#x">next</a> page {i}')
    site.page("a.sim.test", "/private/ok", "allowed by the longer Allow rule")
    site.page("a.sim.test", "/gone", "gone", status=410)
    site.page("b.sim.test", "/", '<a href="./q">q</a><a href="http://outside.example/">o</a>')
    site.page("b.sim.test", "/q", "q")
    return site


async def test_polite_crawl_respects_robots_delay_and_never_refetches(tmp_path: Path) -> None:
    site = chain_site()
    with site.serve() as port:
        c = await crawl(port, tmp_path)
    assert c.state is CrawlState.FINISHED
    paths = [(e.host, e.path) for e in site.log]
    assert ("a.sim.test", "/private/x") not in paths  # disallowed
    assert ("a.sim.test", "/private/ok") in paths  # Allow wins by specificity
    assert Counter(paths).most_common(1)[0][1] == 1  # no URL requested twice (no retries here)
    assert not any("outside" in h for h, _ in paths)  # out of scope
    gaps = min_gaps(site.log)
    assert gaps["a.sim.test"] >= 0.15 - TOLERANCE  # robots Crawl-delay
    assert gaps["b.sim.test"] >= 0.05 - TOLERANCE  # configured minimum
    assert all(e.user_agent.startswith("ProvingGroundBot/0.1") for e in site.log)
    assert c.stats.robots_denied == 1
    assert ("a.sim.test", "/missing") in paths and c.store.counts()["FETCHED"] == len(site.log) - 2


async def test_robots_5xx_disallows_all_and_4xx_allows_all(tmp_path: Path) -> None:
    site = MiniSite()
    site.page("a.sim.test", "/robots.txt", "oops", status=500)
    site.page("a.sim.test", "/", '<a href="http://b.sim.test/">b</a>')
    site.page("b.sim.test", "/robots.txt", "nope", status=404)
    site.page("b.sim.test", "/", "all allowed")
    with site.serve() as port:
        c = await crawl(port, tmp_path, seeds=["http://a.sim.test/", "http://b.sim.test/"])
    paths = [(e.host, e.path) for e in site.log]
    assert ("a.sim.test", "/") not in paths
    assert Counter(paths)[("a.sim.test", "/robots.txt")] == 3  # retried politely, then disallow-all
    assert ("b.sim.test", "/") in paths
    assert c.store.counts()["FAILED"] == 1


async def test_4xx_never_retried_and_429_retry_after_slows_the_host(tmp_path: Path) -> None:
    site = MiniSite()
    site.page("a.sim.test", "/", '<a href="/404">a</a><a href="/400">b</a><a href="/busy">c</a>')
    site.page("a.sim.test", "/404", "no", status=404)
    site.page("a.sim.test", "/400", "bad", status=400)
    site.page("a.sim.test", "/busy", "later", status=429, **{"Retry-After": "1"})
    with site.serve() as port:
        c = await crawl(port, tmp_path, retry={"max_attempts": 3})
    counts = Counter(e.path for e in site.log)
    assert counts["/404"] == 1 and counts["/400"] == 1
    assert counts["/busy"] == 3  # 429 retried up to max_attempts
    busy = [e.ts for e in site.log if e.path == "/busy"]
    assert all(b - a >= 1.0 - TOLERANCE for a, b in itertools.pairwise(busy))
    # after a 429 nothing at all reaches the host before Retry-After has passed
    after = [e.ts for e in site.log if e.ts > busy[0]]
    assert after and after[0] - busy[0] >= 1.0 - TOLERANCE
    assert c.stats.retries == 2 and c.store.counts()["FAILED"] == 1


async def test_max_depth_scope_redirects_and_duplicate_content(tmp_path: Path) -> None:
    site = MiniSite()
    same = '<a href="child">child</a> same body'
    site.page(
        "a.sim.test",
        "/",
        '<a href="/d1/">d1</a><a href="/copy/">copy</a><a href="/r">r</a>'
        '<a href="/a.pdf">a</a><a href="/b.pdf">b</a>',
    )
    site.page("a.sim.test", "/a.pdf", b"%PDF-a", content_type="application/pdf")  # fetched, body not read
    site.page("a.sim.test", "/b.pdf", b"%PDF-b", content_type="application/pdf")
    site.page("a.sim.test", "/d1/", same)
    site.page("a.sim.test", "/copy/", same)  # byte-identical: its relative link is not followed
    site.page("a.sim.test", "/d1/child", '<a href="/d3">too deep</a>')
    site.page("a.sim.test", "/r", "", status=302, Location="/r2")
    site.page("a.sim.test", "/r2", "", status=301, Location="/r")  # a loop: dedup ends it
    with site.serve() as port:
        c = await crawl(port, tmp_path, max_depth=2, sink=True, warc=True, skip_duplicate_content_links=True)
    paths = Counter(e.path for e in site.log)
    assert paths["/d1/child"] == 1 and paths["/copy/child"] == 0 and paths["/d3"] == 0
    assert paths["/r"] == 1 and paths["/r2"] == 1 and paths["/a.pdf"] == 1 and paths["/b.pdf"] == 1
    assert c.stats.duplicate_content == 1  # only /copy/: unread PDF bodies are not "equal"
    events = [json.loads(line) for line in (tmp_path / "pages.jsonl").read_text().splitlines()]
    assert {e["final_url"] for e in events} == {
        "http://a.sim.test/",
        "http://a.sim.test/d1/",
        "http://a.sim.test/copy/",
        "http://a.sim.test/d1/child",
    }
    assert all(len(e["content_sha256"]) == 64 for e in events)


async def test_max_pages_bounds_the_crawl(tmp_path: Path) -> None:
    site = MiniSite()
    for i in range(30):
        site.page("a.sim.test", "/" if i == 0 else f"/{i}", f'<a href="/{i + 1}">n</a>')
    with site.serve() as port:
        c = await crawl(port, tmp_path, max_pages=5)
    assert c.store.counts()["FETCHED"] == 5
    assert len([e for e in site.log if e.path != "/robots.txt"]) == 5


async def test_one_huge_host_cannot_starve_the_others(tmp_path: Path) -> None:
    site = MiniSite()
    seeds = ["http://big.sim.test/"] + [f"http://s{i}.sim.test/" for i in range(6)]
    site.page("big.sim.test", "/", "".join(f'<a href="/{i}">b</a>' for i in range(150)))
    for i in range(150):
        site.page("big.sim.test", f"/{i}", "big")
    for i in range(6):
        site.page(f"s{i}.sim.test", "/", "".join(f'<a href="/{k}">s</a>' for k in range(4)))
        for k in range(4):
            site.page(f"s{i}.sim.test", f"/{k}", "small")
    with site.serve() as port:
        # one fetch slot in total: the frontier alone decides who goes next
        await crawl(port, tmp_path, seeds=seeds, concurrency=1, politeness={"min_delay": 0.02})
    pages = [e for e in site.log if e.path != "/robots.txt"]
    last_small = max(i for i, e in enumerate(pages) if e.host != "big.sim.test")
    big_before = sum(1 for e in pages[:last_small] if e.host == "big.sim.test")
    # every small host is done while the big one has had at most its fair share of turns
    assert big_before <= 12, big_before
    assert sum(1 for e in pages if e.host == "big.sim.test") == 151


async def test_a_broken_store_fails_the_crawl_instead_of_spinning(tmp_path: Path) -> None:
    import sqlite3

    from services.crawler.store_sqlite import SQLiteStore

    class Broken(SQLiteStore):  # (a full disk pauses the crawl instead: test_disk_full_*)
        def _finish(self, *args: Any, **kwargs: Any) -> int:  # (on the store thread)
            raise sqlite3.DatabaseError("database disk image is malformed")

    site = MiniSite()
    site.page("a.sim.test", "/", "".join(f'<a href="/{i}">x</a>' for i in range(80)))
    config = CrawlConfig.model_validate(
        {"seeds": [f"http://a.sim.test/{i}" for i in range(80)], "politeness": {"min_delay": 0.0}}
    )
    with site.serve() as port:
        rules = [ResolveRule.parse(f"*.sim.test=127.0.0.1:{port}")]
        async with Fetcher(config.fetch, ResolverMap(rules), config.user_agent) as fetcher:
            c = Crawl("t", config, Broken(tmp_path / "s.sqlite"), fetcher)
            await c.run()
    assert c.state is CrawlState.FAILED
    assert c.error is not None and "malformed" in c.error
