"""Span log records validate against docs/formats/span-log.schema.json and nest correctly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import jsonschema
import pytest

from libs.service.app import create_app
from libs.service.logging import request_id_var
from libs.service.spans import SpanLog, configure_spans, current_span, span
from tests.libs.service.conftest import serve_in_thread

REPO = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((REPO / "docs/formats/span-log.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        VALIDATOR.validate(rec)
        out.append(rec)
    return out


def test_nested_sync_spans_link_parent_and_share_trace(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    with SpanLog(path, service="crawler") as log, log.span("crawl", seeds=2) as root:
        with log.span("fetch", host="h1.sim.test") as child:
            with log.span("parse"):
                pass
            child.set("status", 200)
        with log.span("fetch", host="h2.sim.test"):
            pass
    parse, fetch1, fetch2, crawl = records(path)  # written when each span ends
    assert [r["name"] for r in (parse, fetch1, fetch2, crawl)] == ["parse", "fetch", "fetch", "crawl"]
    assert crawl["parent_id"] is None and crawl["span_id"] == root.span_id
    assert fetch1["parent_id"] == crawl["span_id"] == fetch2["parent_id"]
    assert parse["parent_id"] == fetch1["span_id"]
    assert len({r["trace_id"] for r in (parse, fetch1, fetch2, crawl)}) == 1
    assert fetch1["attrs"] == {"host": "h1.sim.test", "status": 200}
    assert all(r["service"] == "crawler" and r["status"] == "ok" for r in (parse, fetch1, crawl))
    # half-open intervals nest: a child lies inside its parent
    for child, parent in [(parse, fetch1), (fetch1, crawl), (fetch2, crawl)]:
        assert parent["ts"] <= child["ts"] + 1e-6
        assert child["ts"] + child["dur"] <= parent["ts"] + parent["dur"] + 1e-3
    assert current_span() is None


def test_separate_roots_get_separate_traces(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with SpanLog(path, "svc") as log:
        for _ in range(3):
            with log.span("job"):
                pass
    assert len({r["trace_id"] for r in records(path)}) == 3


def test_exception_marks_error_and_propagates(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with SpanLog(path, "svc") as log:
        with pytest.raises(KeyError), log.span("outer"), log.span("inner"):
            raise KeyError("secret-body")
        with log.span("after"):
            pass
    inner, outer, after = records(path)
    assert inner["status"] == outer["status"] == "error"
    assert inner["attrs"]["error"] == "KeyError" and "secret-body" not in path.read_text()
    assert after["status"] == "ok" and after["parent_id"] is None  # context restored after the error


async def test_async_spans_nest_across_tasks(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with SpanLog(path, "svc") as log:

        async def fetch(host: str) -> None:
            async with log.span("fetch", host=host):
                await asyncio.sleep(0.01)
                async with log.span("parse", host=host):
                    await asyncio.sleep(0.005)

        async with log.span("crawl") as root:
            await asyncio.gather(*(fetch(f"h{i}") for i in range(5)))
    recs = records(path)
    by_id = {r["span_id"]: r for r in recs}
    fetches = [r for r in recs if r["name"] == "fetch"]
    parses = [r for r in recs if r["name"] == "parse"]
    assert len(fetches) == 5 and len(parses) == 5
    assert all(f["parent_id"] == root.span_id for f in fetches)
    for p in parses:  # each parse's parent is the fetch of the same host, despite interleaving
        assert by_id[p["parent_id"]]["attrs"]["host"] == p["attrs"]["host"]
    assert len({r["trace_id"] for r in recs}) == 1


def test_root_trace_id_comes_from_the_request_id(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with SpanLog(path, "svc") as log:
        token = request_id_var.set("0123456789abcdef0123456789abcdef")
        with log.span("a"):
            pass
        request_id_var.reset(token)
        token = request_id_var.set("client-id-7")
        with log.span("b"):
            pass
        with log.span("c"):
            pass
        request_id_var.reset(token)
    a, b, c = records(path)
    assert a["trace_id"] == "0123456789abcdef0123456789abcdef" and "attrs" not in a
    assert b["trace_id"] == c["trace_id"] != a["trace_id"]  # stable per client id
    assert b["attrs"] == {"request_id": "client-id-7"}


def test_spans_in_a_request_carry_its_request_id_as_trace(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    log = SpanLog(path, "api")
    app = create_app("api")

    @app.get("/work")
    async def work() -> dict:
        async with log.span("handler"):
            with log.span("step"):
                pass
        return {}

    with serve_in_thread(app) as url:
        rid = httpx.get(f"{url}/work").headers["x-request-id"]
    log.close()
    step, handler = records(path)
    assert handler["trace_id"] == step["trace_id"] == rid
    assert step["parent_id"] == handler["span_id"]


def test_attributes_are_small_scalars(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with SpanLog(path, "svc") as log, log.span("x", big="y" * 10_000, obj=[1, 2], nan=float("nan"), n=None):
        pass
    [rec] = records(path)
    assert len(rec["attrs"]["big"]) == 256 and rec["attrs"]["obj"] == "[1, 2]"
    assert rec["attrs"]["nan"] == "nan" and rec["attrs"]["n"] is None


def test_disabled_log_is_a_noop(tmp_path: Path) -> None:
    log = SpanLog(None, "svc")
    assert not log.enabled
    with log.span("x") as s:
        s.set("k", 1)
        assert current_span() is None
    assert list(tmp_path.iterdir()) == []


async def test_disabled_log_works_with_async_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    log = SpanLog(None, "svc")
    assert not log.enabled
    async with log.span("x") as s:
        s.set("k", 1)
    with pytest.raises(RuntimeError, match="boom"):  # errors inside the span still propagate
        async with log.span("y"):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # a disabled log writes nothing anywhere


def test_module_level_span_uses_the_configured_log(tmp_path: Path) -> None:
    with span("before-config"):
        pass
    path = tmp_path / "s.jsonl"
    log = configure_spans(path, "svc")
    try:
        with span("configured", k=1):
            pass
    finally:
        configure_spans(None, "svc")
    assert not log.enabled  # replaced logs are closed
    [rec] = records(path)
    assert rec["name"] == "configured"


def test_empty_name_is_rejected(tmp_path: Path) -> None:
    with SpanLog(tmp_path / "s.jsonl", "svc") as log, pytest.raises(ValueError, match="span name"):
        log.span("")


def test_many_threads_append_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    threads_n, per_thread = 8, 300
    with SpanLog(path, "svc") as log:

        def work(n: int) -> None:
            for i in range(per_thread):
                with log.span("outer", n=n, i=i, pad="p" * (i % 50)), log.span("inner", n=n):
                    pass

        threads = [threading.Thread(target=work, args=(n,), name=f"w{n}") for n in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    recs = records(path)
    assert len(recs) == threads_n * per_thread * 2
    by_id = {r["span_id"]: r for r in recs}
    assert len(by_id) == len(recs)  # span ids unique
    for r in recs:
        if r["name"] == "inner":  # each inner's parent is an outer of the same thread
            parent = by_id[r["parent_id"]]
            assert parent["name"] == "outer" and parent["thread"] == r["thread"] == f"w{r['attrs']['n']}"


WRITER = """
import sys, time
from libs.service.spans import SpanLog
log = SpanLog(sys.argv[1], sys.argv[2])
print("ready", flush=True)
i = 0
while True:
    with log.span("outer", i=i, pad="x" * (i % 200)):
        with log.span("inner", i=i):
            pass
    i += 1
    if i % 5000 == 0:  # bounded file growth on a slow, shared machine; still writing when killed
        time.sleep(0.05)
