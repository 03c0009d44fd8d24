"""Judging a crawl from the log: each check catches what it should and nothing else."""

from __future__ import annotations

import json

import pytest

from services.websim import WebSim

from .conftest import fetch

UA = "ProvingGroundBot/0.2"


@pytest.fixture(autouse=True)
def clean(sim: WebSim, port: int) -> None:
    sim.reset()


def disallowed_page(sim: WebSim):
    for page in sim.web.all_pages():
        host = sim.web.host(page.host)
        if host.robots is not None and not host.robots.allowed(UA, page.path) and not page.transient:
            return page
    raise AssertionError("no disallowed page")


def test_robots_violations_name_exactly_the_disallowed_requests(sim: WebSim, port: int) -> None:
    bad = disallowed_page(sim)
    closed = next(h for h in sim.web.hosts.values() if h.robots_kind == "500")
    fetch(port, "h0000.sim.test", "/robots.txt", ua=UA)
    fetch(port, "h0000.sim.test", "/", ua=UA)
    fetch(port, bad.host.upper(), bad.path, ua=UA)
    fetch(port, closed.name, "/robots.txt", ua=UA)
    fetch(port, closed.name, "/", ua=UA)
    fetch(port, bad.host, bad.path, ua="SomeOtherCrawler/1.0")  # another agent: not judged as ours
    violations = sim.robots_violations()
    assert [(v["host"], v["path"]) for v in violations] == [(bad.host, bad.path), (closed.name, "/")]


def test_politeness_violations_use_the_larger_of_crawl_delay_and_min_delay(sim: WebSim) -> None:
    # Synthetic log entries: the check is a pure function of arrival times.
    slow_host = next(h for h in sim.hosts() if (sim.required_delay(h) or 0) >= 0.2)
    required = sim.required_delay(slow_host)
    free_host = next(h for h in sim.hosts() if sim.required_delay(h) is None)

    def entry(seq: int, host: str, ts: float, ua: str = UA) -> dict:
        return {
            "seq": seq,
            "host": host,
            "ts": ts,
            "path": "/",
            "status": 200,
            "user_agent": ua,
            "page_id": None,
            "kind": "page",
        }

    log = [
        entry(0, slow_host, 100.0),
        entry(1, slow_host, 100.0 + required / 2),  # too soon
        entry(2, slow_host, 100.0 + required / 2 + required),  # fine
        entry(3, free_host, 100.0),
        entry(4, free_host, 100.01),  # fine without a crawl-delay, too soon for min_delay=0.05
        entry(5, slow_host, 100.0 + required / 2 + required + 0.001, ua="OtherCrawler/1"),  # not ours
    ]
    found = sim.politeness_violations(log)
    assert [(v["host"], v["second"]["seq"], v["required_s"]) for v in found] == [(slow_host, 1, required)]
    found = sim.politeness_violations(log, min_delay=0.05)
    assert sorted(v["second"]["seq"] for v in found) == [1, 4]
    assert len(sim.politeness_violations(log, min_delay=10.0)) == 3


def test_duplicates_count_final_answers_not_retries(sim: WebSim, port: int) -> None:
    page = next(p for p in sim.web.all_pages() if p.transient and p.transient[1] == 2)
    for _ in range(3):  # two 429/503 then a 200: retries, not duplicates
        fetch(port, page.host, page.path, ua=UA)
    assert sim.duplicate_fetches() == []
    fetch(port, page.host, page.path.replace("/", "/./", 1), ua=UA)  # a URL variant of the same page
    assert [d["page_id"] for d in sim.duplicate_fetches()] == [page.pid]
    assert sim.fetched_pages() == {page.pid}
    summary = json.loads(fetch(port, "127.0.0.1", "/judge?min_delay=0").body)
    assert summary["duplicate_fetches"] == 1 and summary["pages_fetched"] == 1 and summary["requests"] == 4
    assert fetch(port, "127.0.0.1", "/judge?min_delay=-1").status == 400


def test_a_dot_segment_request_that_resolves_to_a_disallowed_page_is_a_violation(
    sim: WebSim, port: int
) -> None:
    """What a crawler that removes dot segments before decoding "%2e%2e" sends ("/zz/../p"), and
    the escaped form itself: websim serves the disallowed page for both, and judges both."""
    bad = disallowed_page(sim)
    fetch(port, bad.host, "/robots.txt", ua=UA)
    for raw in (f"/zz/..{bad.path}", f"/zz/%2e%2e{bad.path}", f"/zz/%2E.{bad.path}"):
        assert fetch(port, bad.host, raw, ua=UA).status == 200, raw
    assert [v["path"] for v in sim.robots_violations()] == [
        f"/zz/..{bad.path}",
        f"/zz/%2e%2e{bad.path}",
        f"/zz/%2E.{bad.path}",
    ]


def test_a_request_before_retry_after_runs_out_is_a_violation(sim: WebSim) -> None:
    """Retry-After binds the host from the answer that carried it until the time it named; a
    request already in flight when that answer left is not judged by it."""
    host = next(h for h in sim.hosts() if sim.required_delay(h) is None)

    def entry(seq: int, ts: float, status: int = 200, until: float | None = None) -> dict:
        return {
            "seq": seq,
            "host": host,
            "ts": ts,
            "path": "/",
            "status": status,
            "user_agent": UA,
            "page_id": None,
            "kind": "page",
            "duration_s": 0.1,
            "retry_until": until,
        }

    log = [
        entry(0, 100.0, 429, until=101.1),  # answered at 100.1: come back at 101.1
        entry(1, 100.05),  # in flight before the 429 left: not judged by it
        entry(2, 100.6),  # too soon
        entry(3, 101.1),  # on time
        entry(4, 101.2, 503, until=103.3),
        entry(5, 103.297),  # within the tolerance
        entry(6, 103.0),  # too soon (sorted by arrival: before seq 5)
    ]
    found = sim.politeness_violations(log)
    assert [(v["why"], v["first"]["seq"], v["second"]["seq"]) for v in found] == [
        ("retry_after", 0, 2),
        ("retry_after", 4, 6),
    ]
    assert found[0]["required_s"] == pytest.approx(1.1)
    # A request too soon for the delay is named once, as such, even within a Retry-After.
    found = sim.politeness_violations(log, min_delay=0.2)
    assert ("delay", 1) in [(v["why"], v["second"]["seq"]) for v in found]
    assert sum(v["second"]["seq"] == 2 for v in found) == 1


def test_the_log_says_until_when_a_retry_after_asked_to_wait(sim: WebSim, port: int) -> None:
    """429 sends seconds, 503 an HTTP date: both become a time on the log's clock."""
    for status in (429, 503):
        page = next(p for p in sim.web.all_pages() if p.transient and p.transient[0] == status)
        sim.reset()
        assert fetch(port, page.host, page.path, ua=UA).status == status
        (e,) = sim.entries()
        after = e["retry_until"] - (e["ts"] + e["duration_s"])
        upper = sim.config.retry_after_s + (0.01 if status == 429 else 1.01)
        assert sim.config.retry_after_s - 1.0 <= after <= upper, (status, after)
    sim.reset()
    fetch(port, "h0000.sim.test", "/robots.txt", ua=UA)
    assert sim.entries()[0]["retry_until"] is None
