"""The served web over real sockets: routing, every resource kind, faults, and the request log."""

from __future__ import annotations

import json
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin

import pytest

from services.websim import WebSim
from services.websim.web import locate

from .conftest import fetch

ADMIN = "127.0.0.1"


@pytest.fixture(autouse=True)
def clean(sim: WebSim, port: int) -> None:
    sim.reset()
    sim.clear_faults()


def last(sim: WebSim, n: int = 1) -> list[dict]:
    return sim.entries()[-n:]


def pages(sim: WebSim, predicate) -> list:
    return [p for p in sim.web.all_pages() if predicate(p)]


@pytest.mark.parametrize(
    "host",
    ["h0000.sim.test", "H0000.SIM.TEST", "h0000.Sim.Test:8090", "h0000.sim.test.", "h0000.sim.test:80"],
)
def test_host_header_routing_ignores_case_port_and_trailing_dot(sim: WebSim, port: int, host: str) -> None:
    reply = fetch(port, host, "/")
    assert reply.status == 200 and b"<html" in reply.body
    (entry,) = last(sim)
    assert entry["host"] == "h0000.sim.test" and entry["page_id"] == "h0000/p0"


def test_unknown_host_is_404_and_logged(sim: WebSim, port: int) -> None:
    assert fetch(port, "h9999.sim.test", "/robots.txt").status == 404
    assert fetch(port, "Nope.Sim.Test:8090", "/").status == 404
    entries = last(sim, 2)
    assert [e["kind"] for e in entries] == ["unknown_host", "unknown_host"]
    assert [e["host"] for e in entries] == ["h9999.sim.test", "nope.sim.test"]


@pytest.mark.parametrize("host", ["127.0.0.1:8090", "localhost", "websim:8090", "admin.sim.test", "[::1]:80"])
def test_names_outside_the_simulated_web_reach_the_admin_api(sim: WebSim, port: int, host: str) -> None:
    reply = fetch(port, host, "/")
    assert reply.status == 200 and json.loads(reply.body)["service"] == "websim"
    assert fetch(port, host, "/metrics").status == 200
    assert sim.entries() == []


def test_url_variants_resolve_to_one_page_id(sim: WebSim, port: int) -> None:
    page = next(
        p for p in sim.web.all_pages() if p.path.startswith("/p/") and p.kind == "html" and not p.transient
    )
    name, stem = page.path.rsplit("/", 1)
    variants = [
        page.path,
        f"/x/..{page.path}",
        f"/./{page.path[1:]}",
        f"{name}/%{ord(stem[0]):02X}{stem[1:]}",
        f"{name}/%{ord(stem[0]):02x}{stem[1:]}",
        f"http://{page.host}:80{page.path}",
    ]
    for v in variants:
        assert fetch(port, page.host.upper(), v).status == 200, v
    assert {e["page_id"] for e in last(sim, len(variants))} == {page.pid}
    assert [e["path"] for e in last(sim, len(variants))] == variants  # raw targets are logged as sent


def test_page_kinds_are_served_with_their_types(sim: WebSim, port: int) -> None:
    pdf = pages(sim, lambda p: p.kind == "pdf" and not p.transient)[0]
    png = pages(sim, lambda p: p.kind == "png" and not p.transient)[0]
    r = fetch(port, pdf.host, pdf.path)
    assert r.status == 200 and r.headers["content-type"] == "application/pdf" and r.body.startswith(b"%PDF-")
    r = fetch(port, png.host, png.path)
    assert r.status == 200 and r.headers["content-type"] == "image/png" and r.body.startswith(b"\x89PNG")
    huge = pages(sim, lambda p: p.kind == "huge" and not p.transient)[0]
    r = fetch(port, huge.host, huge.path)
    assert r.status == 200 and len(r.body) == int(r.headers["content-length"]) >= 3_000_000
    r = fetch(port, huge.host, huge.path, method="HEAD")
    assert r.status == 200 and r.body == b""