"""


def test_processes_sharing_a_file_and_sigkill_leave_only_whole_records(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), f"p{k}"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(3)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 120

        def all_writing() -> bool:
            data = path.read_bytes()
            return len(data) > 300_000 and all(f'"service":"p{k}"'.encode() in data for k in range(3))

        while not all_writing() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all_writing(), "not every writer produced records before the deadline"
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait(timeout=10)
    good, bad = [], []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            VALIDATOR.validate(rec)
            good.append(rec)
        except (ValueError, jsonschema.ValidationError):
            bad.append(line)
    # Concurrent appends never interleave. The kernel may cut a write short at a page boundary
    # when SIGKILL lands inside it, so at most one torn line per killed writer is tolerated.
    assert len(bad) <= len(procs), bad
    assert {r["service"] for r in good} == {"p0", "p1", "p2"}
    assert len(good) > 100


def test_traced_decorator_wraps_sync_and_async_functions(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with SpanLog(path, "svc") as log:

        @log.traced()
        def parse(x: int) -> int:
            return x * 2

        @log.traced("fetch", kind="page")
        async def fetch(x: int) -> int:
            return parse(x) + 1

        assert parse(2) == 4
        assert asyncio.run(fetch(3)) == 7
        assert parse.__name__ == "parse" and fetch.__name__ == "fetch"
    first, inner, outer = records(path)
    assert first["name"].endswith("parse") and first["parent_id"] is None
    assert outer["name"] == "fetch" and outer["attrs"] == {"kind": "page"}
    assert inner["parent_id"] == outer["span_id"]


def test_create_app_with_spans_makes_one_root_span_per_request(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    log = SpanLog(path, "api")
    app = create_app("api-spans", spans=log)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict:
        with log.span("lookup", item=item_id):
            pass
        return {"id": item_id}

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("x")

    with serve_in_thread(app) as url:
        rid = httpx.get(f"{url}/items/7", headers={"X-Request-ID": "f" * 32}).headers["x-request-id"]
        assert httpx.get(f"{url}/boom").status_code == 500
        assert httpx.get(f"{url}/nowhere").status_code == 404
    log.close()
    recs = records(path)
    lookup, request = recs[0], recs[1]
    assert rid == "f" * 32 and request["trace_id"] == lookup["trace_id"] == rid
    assert request["name"] == "GET /items/{item_id}" and request["parent_id"] is None
    assert lookup["parent_id"] == request["span_id"]
    assert request["attrs"] == {"method": "GET", "route": "/items/{item_id}", "status": 200}
    failed, nowhere = recs[2], recs[3]
    assert failed["name"] == "GET /boom" and failed["status"] == "error" and failed["attrs"]["status"] == 500
    assert nowhere["name"] == "GET <unmatched>" and nowhere["status"] == "ok"
