"""HTTP metrics scraped from a real /metrics endpoint and parsed with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import threading
import uuid

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from prometheus_client import Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from libs.service.app import create_app
from libs.service.metrics import (
    aiohttp_metrics_middleware,
    counter,
    gauge,
    histogram,
    instrument_fastapi,
    metrics_handler,
)
from tests.libs.service.conftest import serve_in_thread


def scrape(text: str, service: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels without service): value} for one service's HTTP samples."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("service") == service and s.name.startswith("http_"):
                labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "service"))
                samples[(s.name, labels)] = s.value
    return samples


def total(samples: dict, method: str, route: str, status: str) -> float:
    return samples.get(
        ("http_requests_total", (("method", method), ("route", route), ("status", status))), 0.0
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def fastapi_app(service: str, gate: threading.Event) -> FastAPI:
    app = create_app(service)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict:
        return {"id": item_id}

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("x")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def body():
            yield b"first "
            while not gate.is_set():  # held open until the test has scraped mid-stream
                await asyncio.sleep(0.01)
            yield b"last"

        return StreamingResponse(body(), media_type="text/plain")

    return app


def test_fastapi_counts_by_route_template_method_and_status() -> None:
    service = unique("fa")
    with serve_in_thread(fastapi_app(service, threading.Event())) as url, httpx.Client(base_url=url) as c:
        for i in range(5):
            assert c.get(f"/items/{i}").status_code == 200
        assert c.get("/items/not-an-int").status_code == 422
        assert c.get("/boom").status_code == 500
        assert c.post("/items/1").status_code == 405
        assert c.request("PURGE", "/items/1").status_code == 405
        for _ in range(30):  # scanners: every random path lands in one series
            assert c.get(f"/{uuid.uuid4().hex}").status_code == 404
        m = scrape(c.get("/metrics").text, service)
    assert total(m, "GET", "/items/{item_id}", "200") == 5
    assert total(m, "GET", "/items/{item_id}", "422") == 1
    assert total(m, "GET", "/boom", "500") == 1
    assert total(m, "POST", "/items/{item_id}", "405") == 1
    assert total(m, "OTHER", "/items/{item_id}", "405") == 1
    assert total(m, "GET", "<unmatched>", "404") == 30
    routes = {dict(labels)["route"] for (name, labels) in m if name == "http_requests_total"}
    assert routes == {"/items/{item_id}", "/boom", "<unmatched>"}  # no raw paths, ever
    count = ("http_request_duration_seconds_count", (("method", "GET"), ("route", "/items/{item_id}")))
    assert m[count] == 6
    inf_bucket = (
        "http_request_duration_seconds_bucket",
        (("le", "+Inf"), ("method", "GET"), ("route", "/items/{item_id}")),
    )
    assert m[inf_bucket] == 6


def test_streaming_response_is_measured_to_its_last_byte() -> None:
    service = unique("stream")
    gate = threading.Event()
    with serve_in_thread(fastapi_app(service, gate)) as url, httpx.Client(base_url=url, timeout=10) as c:
        with c.stream("GET", "/stream") as response:
            chunks = response.iter_bytes()
            first = next(chunks)
            assert first.startswith(b"first")
            during = scrape(httpx.get(f"{url}/metrics").text, service)
            gate.set()
            rest = b"".join(chunks)
        assert (first + rest).endswith(b"last")
        after = scrape(c.get("/metrics").text, service)
    in_flight = ("http_requests_in_flight", ())
    # while the body is still flowing, the stream is in flight (plus the scrape itself) and uncounted
    assert during[in_flight] == 2
    assert total(during, "GET", "/stream", "200") == 0
    assert total(after, "GET", "/stream", "200") == 1
    assert after[in_flight] == 1  # only the scrape


def test_instrumenting_twice_and_two_apps_do_not_raise() -> None:
    service = unique("twice")
    app = create_app(service)
    instrument_fastapi(app, service)  # already instrumented by create_app: no-op
    other = FastAPI()
    instrument_fastapi(other, service)
    with serve_in_thread(app) as ua, serve_in_thread(other) as ub:
        httpx.get(f"{ua}/healthz")
        httpx.get(f"{ub}/metrics")
        m = scrape(httpx.get(f"{ua}/metrics").text, service)
    assert total(m, "GET", "/healthz", "200") == 1  # counted once, not once per middleware
    assert total(m, "GET", "/metrics", "200") == 1


def test_metric_helpers_get_or_create_and_refuse_a_different_shape() -> None:
    name = "pg_test_" + uuid.uuid4().hex[:8]
    c1 = counter(f"{name}_total", "doc", ["a"])
    assert counter(f"{name}_total", "doc", ["a"]) is c1 and isinstance(c1, Counter)
    h1 = histogram(f"{name}_seconds", "doc")
    assert histogram(f"{name}_seconds", "doc") is h1 and isinstance(h1, Histogram)
    with pytest.raises(ValueError, match="already registered as Counter"):
        gauge(f"{name}_total", "doc", ["a"])
    with pytest.raises(ValueError, match=r"\['a'\]"):
        counter(f"{name}_total", "doc", ["b"])


async def test_aiohttp_middleware_and_metrics_handler() -> None:
    service = unique("aio")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=request.match_info["page_id"])

    async def teapot(request: web.Request) -> web.Response:
        raise web.HTTPTooManyRequests()

    async def crash(request: web.Request) -> web.Response:
        raise RuntimeError("x")

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(3):
            await response.write(b"chunk")
        await response.write_eof()
        return response

    app = web.Application(middlewares=[aiohttp_metrics_middleware(service)])
    app.router.add_get("/pages/{page_id}", page)
    app.router.add_get("/limited", teapot)
    app.router.add_get("/crash", crash)
    app.router.add_get("/stream", stream)
    app.router.add_get("/metrics", metrics_handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=10) as c:
            for i in range(4):
                assert (await c.get(f"/pages/p{i}")).text == f"p{i}"
            assert (await c.get("/limited")).status_code == 429
            assert (await c.get("/crash")).status_code == 500
            assert (await c.get("/stream")).content == b"chunk" * 3
            for _ in range(10):
                assert (await c.get(f"/x/{uuid.uuid4().hex}")).status_code == 404
            r = await c.get("/metrics")
            assert r.headers["content-type"].startswith("text/plain")
            m = scrape(r.text, service)
    finally:
        await server.close()
    assert total(m, "GET", "/pages/{page_id}", "200") == 4
    assert total(m, "GET", "/limited", "429") == 1
    assert total(m, "GET", "/crash", "500") == 1
    assert total(m, "GET", "/stream", "200") == 1
    assert total(m, "GET", "<unmatched>", "404") == 10
    assert m[("http_requests_in_flight", ())] == 1  # the scrape
    count = ("http_request_duration_seconds_count", (("method", "GET"), ("route", "/pages/{page_id}")))
    assert m[count] == 4


def test_mounted_sub_app_routes_keep_their_prefix_and_template() -> None:
    service = unique("mnt")
    app = create_app(service)
    sub = FastAPI()

    @sub.get("/items/{item_id}")
    async def item(item_id: int) -> dict:
        return {"id": item_id}

    app.mount("/sub", sub)
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as c:
        assert c.get("/sub/items/3").status_code == 200
        assert c.get("/sub/items/4").status_code == 200
        assert c.get("/sub/nothing").status_code == 404
        m = scrape(c.get("/metrics").text, service)
    assert total(m, "GET", "/sub/items/{item_id}", "200") == 2
    assert total(m, "GET", "<unmatched>", "404") == 1