def test_charsets_are_declared_as_designed(sim: WebSim, port: int) -> None:
    wrong = pages(sim, lambda p: p.charset == "wrong-header" and not p.transient)[0]
    r = fetch(port, wrong.host, wrong.path)
    assert "charset=utf-8" in r.headers["content-type"]
    with pytest.raises(UnicodeDecodeError):
        r.body.decode("utf-8")  # the header lies: the body is Latin-1
    meta = pages(sim, lambda p: p.charset == "wrong-meta" and not p.transient)[0]
    r = fetch(port, meta.host, meta.path)
    assert b"shift_jis" in r.body and r.body.decode("utf-8")


def test_transient_pages_fail_then_succeed_with_retry_after(sim: WebSim, port: int) -> None:
    for status in (429, 503):
        page = pages(sim, lambda p, s=status: p.transient and p.transient[0] == s)[0]
        failures = page.transient[1]
        for attempt in range(1, failures + 1):
            r = fetch(port, page.host, page.path)
            assert r.status == status, attempt
            if status == 429:
                assert int(r.headers["retry-after"]) == sim.config.retry_after_s
            else:
                assert parsedate_to_datetime(r.headers["retry-after"]) is not None
        assert fetch(port, page.host, page.path).status == 200
        assert [e["attempt"] for e in last(sim, failures + 1)] == list(range(1, failures + 2))


def test_redirects_lead_on_and_loops_never_end(sim: WebSim, port: int) -> None:
    redirects = [r for h in sim.web.hosts.values() for r in h.redirects.values()]
    for red in redirects[:40]:
        r = fetch(port, red.host, red.path)
        assert r.status == red.status
        assert locate(urljoin(f"http://{red.host}{red.path}", r.headers["location"])) == (
            red.target_host,
            red.target_path,
        )
    loop = next(r for r in redirects if r.path.startswith("/loop/"))
    host, path, hops = loop.host, loop.path, 0
    while hops < 12:  # a client that follows blindly never reaches a page
        r = fetch(port, host, path)
        assert r.status in (301, 302, 307, 308)
        host, path = locate(urljoin(f"http://{host}{path}", r.headers["location"]))
        hops += 1


def test_gone_missing_and_bad_method(sim: WebSim, port: int) -> None:
    gone = next(g for h in sim.web.hosts.values() for g in h.gone.values())
    assert fetch(port, gone.host, gone.path).status == 410
    assert fetch(port, "h0000.sim.test", "/no/such/page.html").status == 404
    assert fetch(port, "h0000.sim.test", "/", method="POST", body=b"x").status == 405
    assert [e["kind"] for e in last(sim, 3)] == ["gone", "not_found", "bad_method"]
    assert [e["status"] for e in last(sim, 3)] == [410, 404, 405]


def test_calendar_trap_links_to_the_next_month_forever(sim: WebSim, port: int) -> None:
    host = next(h for h in sim.web.hosts.values() if h.trap_start)
    year, month = host.trap_start
    path = f"/calendar/{year:04d}/{month:02d}"
    for _ in range(30):
        r = fetch(port, host.name, path)
        assert r.status == 200
        nxt = r.body.split(b'<a href="')[1].split(b'"')[0].decode()
        assert nxt > path
        path = nxt
    assert path.startswith("/calendar/2028/") or path.startswith("/calendar/2029/")


