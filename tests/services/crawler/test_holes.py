"""Holes found by outside probes (issue 10, section 2), each judged from the server's own log."""

from __future__ import annotations

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
