"""Where page events go (format: docs/formats/page-event.schema.json).

- JSONL file:   `--pages-to pages.jsonl` (one event per line, flushed per event);
- HTTP POST:    `--pages-to http://127.0.0.1:8082/v1/pages` (batched as {"events": [...]});
- Redis stream: `--pages-to redis://127.0.0.1:6379/0` (XADD pg:pages event=<json>).

A sink that cannot deliver counts the loss in crawler_sink_errors_total and never stops the crawl:
the page is already in the store and the WARC file.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from services.crawler import metrics

log = logging.getLogger("services.crawler.sinks")
STREAM_KEY = "pg:pages"


class PageSink(Protocol):
    async def emit(self, event: dict[str, Any]) -> None: ...
    async def close(self) -> None: ...


class JsonlSink:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")

    async def emit(self, event: dict[str, Any]) -> None:
        self._fh.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._fh.flush()
        metrics.PAGES_EMITTED.inc()

    async def close(self) -> None:
        self._fh.close()


class HttpSink:
    """Batches events and POSTs them; a failed batch is retried a few times, then counted as lost."""

    def __init__(
        self, url: str, *, batch_size: int = 50, flush_interval: float = 0.5, attempts: int = 3
    ) -> None:
        self.url = url
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.attempts = attempts
        self._batch: list[dict[str, Any]] = []
        self._session: aiohttp.ClientSession | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def emit(self, event: dict[str, Any]) -> None:
        self._batch.append(event)
        if len(self._batch) >= self.batch_size:
            await self._flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.flush_interval, self._flush_soon)

    def _flush_soon(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self._flush())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch = self._batch, []
        if not batch:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        for attempt in range(self.attempts):
            try:
                async with self._session.post(self.url, json={"events": batch}) as resp:
                    if resp.status < 300:
                        metrics.PAGES_EMITTED.inc(len(batch))
                        return
                    log.warning("page sink %s answered %s", self.url, resp.status)
                    if resp.status < 500 and resp.status != 429:
                        break
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("page sink %s failed: %s", self.url, exc)
            await asyncio.sleep(0.2 * 2**attempt)
        metrics.SINK_ERRORS.inc(len(batch))

    async def close(self) -> None:
        await self._flush()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


class RedisSink:
    def __init__(self, url: str, *, stream: str = STREAM_KEY, maxlen: int = 1_000_000) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(url)
        self.stream = stream
        self.maxlen = maxlen

    async def emit(self, event: dict[str, Any]) -> None:
        try:
            await self._redis.xadd(
                self.stream,
                {"event": json.dumps(event, ensure_ascii=False)},
                maxlen=self.maxlen,
                approximate=True,
            )
            metrics.PAGES_EMITTED.inc()
        except Exception as exc:  # redis.exceptions.* or OSError: counted, crawl goes on
            log.warning("redis sink failed: %s", exc)
            metrics.SINK_ERRORS.inc()

    async def close(self) -> None:
        await self._redis.aclose()


def open_sink(spec: str | None) -> PageSink | None:
    """`spec` is a redis:// or http(s):// URL, or a file path; empty means no sink."""
    if not spec:
        return None
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisSink(spec)
    if spec.startswith(("http://", "https://")):
        return HttpSink(spec)
    return JsonlSink(spec)
