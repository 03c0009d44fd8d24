"""A robots.txt that does not answer for a while (RFC 9309 2.3.1.4: disallow-all *for now*):
no page of the host is asked meanwhile, and its pages are crawled once the file is had, none
dropped. Before, three timeouts in a row made the host disallow-all and failed its URLs (the
Redis workers' e2e lost a slow-robots host's pages so on a loaded box)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp import web

from services.crawler.robots import ROBOTS_ATTEMPTS

from .minisite import MiniSite
from .test_engine import crawl

STALLS = ROBOTS_ATTEMPTS + 1  # more timeouts in a row than a 5xx answer gets tries


async def test_pages_of_a_host_whose_robots_txt_timed_out_are_crawled_once_it_answers(
    tmp_path: Path,
) -> None:
    site = MiniSite()
    site.page("a.sim.test", "/robots.txt", "User-agent: *\nDisallow: /secret\n", content_type="text/plain")
    site.page("a.sim.test", "/", '<a href="/p1">1</a><a href="/p2">2</a><a href="/secret">s</a>')
    site.page("a.sim.test", "/p1", "one")
    site.page("a.sim.test", "/p2", "two")
    asked: list[float] = []  # robots.txt arrivals (the log has response times)

    async def robots(request: web.Request) -> None:
        asked.append(time.monotonic())
        if len(asked) <= STALLS:  # three times the client's total timeout: a timeout there
            await asyncio.sleep(1.5)

    def hook(request: web.Request) -> object:
        async def answer() -> web.StreamResponse:
            await robots(request)
            status, headers, body = site.routes["a.sim.test"]["/robots.txt"]
            return web.Response(status=status, body=body, headers=headers)

        return answer()

    site.hooks[("a.sim.test", "/robots.txt")] = hook  # type: ignore[assignment]
    with site.serve() as port:
        c = await crawl(port, tmp_path, fetch={"total_timeout": 0.5})
    assert len(asked) == STALLS + 1  # asked again after every timeout, then had
    pages = [e for e in site.log if e.path != "/robots.txt"]
    assert min(e.ts for e in pages) > asked[-1]  # no page while robots.txt was unknown
    assert sorted(e.path for e in pages) == ["/", "/p1", "/p2"]  # none dropped, /secret denied
    counts = c.store.counts()
    assert counts["FETCHED"] == 3 and counts["FAILED"] == 1, counts
    assert c.stats.robots_denied == 1
