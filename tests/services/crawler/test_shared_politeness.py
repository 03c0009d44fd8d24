"""Politeness belongs to the host, not to a crawl: two crawls of one process share one slot per
host (SQLite path), and the control API with --redis hands crawls to workers and shows them."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.crawler.engine import Crawl, CrawlState
from services.crawler.fetcher import Fetcher, ResolverMap, ResolveRule
from services.crawler.politeness import HostSlot
from services.crawler.settings import CrawlConfig
from services.crawler.store_sqlite import SQLiteStore
from tests.conftest import free_port, wait_for_port

from .minisite import MiniSite

TOLERANCE = 0.01
ENV = {**os.environ, "PYTHONPATH": str(Path.cwd())}


def _site(pages: int = 15) -> MiniSite:
    site = MiniSite()
    site.page("a.sim.test", "/robots.txt", "User-agent: *\nCrawl-delay: 0.2\n", content_type="text/plain")
    site.page("a.sim.test", "/", "".join(f'<a href="/p{i}">p</a>' for i in range(pages)))
    for i in range(pages):
        site.page("a.sim.test", f"/p{i}", f"page {i}")
    return site


async def test_two_crawls_of_one_process_never_ask_one_host_sooner_than_it_allows(tmp_path: Path) -> None:
    site = _site()
    with site.serve() as port:
        slots: dict[str, HostSlot] = {}
        rules = [ResolveRule.parse(f"*.sim.test=127.0.0.1:{port}")]
        crawls = []
        fetchers = []
        for name, min_delay in (("one", 0.05), ("two", 0.1)):
            config = CrawlConfig.model_validate(
                {"seeds": ["http://a.sim.test/"], "politeness": {"min_delay": min_delay}}
            )
            fetcher = Fetcher(config.fetch, ResolverMap(rules), config.user_agent)
            fetchers.append(fetcher)
            store = SQLiteStore(tmp_path / f"{name}.sqlite")
            crawls.append(Crawl(name, config, store, fetcher, seed=1, host_slots=slots))
        for f in fetchers:
            await f.__aenter__()
        try:
            await asyncio.gather(*(c.run() for c in crawls))
        finally:
            for f in fetchers:
                await f.__aexit__(None, None, None)
    assert all(c.state is CrawlState.FINISHED for c in crawls)
    assert all(c.store.counts()["FETCHED"] == 16 for c in crawls)  # each crawl fetched every page
    stamps = [e.ts for e in site.log if e.host == "a.sim.test"]
    assert len(stamps) >= 32
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= 0.2 - TOLERANCE, min(gaps)  # the host's Crawl-delay, across both crawls
    assert len(slots) == 1 and slots["a.sim.test"].turns == 0


@pytest.fixture
def site_port() -> Iterator[int]:
    with _site(pages=5).serve() as port:
        yield port


def _spawn(args: list[str], err: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.crawler", *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=err.open("w"),
    )


def test_api_with_redis_registers_crawls_that_workers_run(
    redis_url: str, site_port: int, tmp_path: Path
) -> None:
    port = free_port()
    resolve = f"*.sim.test=127.0.0.1:{site_port}"
    api = _spawn(
        ["--port", str(port), "--data-dir", str(tmp_path), "--redis", redis_url, "--resolve", resolve],
        tmp_path / "api.err",
    )
    worker = None
    try:
        wait_for_port(port, timeout=20)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert client.get("/v1/workers").json()["workers"] == []
            body: dict[str, Any] = {"seeds": ["http://a.sim.test/"], "politeness": {"min_delay": 0.05}}
            created = client.post("/v1/crawls", params={"crawl_id": "r1"}, json=body)
            assert created.status_code == 201, created.text
            assert created.json()["backend"] == "redis" and created.json()["urls"]["DISCOVERED"] == 1
            assert client.post("/v1/crawls", params={"crawl_id": "r1"}, json=body).status_code == 409
            assert client.post("/v1/crawls", params={"crawl_id": "../x"}, json=body).status_code == 422
            metrics_port = free_port()
            worker = _spawn(
                ["worker", "--redis", redis_url, "--worker-id", "wa", "--resolve", resolve,
                 "--metrics-port", str(metrics_port)],
                tmp_path / "worker.err",
            )  # fmt: skip
            deadline = time.monotonic() + 60
            status: dict[str, Any] = {}
            while time.monotonic() < deadline:
                status = client.get("/v1/crawls/r1").json()
                if status["state"] == "finished":
                    break
                assert worker.poll() is None, (tmp_path / "worker.err").read_text()[-2000:]
                time.sleep(0.1)
            assert status["state"] == "finished", status
            assert status["urls"]["FETCHED"] == 6
            assert sum(p["urls"]["FETCHED"] for p in status["partitions"]) == 6
            view = client.get("/v1/workers").json()
            assert [w["worker"] for w in view["workers"]] == ["wa"]
            assert {p["owner"] for p in view["partition_owners"]} == {"wa"}
            assert {"crawl_id": "r1", "state": "finished"} in client.get("/v1/crawls").json()
            assert client.get("/v1/crawls/nope").status_code == 404
            host = client.get("/v1/crawls/r1/hosts/a.sim.test").json()
            assert host["urls"]["FETCHED"] == 6 and host["robots"]["status"] == "200"
            assert host["politeness"]["crawl_delay"] == 0.2
            assert [h["host"] for h in client.get("/v1/crawls/r1/hosts").json()] == ["a.sim.test"]
            assert client.get("/v1/crawls/r1/hosts/nope.test").status_code == 404
            metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            assert "crawler_fetches_total" in metrics and "crawler_host_requests_total" in metrics
    finally:
        for proc in (worker, api):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


def test_worker_bad_usage_exits_2_with_one_line_and_an_unreachable_redis_exits_1() -> None:
    for args in (
        ["--redis", "ftp://x"],
        ["--redis", "redis://127.0.0.1:1/0", "--partitions", "0"],
        ["--redis", "redis://127.0.0.1:1/0", "--partition-lease", "-1"],
        ["--redis", "redis://127.0.0.1:1/0", "--resolve", "nope"],
        [],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "services.crawler", "worker", *args],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    port = free_port()  # nothing listens there
    r = subprocess.run(
        [sys.executable, "-m", "services.crawler", "worker", "--redis", f"redis://127.0.0.1:{port}/0"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "unreachable" in r.stderr and "Traceback" not in r.stderr, r.stderr
