"""Trap guard: URL patterns, the per-pattern budget, the default depth, and what is cut."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from prometheus_client import REGISTRY

from services.crawler.cli import _config_from_args, build_parser
from services.crawler.settings import DEFAULT_MAX_DEPTH, CrawlConfig
from services.crawler.traps import PATTERN_BUDGET, TrapGuard, url_pattern

from .minisite import MiniSite
from .test_engine import crawl


def _cut_metric(reason: str) -> float:
    return REGISTRY.get_sample_value("crawler_trap_cut_total", {"reason": reason}) or 0.0


def test_digits_collapse_into_one_pattern() -> None:
    assert url_pattern("http://h/calendar/2026/01") == "/calendar/#/#"
    assert url_pattern("http://h/calendar/2491/12") == "/calendar/#/#"
    assert url_pattern("http://h/s/p-12.html?page=3&x=a") == "/s/p-#.html?page=#&x=a"
    assert url_pattern("http://h/") == "/"


def test_budget_counts_distinct_urls_per_host_and_pattern() -> None:
    guard = TrapGuard(max_per_pattern=3, max_depth=None)
    urls = [f"http://h/calendar/2026/{m:02d}" for m in range(1, 7)]
    verdicts = [guard.check(u, "h", 1) for u in urls]
    assert verdicts == [None, None, None, PATTERN_BUDGET, PATTERN_BUDGET, PATTERN_BUDGET]
    assert guard.check(urls[0], "h", 1) is None  # seen again: not a new URL of the pattern
    assert guard.check("http://other/calendar/2026/01", "other", 1) is None  # per host
    assert guard.check("http://h/blog/1", "h", 1) is None  # per pattern
    assert guard.summary() == {"depth": 0, "pattern_budget": 3}


def test_depth_is_bounded_by_default_in_the_api_and_the_cli() -> None:
    assert CrawlConfig(seeds=["http://a.sim.test/"]).max_depth == DEFAULT_MAX_DEPTH
    args = build_parser().parse_args(["http://a.sim.test/"])
    assert _config_from_args(args).max_depth == DEFAULT_MAX_DEPTH
    assert _config_from_args(args).max_urls_per_pattern is not None


def _calendar_site(months: int) -> MiniSite:
    site = MiniSite()
    site.page("a.sim.test", "/", '<a href="/calendar/2026/01">calendar</a><a href="/about">about</a>')
    site.page("a.sim.test", "/about", "about")
    for i in range(months):
        y, m = divmod(2026 * 12 + i, 12)
        ny, nm = divmod(2026 * 12 + i + 1, 12)
        site.page(
            "a.sim.test", f"/calendar/{y}/{m + 1:02d}", f'<a href="/calendar/{ny}/{nm + 1:02d}">next</a>'
        )
    return site


async def test_a_calendar_trap_is_cut_by_its_pattern_budget(tmp_path: Path) -> None:
    site = _calendar_site(200)
    before = _cut_metric(PATTERN_BUDGET)
    with site.serve() as port:
        c = await crawl(
            port, tmp_path, max_depth=None, max_urls_per_pattern=25, politeness={"min_delay": 0.0}
        )
    calendar = [e for e in site.log if e.path.startswith("/calendar/")]
    assert len(calendar) == 25
    assert Counter(e.path for e in site.log)["/about"] == 1  # the rest of the site is crawled
    assert c.status()["trap_cuts"] == {"depth": 0, "pattern_budget": 1}
    assert _cut_metric(PATTERN_BUDGET) - before == 1


async def test_with_the_defaults_a_calendar_trap_ends_at_the_default_depth(tmp_path: Path) -> None:
    site = _calendar_site(DEFAULT_MAX_DEPTH + 40)
    before = _cut_metric("depth")
    with site.serve() as port:
        c = await crawl(port, tmp_path, politeness={"min_delay": 0.0})
    calendar = [e for e in site.log if e.path.startswith("/calendar/")]
    assert len(calendar) == DEFAULT_MAX_DEPTH  # depths 1..DEFAULT_MAX_DEPTH
    assert c.status()["trap_cuts"]["depth"] == 1
    assert _cut_metric("depth") - before == 1