def test_robots_variants(sim: WebSim, port: int) -> None:
    by_kind = {}
    for h in sim.web.hosts.values():
        by_kind.setdefault(h.robots_kind, h)
    r = fetch(port, by_kind["normal"].name, "/robots.txt")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    assert r.body == by_kind["normal"].robots_text
    assert fetch(port, by_kind["404"].name, "/robots.txt").status in (403, 404, 410)
    assert fetch(port, by_kind["500"].name, "/robots.txt").status in (500, 502, 503)
    assert fetch(port, by_kind["unreachable"].name, "/robots.txt").status == 0
    r = fetch(port, by_kind["huge"].name, "/robots.txt")
    assert r.status == 200 and len(r.body) > 500 * 1024
    r = fetch(port, by_kind["redirect"].name, "/robots.txt")
    assert r.status == 301 and r.headers["location"] == "/robots-real.txt"
    assert fetch(port, by_kind["redirect"].name, "/robots-real.txt").body == by_kind["redirect"].robots_text
    r = fetch(port, by_kind["slow"].name, "/robots.txt")
    assert r.status == 200 and r.body == by_kind["slow"].robots_text
    entries = last(sim, 8)
    assert all(e["kind"] == "robots" and e["page_id"] is None for e in entries)
    assert entries[3]["status"] == 0  # the dropped connection is logged as status 0
    assert entries[-1]["duration_s"] >= sim.config.robots_slow_s * 0.9


def test_sitemap_is_served(sim: WebSim, port: int) -> None:
    host = next(h for h in sim.web.hosts.values() if h.sitemap_paths)
    r = fetch(port, host.name, "/sitemap.xml")
    assert r.status == 200 and r.body.count(b"<loc>") == len(host.sitemap_paths)


def test_admin_faults_toggle_errors_drops_and_latency(sim: WebSim, port: int) -> None:
    def post(body: object) -> tuple[int, dict]:
        r = fetch(port, ADMIN, "/faults", method="POST", body=json.dumps(body).encode())
        return r.status, json.loads(r.body)

    assert post({"host": "h0001.sim.test", "error_rate": 1.0})[0] == 200
    assert fetch(port, "h0001.sim.test", "/").status == 500
    assert fetch(port, "h0000.sim.test", "/").status == 200  # other hosts untouched
    assert post({"host": "*", "drop_rate": 1.0})[0] == 200
    assert fetch(port, "h0002.sim.test", "/").status == 0
    assert fetch(port, "h0001.sim.test", "/").status == 500  # a host's own setting beats "*"
    assert post({"host": "*", "drop_rate": 0, "latency_ms": 100})[0] == 200
    assert fetch(port, "h0002.sim.test", "/").status == 200
    faults = json.loads(fetch(port, ADMIN, "/faults").body)["faults"]
    assert {f["host"] for f in faults} == {"h0001.sim.test", "*"}
    assert fetch(port, ADMIN, "/faults", method="DELETE").status == 200
    assert fetch(port, "h0001.sim.test", "/").status == 200
    entries = last(sim, 6)
    assert [e["status"] for e in entries] == [500, 200, 0, 500, 200, 200]
    assert [e["fault"] for e in entries] == ["error", None, "drop", "error", None, None]
    assert entries[4]["duration_s"] >= 0.09  # the added latency is in the logged duration
    status, body = post({"host": "*", "error_rate": 2})
    assert status == 400 and body["error"]["field"] == "body.error_rate"
    status, body = post({"nope": 1})
    assert status == 400 and body["error"]["field"] == "body.nope"
    r = fetch(port, ADMIN, "/faults", method="POST", body=b"{not json")
    assert r.status == 400 and json.loads(r.body)["error"]["field"] == "body"


