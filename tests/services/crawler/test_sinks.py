"""Page-event sinks against real servers: Redis stream pg:pages and an HTTP endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from aiohttp import web

from services.crawler.sinks import STREAM_KEY, HttpTransport, OutboxSink, open_sink

SCHEMA = json.loads(Path("docs/formats/page-event.schema.json").read_text())


def _event(i: int) -> dict[str, Any]:
    return {
        "crawl_id": "t",
        "url": f"http://h.sim.test/{i}",
        "final_url": f"http://h.sim.test/{i}",
        "status": 200,
        "content_type": "text/html",
        "content_sha256": f"{i:064x}",
        "text": "hello",
        "links": [],
        "canonical": None,
        "fetched_at": 1.0,
        "warc_file": None,
    }


async def test_redis_sink_appends_to_the_stream(redis_url: str) -> None:
    import redis.asyncio as aioredis

    sink = open_sink(redis_url)
    assert isinstance(sink, OutboxSink)
    for i in range(5):
        await sink.emit(_event(i))
    await sink.close()
    client = aioredis.Redis.from_url(redis_url)
    entries = await client.xrange(STREAM_KEY)
    await client.aclose()
    assert len(entries) == 5
    events = [json.loads(fields[b"event"]) for _, fields in entries]
    assert [e["url"] for e in events] == [f"http://h.sim.test/{i}" for i in range(5)]
    for e in events:
        jsonschema.validate(e, SCHEMA)


async def test_http_sink_batches_and_retries_server_errors() -> None:
    received: list[dict[str, Any]] = []
    calls = {"n": 0}

    async def pages(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return web.Response(status=503)  # first batch fails once, then is re-sent
        body = await request.json()
        received.extend(body["events"])
        return web.json_response({"accepted": len(body["events"])})

    app = web.Application()
    app.router.add_post("/v1/pages", pages)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        sink = open_sink(f"http://127.0.0.1:{port}/v1/pages")
        assert isinstance(sink, OutboxSink) and isinstance(sink.transport, HttpTransport)
        sink.batch_size = 4
        for i in range(10):
            await sink.emit(_event(i))
        await sink.close()
    finally:
        await runner.cleanup()
    assert sorted(e["url"] for e in received) == sorted(f"http://h.sim.test/{i}" for i in range(10))


async def test_http_sink_keeps_events_while_dedup_is_unreachable_and_drops_only_refused_ones(
    tmp_path: Path,
) -> None:
    """Nothing listens at first (crawler->dedup partition): events wait in the outbox. Then the
    receiver comes up; it refuses one event as invalid (422): that one is dropped and counted,
    every other one is delivered once."""
    import asyncio

    from services.crawler import metrics
    from tests.conftest import free_port

    received: list[str] = []

    async def pages(request: web.Request) -> web.Response:
        events = (await request.json())["events"]
        if any(e["url"].endswith("/7") for e in events):
            return web.json_response({"error": {"field": "body.events.0.url"}}, status=422)
        received.extend(e["url"] for e in events)
        return web.json_response({"accepted": len(events)})

    port = free_port()
    sink = open_sink(f"http://127.0.0.1:{port}/v1/pages", outbox=tmp_path / "outbox.sqlite")
    assert isinstance(sink, OutboxSink)
    sink.backoff_max = 0.2
    lost0 = metrics.EVENTS_LOST._value.get()
    for i in range(20):
        await sink.emit(_event(i))
    deadline = asyncio.get_running_loop().time() + 30
    while sink.failures < 2:
        assert asyncio.get_running_loop().time() < deadline, "no failed send while unreachable"
        await asyncio.sleep(0.02)
    assert len(sink.outbox) == 20
    app = web.Application()
    app.router.add_post("/v1/pages", pages)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        while len(sink.outbox):
            assert asyncio.get_running_loop().time() < deadline + 30, "outbox not drained"
            await asyncio.sleep(0.02)
        await sink.close()
    finally:
        await runner.cleanup()
    assert sorted(received) == sorted(f"http://h.sim.test/{i}" for i in range(20) if i != 7)
    assert sink.lost == 1 and metrics.EVENTS_LOST._value.get() == lost0 + 1
