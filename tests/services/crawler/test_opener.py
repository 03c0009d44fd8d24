"""opener.py: the one place that opens a crawl (resolver, fetcher, WARC, store) and closes it."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from libs.service.cli import UsageError
from services.crawler.engine import Crawl, CrawlState
from services.crawler.opener import open_crawl, parse_resolve, run_to_end, sqlite_store
from services.crawler.settings import CrawlConfig

from .minisite import MiniSite


def test_a_bad_resolve_entry_is_a_usage_error_naming_the_flag() -> None:
    assert [r.pattern for r in parse_resolve(["*.sim.test=127.0.0.1:8090"])] == ["*.sim.test"]
    with pytest.raises(UsageError, match=r"^--resolve: "):
        parse_resolve(["*.sim.test=127.0.0.1"])


async def test_run_to_end_shows_the_open_store_to_on_end_then_closes_store_and_warc(tmp_path: Path) -> None:
    site = MiniSite()
    site.page("a.sim.test", "/robots.txt", "User-agent: *\nDisallow: /private\n", content_type="text/plain")
    site.page("a.sim.test", "/", '<a href="/p">p</a><a href="/private/x">x</a>')
    site.page("a.sim.test", "/p", "leaf")
    config = CrawlConfig.model_validate({"seeds": ["http://a.sim.test/"], "politeness": {"min_delay": 0.01}})
    store = sqlite_store(tmp_path / "c.sqlite", config)
    seen: dict[str, object] = {}

    def on_end(crawl: Crawl) -> None:
        seen["status"] = crawl.status()  # the store is still open here

    with site.serve() as port:
        crawl = open_crawl(
            "c",
            config,
            store,
            rules=parse_resolve([f"*.sim.test=127.0.0.1:{port}"]),
            warc_dir=tmp_path / "warc",
        )
        await run_to_end(crawl, on_end=on_end)

    status = seen["status"]
    assert isinstance(status, dict)
    assert crawl.state is CrawlState.FINISHED and status["state"] == "finished"
    assert status["urls"]["FETCHED"] == 2 and crawl.stats.robots_denied == 1
    with contextlib.closing(sqlite3.connect(tmp_path / "c.sqlite")) as db:  # what it ran under (resume)
        row = db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
    assert row == (config.model_dump_json(),)
    with pytest.raises(sqlite3.ProgrammingError):  # closed after on_end
        store.counts()
    warcs = list((tmp_path / "warc").iterdir())
    assert warcs and all(w.name.startswith("c") for w in warcs)  # named after the crawl id
