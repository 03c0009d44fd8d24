"""Crawler-trap guard: a budget of distinct URLs per host and URL pattern, and a link-depth bound.

A trap is a site that makes URLs without end (an infinite calendar, session ids in paths, ever
deeper relative links). Each such family shares a shape: the same path and query with different
numbers. The pattern of a URL is its host plus its path and query with every run of digits
collapsed to "#" (`/calendar/2026/01` and `/calendar/2491/07` are both `/calendar/#/#`); a host
gets at most `max_per_pattern` distinct URLs of one pattern, and no URL deeper than `max_depth`
link hops from a seed. What the guard cuts is counted by reason (`crawler_trap_cut_total`).

Cut reasons: "depth" (a link deeper than max_depth: the store would refuse it too, the guard
only counts it) and "pattern_budget" (the host's pattern budget is spent).

The budget is kept in memory per crawl process: a resumed crawl starts it afresh (its URLs
already in the store stay; only new ones are counted), and on a shared store each worker keeps
its own (hosts are partitioned, so a host's links are mostly judged by its owner).
"""

from __future__ import annotations

import re
from collections import Counter
from urllib.parse import urlsplit

from services.crawler import metrics
from services.crawler.urlnorm import split_authority

_DIGITS = re.compile(r"\d+")
_UNPLAIN = re.compile(r"[#\t\r\n]")
DEPTH = "depth"
PATTERN_BUDGET = "pattern_budget"
REASONS = (DEPTH, PATTERN_BUDGET)


def url_pattern(url: str) -> str:
    """Path and query of `url` with every run of digits collapsed to "#"."""
    split = split_authority(url)
    if split is not None and not _UNPLAIN.search(split[1]):  # (what urlsplit would cut or drop)
        path, _, query = split[1].partition("?")
        target = path or "/"
        if query:
            target += "?" + query
        return _DIGITS.sub("#", target)
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return _DIGITS.sub("#", target)


class TrapGuard:
    def __init__(self, *, max_per_pattern: int | None, max_depth: int | None) -> None:
        self.max_per_pattern = max_per_pattern
        self.max_depth = max_depth
        # (host, pattern) -> hashes of the distinct URLs admitted under it (at most the budget)
        self._admitted: dict[tuple[str, str], set[int]] = {}
        self.cuts: Counter[str] = Counter()

    def check(self, url: str, host: str, depth: int) -> str | None:
        """None when the URL may enter the frontier, else the reason it is cut (and counted)."""
        reason = self._reason(url, host, depth)
        if reason is not None:
            self.cuts[reason] += 1
            metrics.TRAP_CUTS.labels(reason).inc()
        return reason

    def _reason(self, url: str, host: str, depth: int) -> str | None:
        if self.max_depth is not None and depth > self.max_depth:
            return DEPTH
        if self.max_per_pattern is None:
            return None
        seen = self._admitted.setdefault((host, url_pattern(url)), set())
        key = hash(url)
        if key in seen:
            return None  # the same URL again: already counted (the store dedups it)
        if len(seen) >= self.max_per_pattern:
            return PATTERN_BUDGET
        seen.add(key)
        return None

    def summary(self) -> dict[str, int]:
        return {reason: self.cuts[reason] for reason in REASONS}
