"""Ground truth: checked against the served site by an independent reference crawl.

The reference crawler below shares no code with websim's truth: it speaks HTTP to the running
server, parses robots.txt with protego and HTML with the stdlib tokenizer, and resolves URLs with
urllib. Its page set must equal `ground_truth`, which walks the generator's data instead.
"""

from __future__ import annotations

import re
from collections import deque
from urllib.parse import urljoin, urlsplit

import pytest
from protego import Protego

from services.websim import ROBOTS_PARSE_LIMIT, SimConfig, TrapReachable, WebSim, run_in_thread

from .conftest import fetch, parse_links

UA = "ProvingGroundBot/0.1 (+test)"
UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalize(url: str) -> tuple[str, str] | None:
    parts = urlsplit(url)
    if parts.scheme.lower() != "http" or not parts.hostname:
        return None
    host = parts.hostname.lower().rstrip(".")
    if not host.endswith(".sim.test") or parts.port not in (None, 80):
        return None

    def fix(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in UNRESERVED else "%" + m.group(1).upper()

    path = urlsplit(urljoin("http://x/", re.sub(r"%([0-9A-Fa-f]{2})", fix, parts.path or "/"))).path
    query = re.sub(r"%([0-9A-Fa-f]{2})", fix, parts.query)
    return host, path + ("?" + query if query else "")


class ReferenceCrawler:
    """Sequential BFS, no delays (the test site has no slow parts): a polite crawler's semantics
    as documented in truth.py, written from scratch."""

    def __init__(self, port: int, max_depth: int) -> None:
        self.port, self.max_depth = port, max_depth
        self.robots: dict[str, Protego | bool] = {}

    def robots_for(self, host: str) -> Protego | bool:
        if host not in self.robots:
            path, reply = "/robots.txt", None
            for _ in range(6):
                reply = fetch(self.port, host, path, ua=UA)
                if reply.status in (301, 302, 307, 308):
                    path = reply.headers["location"]
                    continue
                break
            if reply.status == 200:
                self.robots[host] = Protego.parse(reply.body[:ROBOTS_PARSE_LIMIT].decode("utf-8", "replace"))
            else:
                self.robots[host] = 400 <= reply.status < 500  # 4xx: allow all; 5xx/dropped: none
        return self.robots[host]

    def allowed(self, host: str, path: str) -> bool:
        rules = self.robots_for(host)
        return rules if isinstance(rules, bool) else rules.can_fetch(f"http://{host}{path}", UA)

    def crawl(self, seeds: list[str]) -> None:
        seen: set[tuple[str, str]] = set()
        queue: deque[tuple[tuple[str, str], int]] = deque()
        for s in seeds:
            key = normalize(s)
            if key and key not in seen:
                seen.add(key)
                queue.append((key, 0))
        while queue:
            (host, path), depth = queue.popleft()
            reply, hops = None, 0
            while self.allowed(host, path):
                reply = fetch(self.port, host, path, ua=UA)
                tries = 0
                while reply.status in (429, 503) and tries < 3:
                    reply, tries = fetch(self.port, host, path, ua=UA), tries + 1
                if reply.status not in (301, 302, 307, 308):
                    break
                nxt = normalize(urljoin(f"http://{host}{path}", reply.headers["location"]))
                reply, hops = None, hops + 1
                if nxt is None or nxt in seen or hops > 5:
                    break
                seen.add(nxt)
                host, path = nxt
            if reply is None or reply.status != 200 or depth >= self.max_depth:
                continue
            if not reply.headers.get("content-type", "").startswith("text/html"):
                continue
            parsed = parse_links(
                reply.body, "latin-1" if "8859" in reply.headers["content-type"] else "utf-8"
            )
            if "nofollow" in parsed.meta_robots:
                continue
            base = urljoin(f"http://{host}{path}", parsed.base) if parsed.base else f"http://{host}{path}"
            for href, rel in parsed.links:
                key = normalize(urljoin(base, href))
                if key and "nofollow" not in rel.lower().split() and key not in seen:
                    seen.add(key)
                    queue.append((key, depth + 1))


@pytest.fixture(scope="module")
def small() -> WebSim:
    # No slow parts, so an undelayed sequential crawl takes a second or two.
    return WebSim(SimConfig(hosts=60, seed=5, slow_page_rate=0.0, robots_slow_s=0.0, retry_after_s=0))


@pytest.mark.parametrize("max_depth", [3, 6])
def test_reference_crawl_fetches_exactly_the_ground_truth(small: WebSim, max_depth: int) -> None:
    small.reset()
    seeds = small.seeds(10)
    with run_in_thread(small) as port:
        ReferenceCrawler(port, max_depth).crawl(seeds)
    got = {e["page_id"] for e in small.entries() if e["status"] == 200 and e["kind"] in ("page", "calendar")}
    truth = small.ground_truth(seeds, max_depth=max_depth)
    assert len(truth) > 100
    assert got == truth, (sorted(got - truth)[:10], sorted(truth - got)[:10])


def test_truth_holds_no_disallowed_page_and_nothing_from_closed_hosts(sim: WebSim) -> None:
    truth = sim.ground_truth(sim.seeds(), max_depth=8)
    closed = {h.short for h in sim.web.hosts.values() if h.robots_kind in ("500", "unreachable")}
    assert closed and not any(pid.split("/")[0] in closed for pid in truth)
    for pid in truth:
        page = sim.web.page(pid)
        if page is None:
            assert "/cal/" in pid
            continue
        host = sim.web.host(page.host)
        if host.robots is not None:
            robots = Protego.parse(host.robots_text[:ROBOTS_PARSE_LIMIT].decode())
            assert robots.can_fetch(f"http://{page.host}{page.path}", UA), pid
    assert all("/r" not in pid and "/g" not in pid for pid in truth)  # redirects and 410s are no pages
    assert sum(host.robots is not None and host.robots_kind == "huge" for host in sim.web.hosts.values())
    assert any(
        pid.split("/")[0] in {h.short for h in sim.web.hosts.values() if h.robots_kind == "huge"}
        for pid in truth
    )


def test_pages_reachable_only_through_nofollow_are_excluded(sim: WebSim) -> None:
    truth = sim.ground_truth(sim.seeds(), max_depth=30)
    followable: set[tuple[str, str]] = set()
    for page in sim.web.all_pages():
        if page.pid in truth and not page.nofollow:
            followable |= {(link.host, link.path) for link in page.links if not link.nofollow}
    only_nofollow = [
        p
        for p in sim.web.all_pages()
        if p.path != "/"
        and (p.host, p.path) not in followable
        and not any(
            r.target_host == p.host and r.target_path == p.path
            for h in sim.web.hosts.values()
            for r in h.redirects.values()
        )
    ]
    assert only_nofollow
    assert not any(p.pid in truth for p in only_nofollow)


def test_depth_bounds_the_trap_and_grows_monotonically(sim: WebSim) -> None:
    with pytest.raises(TrapReachable):
        sim.ground_truth(sim.seeds())
    previous: set[str] = set()
    for depth in range(0, 8):
        truth = sim.ground_truth(sim.seeds(), max_depth=depth)
        assert previous <= truth
        calendar = [pid for pid in truth if "/cal/" in pid]
        traps = sum(1 for h in sim.web.hosts.values() if h.trap_start)
        assert len(calendar) <= traps * depth  # the calendar starts one link below the home page
        previous = truth
    assert len(sim.ground_truth(sim.seeds(), max_depth=0)) == sum(
        1 for h in sim.web.hosts.values() if h.robots_kind not in ("500", "unreachable")
    )


def test_max_pages_takes_a_bfs_prefix(sim: WebSim) -> None:
    some = sim.ground_truth(sim.seeds(), max_pages=150)
    assert len(some) == 150
    assert some <= sim.ground_truth(sim.seeds(), max_depth=200)


def test_required_delay_is_the_crawl_delay_of_the_applicable_group(sim: WebSim) -> None:
    delays = {h: sim.required_delay(h) for h in sim.hosts()}
    assert any(d is not None for d in delays.values())
    assert all(d is None or 0.05 <= d <= 0.3 for d in delays.values())
    for host, delay in delays.items():
        h = sim.web.host(host)
        if h.robots is not None:
            assert Protego.parse(h.robots_text.decode()).crawl_delay(UA) == delay, host
        else:
            assert delay is None
        assert sim.host_policy(host)["crawl_delay"] == delay


def test_redirect_chains_end_at_five_hops_and_loops_end(sim: WebSim) -> None:
    from services.websim.truth import follow

    checked = 0
    for host in sim.web.hosts.values():
        for red in host.redirects.values():
            end = follow(sim.web, host.name, red.path, UA, max_redirects=5)
            if red.path.startswith("/loop/"):
                assert end is None
            for n in (5, 6):
                if red.path != f"/hop{n}/1":
                    continue
                last = host.redirects[f"/hop{n}/{n}"]
                open_path = all(
                    sim.allowed(host.name, f"/hop{n}/{i}") for i in range(1, n + 1)
                ) and sim.allowed(last.target_host, last.target_path)
                assert (end is not None) == (open_path and n == 5)
                six = follow(sim.web, host.name, red.path, UA, max_redirects=6)
                assert (six is not None) == open_path
                checked += 1
    assert checked >= 2