@pytest.mark.parametrize(
    ("body", "status", "retry_after"),
    [
        ({"status": 503, "retry_after": 7}, 503, "7"),
        ({"status": 429, "retry_after": 0}, 429, "0"),
        ({"status": 503}, 503, None),
        ({"status": 502}, 502, None),
        ({"status": 504}, 504, None),
        ({}, 500, None),
    ],
)
def test_admin_faults_answer_the_asked_status_with_retry_after(
    sim: WebSim, port: int, body: dict, status: int, retry_after: str | None
) -> None:
    r = fetch(port, ADMIN, "/faults", method="POST", body=json.dumps({"error_rate": 1.0, **body}).encode())
    assert r.status == 200
    (shown,) = json.loads(r.body)["faults"]
    assert shown["status"] == status and shown["retry_after"] == body.get("retry_after")
    reply = fetch(port, "h0001.sim.test", "/")
    assert reply.status == status
    assert reply.headers.get("retry-after") == retry_after
    assert last(sim)[0]["fault"] == "error" and last(sim)[0]["status"] == status


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": 404}, "body.status"),
        ({"status": 200}, "body.status"),
        ({"status": "503"}, "body.status"),
        ({"status": True}, "body.status"),
        ({"status": 503.0}, "body.status"),
        ({"status": 500, "retry_after": 5}, "body.retry_after"),
        ({"status": 503, "retry_after": -1}, "body.retry_after"),
        ({"status": 503, "retry_after": 1.5}, "body.retry_after"),
        ({"retry_after": 5}, "body.retry_after"),
    ],
)
def test_admin_faults_reject_a_bad_status_naming_the_field(
    sim: WebSim, port: int, body: dict, field: str
) -> None:
    r = fetch(port, ADMIN, "/faults", method="POST", body=json.dumps({"error_rate": 1.0, **body}).encode())
    assert r.status == 400
    error = json.loads(r.body)["error"]
    assert error["field"] == field and error["type"] == "invalid_request"
    assert sim.faults.all() == []  # nothing half-applied


def test_log_records_every_request_and_is_served_as_json_lines(sim: WebSim, port: int) -> None:
    fetch(port, "h0000.sim.test", "/robots.txt", ua="SomeBot/1")
    fetch(port, "h0000.sim.test", "/missing")
    fetch(port, "nope.sim.test", "/")
    lines = fetch(port, ADMIN, "/log").body.decode().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == [0, 1, 2]
    assert [e["status"] for e in entries] == [200, 404, 404]
    assert entries[0]["user_agent"] == "SomeBot/1"
    assert entries[0]["ts"] <= entries[1]["ts"] <= entries[2]["ts"]
    assert set(entries[0]) >= {"ts", "host", "path", "status", "user_agent", "page_id", "kind"}
    since = [json.loads(x) for x in fetch(port, ADMIN, "/log?since=2").body.decode().splitlines()]
    assert [e["seq"] for e in since] == [2]
    assert fetch(port, ADMIN, "/log?since=x").status == 400
    assert fetch(port, "admin.sim.test", "/log/clear", method="POST").status == 200
    assert sim.entries() == []  # admin requests themselves are never logged


def test_admin_truth_hosts_and_metrics(sim: WebSim, port: int) -> None:
    body = json.loads(fetch(port, ADMIN, "/truth?n=5&max_depth=2").body)
    assert body["count"] == len(body["page_ids"]) == len(sim.ground_truth(sim.seeds(5), max_depth=2))
    assert fetch(port, ADMIN, "/truth").status == 400
    policy = json.loads(fetch(port, ADMIN, "/hosts/h0000.sim.test").body)
    assert policy["robots"] == "normal"
    assert policy["page_count"] == len(policy["pages"]) == len(sim.host_pages("h0000.sim.test"))
    assert fetch(port, ADMIN, "/hosts/h9999.sim.test").status == 404
    fetch(port, "h0000.sim.test", "/")
    metrics = fetch(port, ADMIN, "/metrics").body.decode()
    assert 'websim_requests_total{kind="page",status="200"}' in metrics
    assert 'http_requests_total{method="GET"' in metrics and 'service="websim"' in metrics


def test_log_keeps_every_request_under_concurrent_load(sim: WebSim, port: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    targets = [(f"h{i % 30:04d}.sim.test", "/" if i % 3 else "/robots.txt") for i in range(240)]
    sim.set_fault("h0007.sim.test", drop_rate=1.0)
    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(lambda t: fetch(port, *t).status, targets))
    entries = sim.entries()
    assert len(entries) == len(targets)
    assert [e["seq"] for e in entries] == list(range(len(targets)))
    assert sorted(e["status"] for e in entries) == sorted(statuses)
    assert sum(s == 0 for s in statuses) >= 1  # drops happened and were logged as 0
