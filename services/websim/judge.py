"""Judging a crawl from websim's side: robots and politeness violations, duplicate fetches.

Pure functions over request-log entries (see requestlog.py) and the generated rules; the
crawler's tests and the benchmark use them so every crawler is judged by the same code.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from services.websim import truth
from services.websim.config import DEFAULT_USER_AGENT
from services.websim.robots import product_token
from services.websim.web import Web, canonical_target, is_sim_host, origin_form

Entry = dict[str, Any]
#: A response after which fetching the same page again is a duplicate (not a retry).
FINAL = frozenset(range(200, 500)) - {408, 425, 429}


def _mine(entries: Iterable[Entry], user_agent: str | None) -> list[Entry]:
    if user_agent is None:
        return list(entries)
    token = product_token(user_agent)
    return [e for e in entries if product_token(e.get("user_agent") or "") == token]


def robots_violations(
    web: Web, entries: Iterable[Entry], user_agent: str = DEFAULT_USER_AGENT
) -> list[Entry]:
    """Requests by `user_agent` for paths its robots group disallows (5xx/unreachable robots:
    everything but /robots.txt). Only that agent's requests are judged."""
    out = []
    for e in _mine(entries, user_agent):
        if not is_sim_host(e["host"]) or web.host(e["host"]) is None:
            continue
        if e.get("kind") == "robots":  # robots.txt and its redirect hops (RFC 9309 2.3.1.2)
            continue
        if not truth.allowed(web, e["host"], canonical_target(origin_form(e["path"])), user_agent):
            out.append(e)
    return out


def politeness_violations(
    web: Web,
    entries: Iterable[Entry],
    min_delay: float = 0.0,
    tolerance: float = 0.005,
    user_agent: str = DEFAULT_USER_AGENT,
) -> list[dict[str, Any]]:
    """Requests to a host sooner than it allows, each named once (`why`):
    - "delay": consecutive requests closer than max(min_delay, Crawl-delay) - tolerance, measured
      between arrivals (start to start), as websim's log stamps them;
    - "retry_after": a request that arrived after an answer carrying Retry-After (429/5xx) and
      before the time it named (`retry_until` in the log) - tolerance. A request already in
      flight when that answer left is not judged by it.
    """
    by_host: dict[str, list[Entry]] = defaultdict(list)
    for e in _mine(entries, user_agent):
        by_host[e["host"]].append(e)
    out = []
    for host, items in by_host.items():
        items.sort(key=lambda e: e["ts"])
        required = max(min_delay, truth.required_delay(web, host, user_agent) or 0.0)
        too_soon: set[int] = set()
        for a, b in itertools.pairwise(items):
            gap = b["ts"] - a["ts"]
            if gap < required - tolerance:
                too_soon.add(id(b))
                violation = {"host": host, "why": "delay", "gap_s": gap, "required_s": required}
                out.append({**violation, "first": a, "second": b})
        out.extend(_retry_after_violations(host, items, tolerance, too_soon))
    return out


def _retry_after_violations(
    host: str, items: list[Entry], tolerance: float, already: set[int]
) -> list[dict[str, Any]]:
    """Sweep over arrivals (sorted) with the answers that had left by then: the latest time any of
    them asked the host to be left alone."""
    asks = [(e["ts"] + e.get("duration_s", 0.0), e["retry_until"], e) for e in items if e.get("retry_until")]
    asks.sort(key=lambda a: a[0])
    out: list[dict[str, Any]] = []
    i, until, asker = 0, float("-inf"), None
    for b in items:
        while i < len(asks) and asks[i][0] <= b["ts"]:
            if asks[i][1] > until:
                until, asker = asks[i][1], asks[i][2]
            i += 1
        if asker is not None and b["ts"] < until - tolerance and id(b) not in already:
            out.append(
                {
                    "host": host,
                    "why": "retry_after",
                    "gap_s": b["ts"] - asker["ts"],
                    "required_s": until - asker["ts"],
                    "first": asker,
                    "second": b,
                }
            )
    return out


def duplicate_fetches(entries: Iterable[Entry], user_agent: str | None = DEFAULT_USER_AGENT) -> list[Entry]:
    """Requests for a resource (page, calendar month, redirect, 410) that had already been answered
    finally (2xx-4xx except 408/425/429). Retries after 429, 5xx or a dropped connection are not
    duplicates; URL variants of one page count as the same resource."""
    done: set[str] = set()
    out = []
    for e in sorted(_mine(entries, user_agent), key=lambda e: e["seq"]):
        pid = e.get("page_id")
        if pid is None:
            continue
        if pid in done:
            out.append(e)
        elif e["status"] in FINAL:
            done.add(pid)
    return out


def fetched_pages(entries: Iterable[Entry], user_agent: str | None = DEFAULT_USER_AGENT) -> set[str]:
    """Page ids answered 200 with content: compare with WebSim.ground_truth."""
    return {
        e["page_id"]
        for e in _mine(entries, user_agent)
        if e["status"] == 200 and e["kind"] in ("page", "calendar")
    }


def report(
    web: Web,
    entries: list[Entry],
    min_delay: float = 0.0,
    tolerance: float = 0.005,
    user_agent: str = DEFAULT_USER_AGENT,
) -> dict[str, Any]:
    """Counts for a crawl, as served by GET /judge."""
    mine = _mine(entries, user_agent)
    return {
        "requests": len(mine),
        "pages_fetched": len(fetched_pages(mine, None)),
        "robots_violations": len(robots_violations(web, mine, user_agent)),
        "politeness_violations": len(politeness_violations(web, mine, min_delay, tolerance, user_agent)),
        "duplicate_fetches": len(duplicate_fetches(mine, None)),
    }
