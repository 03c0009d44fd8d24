"""The page worker over real sockets: HTTP API, scan jobs on allow-listed roots, Redis stream."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from libs.testkit.neardup_corpus import corpus
from tests.conftest import free_port, wait_for_port
from tests.services.dedup.conftest import REPO, write


def _event(url: str, text: str, **kw) -> dict:
    return {
        "crawl_id": "c1",
        "url": url,
        "final_url": url,
        "status": 200,
        "content_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "text": text,
        "fetched_at": 1.0,
        **kw,
    }


def _start(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # stderr to a file, not a pipe: a pipe nobody reads can fill up and stall the worker.
    log = tempfile.NamedTemporaryFile(prefix="dedup-worker-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.dedup",
            "worker",
            "--port",
            str(port),
            "--log-level",
            "WARNING",
            *args,
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    proc.log_path = log.name  # type: ignore[attr-defined]
    log.close()
    try:
        wait_for_port(port, timeout=30)
    except TimeoutError:
        proc.kill()
        raise AssertionError(_log_tail(proc)) from None
    return proc, f"http://127.0.0.1:{port}"


def _log_tail(proc: subprocess.Popen) -> str:
    with open(proc.log_path, errors="replace") as f:  # type: ignore[attr-defined]
        return f.read()[-3000:]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        rc = proc.wait(timeout=20)
        assert rc == 0, f"worker exited {rc}: {_log_tail(proc)}"
    finally:
        if proc.poll() is None:
            proc.kill()
        os.unlink(proc.log_path)  # type: ignore[attr-defined]


@pytest.fixture
def scan_root(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    root.mkdir()
    for name in ("a", "b", "c"):
        write(root / name, b"same bytes " * 500)
    write(root / "d", b"other")
    return root


@pytest.fixture
def worker(scan_root: Path) -> Iterator[str]:
    proc, base = _start("--scan-roots", str(scan_root))
    try:
        yield base
    finally:
        _stop(proc)


def test_pages_clusters_and_stats(worker: str) -> None:
    pages = corpus(seed=3, families=5, variants=2, unrelated=10)
    with httpx.Client(base_url=worker, timeout=10) as c:
        first = c.post("/v1/pages", json=_event(pages[0].url, pages[0].text))
        assert first.status_code == 200 and first.json()["accepted"] == 1
        batch = c.post("/v1/pages", json={"events": [_event(p.url, p.text) for p in pages[1:]]})
        assert batch.status_code == 200 and batch.json()["accepted"] == len(pages) - 1
        fam = next(p for p in pages if p.family is not None)
        cluster = c.get("/v1/clusters", params={"url": fam.url}).json()
        expected = {p.url for p in pages if p.family == fam.family}
        assert {m["url"] for m in cluster["members"]} == expected
        assert all(e["kind"] in ("content", "simhash", "minhash", "exact") for e in cluster["edges"])
        stats = c.get("/v1/stats").json()
        assert stats["index"]["index_size"] == len(pages)
        text = c.get("/metrics").text
        assert "dedup_pages_seen_total" in text and "dedup_index_pages" in text
        assert c.get("/readyz").status_code == 200
        assert {"/v1/pages", "/v1/clusters", "/v1/scans"} <= set(c.get("/openapi.json").json()["paths"])


def test_bad_input_names_the_field(worker: str) -> None:
    good = _event("http://h1.sim.test/x", "text " * 30)
    with httpx.Client(base_url=worker, timeout=10) as c:
        cases = [
            ({**good, "content_sha256": "XYZ"}, "body.content_sha256"),
            ({k: v for k, v in good.items() if k != "url"}, "body.url"),
            ({**good, "surprise": 1}, "body.surprise"),
            ({"events": [good, {**good, "status": "two hundred"}]}, "body.events.1.status"),
        ]
        for body, field in cases:
            r = c.post("/v1/pages", json=body)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["field"] == field
        r = c.post("/v1/pages", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code in (400, 422) and "error" in r.json()
        r = c.get("/v1/clusters", params={"url": "http://unknown/"})
        assert r.status_code == 404 and r.json()["error"]["field"] == "query.url"
        assert c.get("/v1/clusters", params={"url": ""}).status_code == 422
        assert c.get("/v1/stats").json()["index"]["index_size"] == 0  # nothing half-stored


AUTH = {"Authorization": "Bearer dev-dedup-key"}  # the documented dev key


def _wait_job(c: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = c.get(f"/v1/scans/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"scan job {job_id} still {job['status']}")


def test_scan_api_needs_an_api_key(worker: str, scan_root: Path) -> None:
    body = {"paths": [str(scan_root)]}
    with httpx.Client(base_url=worker, timeout=10) as c:
        for headers, message in [
            ({}, "missing API key"),
            ({"Authorization": "Bearer wrong-key"}, "unknown API key"),
            ({"Authorization": "Basic ZGV2OmRldg=="}, "Bearer"),
            ({"X-API-Key": "wrong-key"}, "unknown API key"),
        ]:
            r = c.post("/v1/scans", json=body, headers=headers)
            assert r.status_code == 401, r.text
            err = r.json()["error"]
            assert err["field"] == "header.authorization" and message in err["message"], err
            assert "Bearer" in r.headers["www-authenticate"]
        assert c.get("/v1/scans/s1").status_code == 401
        # An unauthenticated caller learns nothing about the body either: 401 before 422.
        assert c.post("/v1/scans", json={"paths": "nope"}).status_code == 401
        assert c.post("/v1/scans", json=body, headers={"X-API-Key": "dev-dedup-key"}).status_code == 202


def test_scan_job_cannot_follow_a_symlink_out_to_etc(worker: str, scan_root: Path) -> None:
    """The reported escape: a symlink inside the root to /etc, followed on request."""
    os.symlink("/etc", scan_root / "etc-link")
    os.symlink("/etc/passwd", scan_root / "hostname-link")
    (scan_root / "sub").mkdir()
    os.symlink("../a", scan_root / "sub" / "inside-link")  # stays inside: followed
    with httpx.Client(base_url=worker, timeout=10, headers=AUTH) as c:
        r = c.post("/v1/scans", json={"paths": [str(scan_root)], "follow_symlinks": True})
        assert r.status_code == 202, r.text
        job = _wait_job(c, r.json()["id"])
    assert job["status"] == "done", job
    rep = job["report"]
    reported = [f["path"] for g in rep["groups"] for f in g["files"]]
    reported += [f["path"] for f in rep["hard_linked"]] + [
        p["path"] for f in rep["hard_linked"] for p in f.get("links", [])
    ]
    assert not [p for p in reported if "etc" in p or "passwd" in p], reported
    errors = {os.path.basename(e["path"]): e["error"] for e in rep["errors"]}
    assert set(errors) == {"etc-link", "hostname-link"}, errors
    assert all("outside the allowed scan roots" in e for e in errors.values()), errors
    (group,) = rep["groups"]
    assert sorted(os.path.basename(f["path"]) for f in group["files"]) == ["a", "b", "c"]


def test_scan_jobs_only_under_allowed_roots(worker: str, scan_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, scan_root / "escape")
    with httpx.Client(base_url=worker, timeout=10, headers=AUTH) as c:
        for bad in (
            str(outside),
            str(scan_root / ".." / "outside"),
            f"{scan_root}/../../../../../../../etc",
            str(scan_root / "escape"),
            str(scan_root / "escape" / ".."),
            "/etc",
        ):
            r = c.post("/v1/scans", json={"paths": [str(scan_root), bad]})
            assert r.status_code == 403, (bad, r.text)
            assert r.json()["error"]["field"] == "body.paths.1"
        r = c.post("/v1/scans", json={"paths": [str(scan_root)], "workers": 2})
        assert r.status_code == 202
        job = _wait_job(c, r.json()["id"])
        assert job["status"] == "done", job
        (group,) = job["report"]["groups"]
        assert sorted(os.path.basename(f["path"]) for f in group["files"]) == ["a", "b", "c"]
        assert c.get("/v1/scans/nope").status_code == 404


def _xadd_all(redis_url: str, events: list[dict | bytes]) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    for ev in events:
        r.xadd("pg:pages", {"event": ev if isinstance(ev, bytes) else json.dumps(ev)})
    r.close()


def _wait_acked(base: str, n: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, timeout=5) as c:
        while time.monotonic() < deadline:
            stats = c.get("/v1/stats").json()
            if stats["stream"]["acked"] >= n:
                return stats
            time.sleep(0.05)
    raise AssertionError(f"not all {n} entries acknowledged: {stats}")


def test_redis_stream_consumer_group(redis_url: str) -> None:
    import redis

    pages = corpus(seed=4, families=4, variants=2, unrelated=8)
    events: list[dict | bytes] = [_event(p.url, p.text) for p in pages]
    events.insert(3, b"{broken json")
    events.insert(5, json.dumps({"url": "only a url"}).encode())
    _xadd_all(redis_url, events)
    proc, base = _start("--redis", redis_url)
    try:
        stats = _wait_acked(base, len(events))
        assert stats["stream"]["invalid"] == 2
        assert stats["index"]["index_size"] == len(pages)
        fam = next(p for p in pages if p.family is not None)
        with httpx.Client(base_url=base) as c:
            cluster = c.get("/v1/clusters", params={"url": fam.url}).json()
        assert {m["url"] for m in cluster["members"]} == {p.url for p in pages if p.family == fam.family}
        r = redis.Redis.from_url(redis_url)
        assert r.xpending("pg:pages", "dedup")["pending"] == 0
        r.close()
    finally:
        _stop(proc)


def test_entries_taken_by_a_crashed_consumer_are_processed(redis_url: str) -> None:
    """Entries read but never acknowledged (the reader died) come back: to the same consumer
    name on restart, and to any consumer once they have been idle for --claim-idle-ms."""
    import redis

    r = redis.Redis.from_url(redis_url)
    r.xgroup_create("pg:pages", "dedup", id="0", mkstream=True)
    _xadd_all(redis_url, [_event(f"http://h1.sim.test/{i}", f"page {i} " * 30) for i in range(6)])
    r.xreadgroup("dedup", "me", {"pg:pages": ">"}, count=3)  # taken by "me", never acked
    r.xreadgroup("dedup", "dead", {"pg:pages": ">"}, count=3)  # taken by another, never acked
    assert r.xpending("pg:pages", "dedup")["pending"] == 6
    proc, base = _start("--redis", redis_url, "--consumer", "me", "--claim-idle-ms", "200")
    try:
        stats = _wait_acked(base, 6)
        assert stats["index"]["index_size"] == 6
        assert r.xpending("pg:pages", "dedup")["pending"] == 0
    finally:
        _stop(proc)
        r.close()


def test_acknowledged_pages_survive_sigkill_with_a_data_dir(tmp_path: Path) -> None:
    import signal

    pages = corpus(seed=6, families=6, variants=2, unrelated=10)
    data = tmp_path / "data"
    proc, base = _start("--data-dir", str(data))
    try:
        with httpx.Client(base_url=base, timeout=10) as c:
            for p in pages:
                assert c.post("/v1/pages", json=_event(p.url, p.text)).status_code == 200
            fam = next(p for p in pages if p.family is not None)
            before = c.get("/v1/clusters", params={"url": fam.url}).json()
    finally:
        proc.send_signal(signal.SIGKILL)  # no shutdown hook runs: only what was fsynced counts
        proc.wait(timeout=10)
        os.unlink(proc.log_path)  # type: ignore[attr-defined]
    with open(data / "pages" / "pages.jsonl", "ab") as f:
        f.write(b'{"url": "torn')  # a crash in the middle of an append
    proc, base = _start("--data-dir", str(data))
    try:
        with httpx.Client(base_url=base, timeout=10) as c:
            assert c.get("/v1/stats").json()["index"]["index_size"] == len(pages)
            after = c.get("/v1/clusters", params={"url": fam.url}).json()
            assert {m["url"] for m in after["members"]} == {m["url"] for m in before["members"]}
            assert not c.post("/v1/pages", json=_event(pages[0].url, pages[0].text)).json()["results"][0][
                "new"
            ]
    finally:
        _stop(proc)


def test_page_event_model_agrees_with_the_shared_schema() -> None:
    """docs/formats/page-event.schema.json is the contract with the crawler: the worker's model
    accepts and rejects exactly what the schema does on these cases."""
    import jsonschema
    from pydantic import ValidationError

    from services.dedup.worker import PageEvent

    schema = json.loads((REPO / "docs" / "formats" / "page-event.schema.json").read_text())
    assert set(PageEvent.model_fields) == set(schema["properties"])
    assert {n for n, f in PageEvent.model_fields.items() if f.is_required()} == set(schema["required"])
    good = _event("http://h1.sim.test/a", "words " * 30, links=["http://h1.sim.test/b"], canonical=None)
    cases = [
        (good, True),
        ({**good, "warc_file": None, "content_type": "text/html"}, True),
        ({**good, "content_sha256": "A" * 64}, False),
        ({**good, "unknown": 1}, False),
        ({k: v for k, v in good.items() if k != "final_url"}, False),
        ({**good, "status": "200"}, False),
        ({**good, "fetched_at": 1}, True),
        ({**good, "text": 5}, False),
    ]
    for event, ok in cases:
        schema_ok = jsonschema.Draft202012Validator(schema).is_valid(event)
        try:
            PageEvent.model_validate(event)
            model_ok = True
        except ValidationError:
            model_ok = False
        assert schema_ok == model_ok == ok, event


def _metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    (line,) = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[1])


def test_a_consumer_started_before_redis_waits_for_it_and_then_consumes(tmp_path: Path) -> None:
    """Redis not up yet: the consumer retries (logged), /readyz says not ready; once Redis
    comes up the consumer sets up its group and consumes everything."""
    from tests.services.crawler.test_outbox import RedisProc

    redis_proc = RedisProc(tmp_path)
    pages = corpus(seed=5, families=3, variants=2, unrelated=4)
    proc, base = _start("--redis", redis_proc.url, "--log-level", "INFO")
    try:
        with httpx.Client(base_url=base, timeout=10) as c:
            deadline = time.monotonic() + 30
            while c.get("/v1/stats").json()["stream"]["errors"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            ready = c.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["stream_consumer"]["ok"] is False
            assert _metric(base, "dedup_stream_connected") == 0
            redis_proc.start()
            _xadd_all(redis_proc.url, [_event(p.url, p.text) for p in pages])
            stats = _wait_acked(base, len(pages))
            assert stats["index"]["index_size"] == len(pages)
            assert c.get("/readyz").status_code == 200
        assert _metric(base, "dedup_stream_connected") == 1
        assert _metric(base, "dedup_index_pages") == len(pages)
        assert _metric(base, "dedup_clusters") == 3
        assert "stream consumer turn failed" in _log_tail(proc)
    finally:
        _stop(proc)
        redis_proc.close()


def test_index_gauges_count_pages_restored_at_start(tmp_path: Path) -> None:
    pages = corpus(seed=7, families=2, variants=2, unrelated=3)
    data = tmp_path / "data"
    proc, base = _start("--data-dir", str(data))
    try:
        with httpx.Client(base_url=base, timeout=10) as c:
            batch = {"events": [_event(p.url, p.text) for p in pages]}
            assert c.post("/v1/pages", json=batch).status_code == 200
    finally:
        _stop(proc)
    proc, base = _start("--data-dir", str(data))
    try:
        assert _metric(base, "dedup_index_pages") == len(pages)
        assert _metric(base, "dedup_clusters") == 2
    finally:
        _stop(proc)
