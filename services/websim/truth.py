"""Ground truth: which pages a polite, robots-respecting crawler reaches from given seeds.

Computed from the generator's own data (links as generated, robots rules as generated, with
websim's own RFC 9309 matcher); it never parses the served HTML and never imports the crawler.

What a polite crawler is assumed to do (the crawler under test is judged against this):
- robots.txt per host, RFC 9309: rules of the group naming its product token, else "*";
  4xx robots (404, 410, 403) = allow all; 5xx robots or a dropped connection = disallow all, so
  such hosts contribute no page; slow robots (robots_slow_s, 1 s by default) are waited for;
  oversized robots: every rule sits in the first 500 KiB, the rest is neutral padding.
- links: <a href> in HTML, resolved against <base href> when present. Links with rel=nofollow
  (any case, among other rel tokens) are NOT followed, nor any link of a page whose meta robots
  says nofollow. Links in comments and scripts are not links. Sitemaps and rel=canonical are not
  used for discovery (every canonical target is also linked normally).
- noindex pages are fetched (they are in the truth); non-HTML pages (PDF, PNG) are fetched when
  linked; huge pages are fetched and their links (all in the first few KiB) are followed.
- redirects 301/302/307/308 are followed up to `max_redirects` (5) hops: a chain of 5 reaches
  its target, a chain of 6 does not; loops end there. Every hop must be allowed by robots of the
  hop's host. Redirect hops do not add depth; the redirect entries are not pages (not in the truth).
- 429/503 with Retry-After are transient: the page succeeds after 1-2 attempts, so it is in the
  truth. 404 and 410 are not pages.
- depth: seeds are depth 0; a followed link adds 1; the truth holds pages at minimum depth
  <= max_depth (BFS), and follows no link out of a page at depth max_depth.
- max_pages: the first max_pages pages in BFS order (order-dependent; compare a page-limited crawl
  as a subset of the truth without max_pages).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from services.websim.config import DEFAULT_USER_AGENT
from services.websim.robots import RobotsFile
from services.websim.web import CalendarPage, Host, Page, Redirect, Web, locate

Reached = Page | CalendarPage


class TrapReachable(ValueError):
    """The seeds reach an infinite crawl trap and neither max_depth nor max_pages bounds it."""


def robots_for(host: Host) -> RobotsFile | bool | None:
    """False: everything disallowed; None: everything allowed; else the rules."""
    if host.robots_kind in ("500", "unreachable"):
        return False
    if host.robots_kind == "404":
        return None
    return host.robots


def allowed(web: Web, host: str, path: str, user_agent: str = DEFAULT_USER_AGENT) -> bool:
    """May a robots-respecting crawler request canonical path+query `path` on `host`?"""
    h = web.host(host)
    if h is None:
        return True  # unknown host: robots.txt 404s, so allow all
    rules = robots_for(h)
    if path.split("?", 1)[0] == "/robots.txt":
        return True
    if rules is False:
        return False
    if rules is None or rules is True:
        return True
    return rules.allowed(user_agent, path)


def required_delay(web: Web, host: str, user_agent: str = DEFAULT_USER_AGENT) -> float | None:
    h = web.host(host)
    if h is None:
        return None
    rules = robots_for(h)
    if not isinstance(rules, RobotsFile):
        return None
    return rules.crawl_delay(user_agent)


def follow(web: Web, host: str, path: str, user_agent: str, max_redirects: int) -> Reached | None:
    """Where a request for host+path ends, redirects followed; None when it ends in no page."""
    hops = 0
    while True:
        if not allowed(web, host, path, user_agent):
            return None
        res = web.resolve(host, path)
        if isinstance(res, Redirect):
            if hops >= max_redirects:
                return None
            hops += 1
            host, path = res.target_host, res.target_path
            continue
        if isinstance(res, Page | CalendarPage):
            return res
        return None


def _outlinks(page: Reached) -> list[tuple[str, str]]:
    if isinstance(page, CalendarPage):
        return [(page.host, page.next_path()), (page.host, "/")]
    if page.kind not in ("html", "huge") or page.nofollow:
        return []
    return [
        (link.host, link.path)
        for link in page.links
        if not link.nofollow and link.host is not None and link.path is not None
    ]


def ground_truth(
    web: Web,
    seeds: Iterable[str],
    user_agent: str = DEFAULT_USER_AGENT,
    max_depth: int | None = None,
    max_pages: int | None = None,
    max_redirects: int = 5,
) -> set[str]:
    """Page ids a polite crawler starting at `seeds` fetches successfully (see module doc)."""
    queue: deque[tuple[Reached, int]] = deque()
    seen: set[str] = set()
    result: set[str] = set()

    def push(target: tuple[str, str] | None, depth: int) -> None:
        if target is None:
            return
        reached = follow(web, target[0], target[1], user_agent, max_redirects)
        if reached is None or reached.pid in seen:
            return
        if isinstance(reached, CalendarPage) and max_depth is None and max_pages is None:
            raise TrapReachable(
                f"the seeds reach the infinite calendar on {reached.host}; pass max_depth or max_pages"
            )
        seen.add(reached.pid)
        queue.append((reached, depth))

    for seed in seeds:
        push(locate(seed), 0)
    while queue:
        page, depth = queue.popleft()
        result.add(page.pid)
        if max_pages is not None and len(result) >= max_pages:
            break
        if max_depth is not None and depth >= max_depth:
            continue
        for target in _outlinks(page):
            push(target, depth + 1)
    return result
