"""The drill's latency probe times each answer's head, from its own process, and exits 2 on bad
arguments."""

from __future__ import annotations

import json
import subprocess
import sys

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse

from deploy.topology import ROOT
from tests.libs.service.conftest import serve_in_thread


def test_the_probe_times_every_answer_and_reports_json():
    app = FastAPI()
    seen: list[int | None] = []
    ids: list[str | None] = []

    @app.post("/v1/completions")
    async def shed(request: Request) -> JSONResponse:
        seen.append((await request.json()).get("deadline_ms"))
        ids.append(request.headers.get("x-request-id"))
        body = {"error": {"message": "overloaded"}}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})

    with serve_in_thread(app) as base:
        done = subprocess.run(
            [sys.executable, "-m", "loadtests.drills.latency_probe", base, "0.5", "20"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["errors"] == 0
    assert len(out["heads"]) == 10 == len(seen)
    assert all(status == 503 and 0 <= took < 30 for status, took, *_ in out["heads"])
    # every other request is doomed (deadline 1 ms: admission always refuses it), and says so
    assert seen == [None, 1] * 5
    assert [doomed for _, _, doomed, _ in out["heads"]] == [False, True] * 5
    # each carries its own X-Request-ID, reported with its head (the server's access log line
    # for it has the same id and the server's own duration)
    assert [rid for *_, rid in out["heads"]] == ids
    assert len(set(ids)) == 10 and all(rid and rid.startswith("probe-") for rid in ids)


def test_bad_arguments_are_exit_2_with_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "loadtests.drills.latency_probe", "http://127.0.0.1:9", "soon"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error:")
