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
