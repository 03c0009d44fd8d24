"""instrument_aiohttp on a real aiohttp test server: request ids, health, metrics."""

from __future__ import annotations

import uuid

import httpx
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from libs.service.aiohttp_app import instrument_aiohttp
from libs.service.health import Health
from libs.service.logging import get_logger, request_id_var

seen: list[str | None] = []


async def page(request: web.Request) -> web.Response:
    seen.append(request_id_var.get())
    get_logger("tests.aio").info("page")
    return web.Response(text="ok")


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"a")
    await response.write_eof()
    return response


async def missing(request: web.Request) -> web.Response:
    raise web.HTTPNotFound()


async def test_request_ids_health_and_metrics() -> None:
    service = f"aio-{uuid.uuid4().hex[:8]}"
    app = web.Application()
    app.router.add_get("/p/{name}", page)
    app.router.add_get("/stream", stream)
    app.router.add_get("/missing", missing)
    health = instrument_aiohttp(app, service, health=Health())
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with httpx.AsyncClient(base_url=str(server.make_url("")), timeout=10) as c:
            r = await c.get("/p/x", headers={"X-Request-ID": "given-1"})
            assert r.headers["x-request-id"] == "given-1" and seen[-1] == "given-1"
            r = await c.get("/p/y", headers={"X-Request-ID": "bad id!"})
            assert len(r.headers["x-request-id"]) == 32 and seen[-1] == r.headers["x-request-id"]
            assert len((await c.get("/stream")).headers["x-request-id"]) == 32  # prepared by the handler
            assert len((await c.get("/missing")).headers["x-request-id"]) == 32  # raised HTTPException
            assert (await c.get("/healthz")).status_code == 200
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["ready"] is False
            health.set_ready(True)
            assert (await c.get("/readyz")).status_code == 200
            health.add_check("db", lambda: False)
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["checks"]["db"]["ok"] is False
            text = (await c.get("/metrics")).text
    finally:
        await server.close()
    counts = {
        (s.labels["route"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "http_requests_total" and s.labels["service"] == service
    }
    assert counts[("/p/{name}", "200")] == 2
    assert counts[("/stream", "200")] == 1
    assert counts[("/missing", "404")] == 1
    assert counts[("/readyz", "503")] == 2 and counts[("/readyz", "200")] == 1
