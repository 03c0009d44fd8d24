"""Holes found by outside probes (issue 10, section 2), each judged from the server's own log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from services.crawler.websim.web import canonical_target

from .minisite import MiniSite
from .test_engine import crawl


async def test_a_link_with_escaped_dot_segments_cannot_bypass_robots(tmp_path: Path) -> None:
    site = MiniSite()
    site.page("a.sim.test", "/robots.txt", "User-agent: *\nDisallow: /secret\n", content_type="text/plain")
    links = '<a href="/x/%2e%2e/secret">s</a><a href="x/.%2E/secret/y">t</a><a href="/p">p</a>'
    site.page("a.sim.test", "/", links)
    site.page("a.sim.test", "/p", "p")
    site.page("a.sim.test", "/secret", "secret")
    with site.serve() as port:
        c = await crawl(port, tmp_path)
    resolved = Counter(canonical_target(e.path) for e in site.log)
    assert resolved["/p"] == 1
    assert not [p for p in resolved if p.startswith("/secret")], resolved
    assert c.stats.robots_denied == 2


async def test_robots_txt_redirected_to_another_authority_is_followed(tmp_path: Path) -> None:
    site = MiniSite()
    site.page("a.sim.test", "/robots.txt", "", status=301, Location="http://cdn.sim.test/a/robots.txt")
    site.page("cdn.sim.test", "/a/robots.txt", "", status=302, Location="/a/robots-v2.txt")
    site.page(
        "cdn.sim.test", "/a/robots-v2.txt", "User-agent: *\nDisallow: /secret\n", content_type="text/plain"
    )
    site.page("a.sim.test", "/", '<a href="/p">p</a><a href="/secret">s</a>')
    site.page("a.sim.test", "/p", "p")
    with site.serve() as port:
        c = await crawl(port, tmp_path)
    paths = Counter((e.host, e.path) for e in site.log)
    assert paths[("cdn.sim.test", "/a/robots-v2.txt")] == 1
    assert paths[("a.sim.test", "/")] == 1 and paths[("a.sim.test", "/p")] == 1  # not disallow-all
    assert paths[("a.sim.test", "/secret")] == 0  # the redirected file's rules apply to a.sim.test
    assert c.stats.robots_denied == 1


def _chain_site(n: int) -> MiniSite:
    site = MiniSite()
    for i in range(n):
        site.page(
            "a.sim.test", "/" if i == 0 else f"/{i}", f'<a href="/{i + 1}">n</a>' if i + 1 < n else "end"
        )
    return site


async def test_a_crawl_stopped_by_max_pages_says_so(tmp_path: Path) -> None:
    site = _chain_site(30)
    with site.serve() as port:
        c = await crawl(port, tmp_path / "cut", max_pages=5)
        whole = await crawl(port, tmp_path / "whole", max_pages=30)
    assert c.status()["stopped_by"] == "max_pages" and c.status()["frontier_size"] == 1
    assert whole.status()["stopped_by"] is None  # the budget was exactly the site: nothing was cut


def test_the_cli_says_when_max_pages_stopped_the_crawl(tmp_path: Path) -> None:
    site = _chain_site(12)
    with site.serve() as port:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.crawler",
                "crawl",
                "http://a.sim.test/",
                "--resolve",
                f"*.sim.test=127.0.0.1:{port}",
                "--min-delay",
                "0",
                "--max-pages",
                "4",
                "--store",
                str(tmp_path / "s.sqlite"),
                "--no-progress",
            ],
            env={**os.environ, "PYTHONPATH": str(Path.cwd())},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stopped_by"] == "max_pages"
    assert "stopped by --max-pages 4 with 1 URLs still queued" in r.stderr
