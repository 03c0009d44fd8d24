"""Drill 5's overload generator runs on uvloop (a third of asyncio's CPU per request on the box it
overloads, so it keeps its schedule instead of sending in clumps) and reports its own CPU, how
late it sent, and the server's scheduling-group niceness."""

from __future__ import annotations

import asyncio
import os

import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from loadtests.drills import actions
from tests.libs.service.conftest import serve_in_thread


def test_the_generator_runs_on_uvloop():
    async def which() -> type:
        return type(asyncio.get_running_loop())

    assert actions.run_on_uvloop(which()) is uvloop.Loop


def test_the_overload_reports_its_cpu_and_lateness_for_every_arrival():
    seen: list[bool] = []

    async def shed(request: Request) -> JSONResponse:
        seen.append((await request.json())["stream"])
        body = {"error": {"message": "overloaded"}}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})

    app = Starlette(routes=[Route("/v1/completions", shed, methods=["POST"])])
    with serve_in_thread(app) as base:
        out = actions.run_on_uvloop(actions._overload(base, 40.0, 0.25, 4, None))
    assert out["n"] == 10 == len(out["late_s"]) == len(out["results"]) == len(seen)
    assert all(late >= 0 for late in out["late_s"])
    assert out["cpu_s"] >= 0
    assert {status for _, status, *_ in out["results"]} == {503}
    assert all(retry for *_, retry in out["results"])
    assert seen == [True, False] * 5  # half interactive streams, half batch


def test_a_groups_niceness_is_read_from_proc_or_none():
    assert actions._autogroup_nice(None) is None
    assert actions._autogroup_nice(2**22 + 12345) is None  # no such process
    mine = actions._autogroup_nice(os.getpid())
    assert mine is None or -20 <= mine <= 19  # None where the kernel has no autogroup
