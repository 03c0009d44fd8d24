"""Benchmark what libs.service adds per request and per span, side by side in one run.

    .venv/bin/python benchmarks/bench_service.py [--runs 5] [--requests 3000] [--spans 20000]
                                                 [--json reports/bench_service.json]

Groups (each row: median over --runs timed runs after one warm-up run, min-max spread, ratio
to the group's reference, and the extra cost per operation against that reference):

* request: GET /items/{id} answered with a small JSON body, driven in-process through the ASGI
  interface (no sockets, so the figures are the framework's and middleware's own cost):
  - bare FastAPI (reference),
  - create_app: request-id + metrics + error middleware (pure ASGI) and a JSON access line
    (written to /dev/null here), and the same with access_log=False,
  - peer: the same request-id and metrics work done the common way, as two Starlette
    BaseHTTPMiddleware classes on bare FastAPI.
* span: a root span with one child (two records) per operation:
  - SpanLog disabled (path None) (reference: what a service pays when spans are off),
  - SpanLog to a file (one os.write per record, O_APPEND),
  - peer: the same two records as JSON through stdlib logging to a FileHandler.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi import FastAPI, Request, Response
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from libs.service.app import create_app
from libs.service.logging import configure_logging, request_id_var
from libs.service.metrics import http_metrics
from libs.service.spans import SpanLog


@dataclass
class Row:
    group: str
    impl: str
    ops: int
    median_ops_s: float
    min_ops_s: float
    max_ops_s: float
    ratio: float = 1.0
    extra_us: float = 0.0  # added cost per operation against the reference, microseconds
    reference: str = ""


def add_item_route(app: FastAPI) -> FastAPI:
    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict:
        return {"id": item_id, "ok": True}

    return app


def peer_app() -> FastAPI:
    """Request id + metrics the way many services do it: BaseHTTPMiddleware."""
    app = FastAPI()
    metrics = http_metrics()

    class RequestId(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            rid = request.headers.get("x-request-id") or uuid.uuid4().hex
            token = request_id_var.set(rid)
            try:
                response = await call_next(request)
            finally:
                request_id_var.reset(token)
            response.headers["x-request-id"] = rid
            return response

    class Metrics(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            started = time.perf_counter()
            response = await call_next(request)
            route = getattr(request.scope.get("route"), "path", "<unmatched>")
            metrics.observe(
                "peer", request.method, route, response.status_code, time.perf_counter() - started
            )
            return response

    app.add_middleware(Metrics)
    app.add_middleware(RequestId)
    return add_item_route(app)


def run_app(loop: asyncio.AbstractEventLoop, app: Callable[..., Any], n: int) -> None:
    loop.run_until_complete(drive(app, n))


async def drive(app: Callable[..., Any], n: int) -> None:
    body = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict:
        return body

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"unexpected status {message['status']}")

    for i in range(n):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": f"/items/{i}",
            "raw_path": f"/items/{i}".encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"bench")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        await app(scope, receive, send)


def interleaved(impls: dict[str, Callable[[], None]], n: int, runs: int) -> list[tuple[str, list[float]]]:
    """Warm each up, then time them round-robin: on a shared machine a load swing hits every
    implementation alike instead of whichever happened to run during it."""
    for run in impls.values():
        run()
    rates: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(runs):
        for name, run in impls.items():
            t0 = time.perf_counter()
            run()
            rates[name].append(n / (time.perf_counter() - t0))
    return list(rates.items())


def bench_requests(n: int, runs: int) -> list[tuple[str, list[float]]]:
    apps = {
        "bare FastAPI": add_item_route(FastAPI()),
        "create_app": add_item_route(create_app("bench")),
        "create_app, access_log=False": add_item_route(create_app("bench-quiet", access_log=False)),
        "peer: BaseHTTPMiddleware x2": peer_app(),
    }
    loop = asyncio.new_event_loop()
    try:
        runs_by_name: dict[str, Callable[[], None]] = {
            name: functools.partial(run_app, loop, app, n) for name, app in apps.items()
        }
        return interleaved(runs_by_name, n, runs)
    finally:
        loop.close()


def bench_spans(n: int, runs: int, tmp: Path) -> list[tuple[str, list[float]]]:
    disabled = SpanLog(None, "bench")
    enabled = SpanLog(tmp / "spans.jsonl", "bench")
    peer_logger = logging.getLogger("bench.spans.peer")
    peer_logger.propagate = False
    handler = logging.FileHandler(tmp / "peer.jsonl")
    handler.setFormatter(logging.Formatter("%(message)s"))
    peer_logger.addHandler(handler)
    peer_logger.setLevel(logging.INFO)

    def with_log(log: SpanLog) -> Callable[[], None]:
        def run() -> None:
            for i in range(n):
                with log.span("outer", i=i), log.span("inner", host="h1.sim.test"):
                    pass

        return run

    def peer() -> None:
        for i in range(n):
            t_outer = time.time()
            t0 = time.perf_counter()
            t_inner = time.time()
            t1 = time.perf_counter()
            peer_logger.info(
                json.dumps(
                    {
                        "ts": t_inner,
                        "dur": time.perf_counter() - t1,
                        "name": "inner",
                        "service": "bench",
                        "attrs": {"host": "h1.sim.test"},
                    }
                )
            )
            peer_logger.info(
                json.dumps(
                    {
                        "ts": t_outer,
                        "dur": time.perf_counter() - t0,
                        "name": "outer",
                        "service": "bench",
                        "attrs": {"i": i},
                    }
                )
            )

    out = interleaved(
        {
            "SpanLog disabled (path None)": with_log(disabled),
            "SpanLog to file": with_log(enabled),
            "peer: stdlib logging FileHandler": peer,
        },
        n,
        runs,
    )
    enabled.close()
    handler.close()
    return out


def rows_for(group: str, results: list[tuple[str, list[float]]], n: int) -> list[Row]:
    ref_name, ref_rates = results[0]
    ref = statistics.median(ref_rates)
    rows = []
    for name, rates in results:
        med = statistics.median(rates)
        rows.append(
            Row(group, name, n, med, min(rates), max(rates), med / ref, (1 / med - 1 / ref) * 1e6, ref_name)
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--spans", type=int, default=20000)
    parser.add_argument("--json", type=Path, default=Path("reports/bench_service.json"))
    args = parser.parse_args()

    with open(os.devnull, "w") as devnull, tempfile.TemporaryDirectory() as tmp:
        configure_logging("bench", "INFO", stream=devnull)  # access lines are formatted, then dropped
        print(f"request group: {args.requests} requests x {args.runs} runs ...", file=sys.stderr)
        rows = rows_for("request", bench_requests(args.requests, args.runs), args.requests)
        print(f"span group: {args.spans} span pairs x {args.runs} runs ...", file=sys.stderr)
        rows += rows_for("span", bench_spans(args.spans, args.runs, Path(tmp)), args.spans)

    cols = [f"{'group':8}", f"{'implementation':34}", f"{'median ops/s':>13}", f"{'min-max':>19}"]
    header = " ".join([*cols, f"{'ratio':>6}", f"{'extra/op':>10}"])
    print(header)
    print("-" * len(header))
    for r in rows:
        spread = f"{r.min_ops_s:,.0f}-{r.max_ops_s:,.0f}"
        print(
            f"{r.group:8} {r.impl:34} {r.median_ops_s:13,.0f} {spread:>19} {r.ratio:6.2f} {r.extra_us:8.1f}us"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "runs": args.runs,
                "rows": [asdict(r) for r in rows],
            },
            indent=2,
        )
    )
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
