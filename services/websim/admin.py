"""Admin API, served for Host admin.sim.test and any name outside .sim.test (never logged).

    GET  /                 index of these endpoints
    GET  /log              request log as JSON lines; ?since=SEQ&host=NAME
    POST /log/clear        empty the log
    POST /reset            empty the log and the transient-page attempt counters
    GET  /faults           {"faults": [...]}
    POST /faults           {"host": "*"|name, "error_rate": 0..1, "latency_ms": ms, "drop_rate": 0..1,
                            "status": 429|500|502|503|504 (default 500), "retry_after": s (429/503 only)}
                           (all zero removes that host's faults)
    DELETE /faults         remove all faults
    GET  /truth            ?seed=URL (repeat) or ?n=N (first N hosts), &ua=, &max_depth=, &max_pages=
    GET  /judge            ?min_delay=S&tolerance=S&ua=  counts of robots/politeness violations,
                           duplicate fetches and pages fetched, from the log
    GET  /hosts            every host's policy; GET /hosts/{host}: one, with its pages
    GET  /metrics, /healthz, /readyz

Bad input answers 400 {"error": {"type", "message", "field"}}.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from services.websim.faults import FaultError, fault_from_json
from services.websim.metrics import metrics_handler
from services.websim.requestlog import RequestLog
from services.websim.truth import TrapReachable

if TYPE_CHECKING:
    from services.websim.sim import WebSim

ENDPOINTS = [
    "GET /log",
    "POST /log/clear",
    "POST /reset",
    "GET /faults",
    "POST /faults",
    "DELETE /faults",
    "GET /truth",
    "GET /judge",
    "GET /hosts",
    "GET /hosts/{host}",
    "GET /metrics",
    "GET /healthz",
    "GET /readyz",
]


def error(status: int, type_: str, message: str, field: str | None = None) -> web.Response:
    return web.json_response({"error": {"type": type_, "message": message, "field": field}}, status=status)


def _int_param(request: web.Request, name: str, default: int | None = None, minimum: int = 0) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadParam(name, f"expected an integer, got {raw!r}") from None
    if value < minimum:
        raise _BadParam(name, f"must be >= {minimum}, got {value}")
    return value


def _float_param(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _BadParam(name, f"expected a number, got {raw!r}") from None
    if not value >= 0:
        raise _BadParam(name, f"must be >= 0, got {raw}")
    return value


class _BadParam(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


async def dispatch(sim: WebSim, request: web.Request) -> web.StreamResponse:
    try:
        return await _route(sim, request)
    except _BadParam as exc:
        return error(400, "invalid_request", str(exc), f"query.{exc.field}")


async def _route(sim: WebSim, request: web.Request) -> web.StreamResponse:
    path, method = request.path, request.method
    if path == "/metrics" and method == "GET":
        return await metrics_handler(request)
    if path in ("/healthz", "/readyz") and method == "GET":
        return web.json_response({"status": "ok"})
    if path == "/" and method == "GET":
        return web.json_response(
            {"service": "websim", "hosts": sim.config.hosts, "seed": sim.config.seed, "endpoints": ENDPOINTS}
        )
    if path == "/log" and method == "GET":
        since = _int_param(request, "since", 0) or 0
        entries = sim.log.entries(since=since, host=request.query.get("host"))
        return web.Response(text=RequestLog.to_jsonl(entries), content_type="application/x-ndjson")
    if path == "/log/clear" and method == "POST":
        n = len(sim.log)
        sim.log.clear()
        return web.json_response({"cleared": n})
    if path == "/reset" and method == "POST":
        sim.reset()
        return web.json_response({"reset": True})
    if path == "/faults":
        return await _faults(sim, request)
    if path == "/truth" and method == "GET":
        return _truth(sim, request)
    if path == "/judge" and method == "GET":
        return web.json_response(
            sim.judge(
                min_delay=_float_param(request, "min_delay", 0.0),
                tolerance=_float_param(request, "tolerance", 0.005),
                user_agent=request.query.get("ua") or sim.default_user_agent,
            )
        )
    if path == "/hosts" and method == "GET":
        return web.json_response({"hosts": [sim.host_policy(h) for h in sim.web.hosts]})
    if path.startswith("/hosts/") and method == "GET":
        name = path.removeprefix("/hosts/").lower()
        if sim.web.host(name) is None:
            return error(404, "not_found", f"no such host: {name}", "path.host")
        return web.json_response({**sim.host_policy(name), "pages": sim.host_pages(name)})
    if path in (
        "/",
        "/log",
        "/log/clear",
        "/reset",
        "/truth",
        "/judge",
        "/hosts",
        "/metrics",
        "/healthz",
        "/readyz",
    ):
        return error(405, "method_not_allowed", f"{method} not allowed on {path}")
    return error(404, "not_found", f"no admin endpoint {path}; see GET /")


async def _faults(sim: WebSim, request: web.Request) -> web.Response:
    if request.method == "GET":
        return web.json_response({"faults": [f.to_json() for f in sim.faults.all()]})
    if request.method == "DELETE":
        sim.faults.clear()
        return web.json_response({"faults": []})
    if request.method != "POST":
        return error(405, "method_not_allowed", f"{request.method} not allowed on /faults")
    try:
        body: Any = json.loads(await request.text() or "null")
    except json.JSONDecodeError as exc:
        return error(400, "invalid_json", f"body is not JSON: {exc.msg}", "body")
    try:
        fault = fault_from_json(body)
    except FaultError as exc:
        return error(400, "invalid_request", str(exc), f"body.{exc.field}" if exc.field != "body" else "body")
    sim.faults.set(fault)
    return web.json_response({"faults": [f.to_json() for f in sim.faults.all()]})


def _truth(sim: WebSim, request: web.Request) -> web.Response:
    seeds = request.query.getall("seed", [])
    n = _int_param(request, "n", None, minimum=1)
    if n is not None:
        seeds = [*seeds, *sim.seeds(n)]
    if not seeds:
        return error(400, "invalid_request", "give seed=URL (repeatable) or n=N", "query.seed")
    ua = request.query.get("ua") or sim.default_user_agent
    try:
        ids = sim.ground_truth(
            seeds,
            user_agent=ua,
            max_depth=_int_param(request, "max_depth"),
            max_pages=_int_param(request, "max_pages", minimum=1),
        )
    except TrapReachable as exc:
        return error(400, "unbounded", str(exc), "query.max_depth")
    return web.json_response({"count": len(ids), "page_ids": sorted(ids)})
