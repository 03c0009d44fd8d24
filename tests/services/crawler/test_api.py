"""Control API and CLI, each as a real subprocess on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_for_port

from .minisite import MiniSite

ENV = {**os.environ, "PYTHONPATH": str(Path.cwd())}


@pytest.fixture
def site() -> Iterator[tuple[MiniSite, int]]:
    s = MiniSite()
    s.page("a.sim.test", "/robots.txt", "User-agent: *\nDisallow: /no\n", content_type="text/plain")
    s.page("a.sim.test", "/", "".join(f'<a href="/p{i}">p</a>' for i in range(12)) + '<a href="/no">x</a>')
    for i in range(12):
        s.page("a.sim.test", f"/p{i}", f"page {i}")
    with s.serve() as port:
        yield s, port


@pytest.fixture
def api(site: tuple[MiniSite, int], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.crawler",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
            "--resolve",
            f"*.sim.test=127.0.0.1:{site[1]}",
            "--log-level",
            "WARNING",
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, timeout=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _wait_state(client: httpx.Client, crawl_id: str, states: set[str], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/v1/crawls/{crawl_id}").json()
        if status["state"] in states:
            return status
        time.sleep(0.1)
    raise AssertionError(f"crawl never reached {states}")


def test_api_runs_pauses_resumes_and_reports(api: str, site: tuple[MiniSite, int]) -> None:
    with httpx.Client(base_url=api, timeout=30) as client:
        assert "/v1/crawls/{crawl_id}/hosts" in client.get("/openapi.json").json()["paths"]
        body = {"seeds": ["http://a.sim.test/"], "politeness": {"min_delay": 0.1}}
        created = client.post("/v1/crawls", params={"crawl_id": "c1"}, json=body)
        assert created.status_code == 201, created.text
        assert client.post("/v1/crawls", params={"crawl_id": "c1"}, json=body).status_code == 409
        deadline = time.monotonic() + 20  # let robots.txt and the first page through
        while client.get("/v1/crawls/c1").json()["urls"]["FETCHED"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.post("/v1/crawls/c1/pause").json()["state"] == "paused"
        time.sleep(0.3)
        paused_at = client.get("/v1/crawls/c1").json()["urls"]["FETCHED"]
        time.sleep(0.5)
        assert client.get("/v1/crawls/c1").json()["urls"]["FETCHED"] == paused_at  # nothing while paused
        hosts = client.get("/v1/crawls/c1/hosts").json()
        assert hosts and hosts[0]["host"] == "a.sim.test" and hosts[0]["delay_seconds"] >= 0.1
        assert client.get("/v1/crawls/c1/hosts/a.sim.test").json()["robots"]["mode"] == "rules"
        assert client.get("/v1/crawls/c1/hosts/nope.test").status_code == 404
        assert client.post("/v1/crawls/c1/resume").json()["state"] == "running"
        final = _wait_state(client, "c1", {"finished"})
        assert final["urls"]["FETCHED"] == 13 and final["stats"]["robots_denied"] == 1
        # A finished crawl still shows its host views, as they were when it ended.
        ended = client.get("/v1/crawls/c1/hosts")
        assert ended.status_code == 200, ended.text
        assert [h["host"] for h in ended.json()] == ["a.sim.test"]
        assert ended.json()[0]["urls"]["FETCHED"] == 13 and ended.json()[0]["requests"] >= 13
        assert client.get("/v1/crawls/c1/hosts/a.sim.test").json()["robots"]["mode"] == "rules"
        assert client.get("/v1/crawls/c1/hosts/nope.test").status_code == 404
        metrics = client.get("/metrics").text
        for name in (
            "crawler_fetches_total",
            "crawler_robots_denials_total",
            "crawler_fetch_duration_seconds",
            "crawler_politeness_delay_seconds",
            "crawler_frontier_size",
            "crawler_host_requests_total",
        ):
            assert name in metrics
        assert client.get("/v1/crawls/zzz").status_code == 404


def test_api_bad_input_names_the_field(api: str) -> None:
    with httpx.Client(base_url=api, timeout=10) as client:
        cases = [
            ({"seeds": []}, "body.seeds"),
            ({"seeds": ["http://a.sim.test/"], "max_pages": "many"}, "body.max_pages"),
            ({"seeds": ["http://a.sim.test/"], "politeness": {"min_delay": -1}}, "body.politeness.min_delay"),
            ({"seeds": ["ftp://a.sim.test/"]}, "body.seeds"),
            ({"seeds": ["http://a.sim.test/"], "bogus": 1}, "body.bogus"),
            ({"seeds": ["http://a.sim.test/"], "lease_seconds": 5}, "body.lease_seconds"),
        ]
        for body, field in cases:
            r = client.post("/v1/crawls", json=body)
            assert r.status_code == 422, body
            err = r.json()["error"]
            assert err["field"] == field, (body, err)
        r = client.post("/v1/crawls", params={"crawl_id": "../x"}, json={"seeds": ["http://a.sim.test/"]})
        assert r.status_code == 422 and r.json()["error"]["field"] == "crawl_id"


def test_cli_bad_usage_exits_2_with_one_line(tmp_path: Path) -> None:
    for args in (
        ["--max-pages", "0", "http://a.sim.test/"],
        ["ftp://x/"],
        ["http://a/", "--resolve", "nope"],
        ["http://a/", "--max-pages", "x"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "services.crawler", "crawl", *args],
            env=ENV,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=30,
        )
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "services.crawler", "crawl", "--help"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0 and "--resolve" in r.stdout


def test_cli_crawl_writes_warc_and_page_events(site: tuple[MiniSite, int], tmp_path: Path) -> None:
    from warcio.archiveiterator import ArchiveIterator

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.crawler",
            "crawl",
            "http://a.sim.test/",
            "--resolve",
            f"*.sim.test=127.0.0.1:{site[1]}",
            "--min-delay",
            "0.02",
            "--store",
            str(tmp_path / "s.sqlite"),
            "--warc-dir",
            str(tmp_path / "warc"),
            "--pages-to",
            str(tmp_path / "pages.jsonl"),
            "--progress",
            "--span-log",
            str(tmp_path / "spans.jsonl"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "page" in r.stderr  # the progress bar
    records = []
    for path in (tmp_path / "warc").glob("*.warc.gz"):
        with path.open("rb") as fh:
            for rec in ArchiveIterator(fh):
                if rec.rec_type == "response":
                    records.append(
                        (rec.rec_headers.get_header("WARC-Target-URI"), rec.content_stream().read())
                    )
    assert len([r for r in records if not r[0].endswith("/robots.txt")]) == 13
    assert any(r[0] == "http://a.sim.test/robots.txt" for r in records)  # robots.txt archived too
    assert ("http://a.sim.test/p3", b"page 3") in records
    import json

    import jsonschema

    schema = json.loads(Path("docs/formats/page-event.schema.json").read_text())
    events = [json.loads(line) for line in (tmp_path / "pages.jsonl").read_text().splitlines()]
    assert len(events) == 13
    for event in events:
        jsonschema.validate(event, schema)
    span_schema = json.loads(Path("docs/formats/span-log.schema.json").read_text())
    spans = [json.loads(line) for line in (tmp_path / "spans.jsonl").read_text().splitlines()]
    assert {s["name"] for s in spans} >= {"crawler.fetch", "crawler.parse", "crawler.store"}
    for span in spans:
        jsonschema.validate(span, span_schema)


def test_sigterm_mid_crawl_keeps_the_store_and_a_restart_resumes(
    site: tuple[MiniSite, int], tmp_path: Path
) -> None:
    import signal

    def start() -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.crawler",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path),
                "--resolve",
                f"*.sim.test=127.0.0.1:{site[1]}",
                "--log-level",
                "WARNING",
            ],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port, timeout=20)
        return proc, f"http://127.0.0.1:{port}"

    body = {"seeds": ["http://a.sim.test/"], "politeness": {"min_delay": 0.3}}
    proc, base = start()
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.post("/v1/crawls", params={"crawl_id": "r1"}, json=body).status_code == 201
        deadline = time.monotonic() + 20
        while client.get("/v1/crawls/r1").json()["urls"]["FETCHED"] < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0  # drained: the crawl was cancelled, the store closed cleanly
    fetched_before = len([e for e in site[0].log if e.path != "/robots.txt"])
    assert 3 <= fetched_before < 13

    proc, base = start()
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.post("/v1/crawls", params={"crawl_id": "r1"}, json=body).status_code == 201
            final = _wait_state(client, "r1", {"finished"})
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert final["urls"]["FETCHED"] == 13
    pages = [e.path for e in site[0].log if e.path != "/robots.txt"]
    assert len(pages) == len(set(pages)) == 13  # nothing fetched twice across the restart
