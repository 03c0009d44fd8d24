"""Where page events go (format: docs/formats/page-event.schema.json).

- JSONL file:   `--pages-to pages.jsonl` (one event per line, flushed per event);
- HTTP POST:    `--pages-to http://127.0.0.1:8082/v1/pages` (batched as {"events": [...]});
- Redis stream: `--pages-to redis://127.0.0.1:6379/0` (XADD pg:pages event=<json> id=<event id>).

HTTP and Redis go through a durable, bounded outbox (`OutboxSink`): `emit` commits the event
to SQLite and returns; a delivery loop sends the oldest events in batches and deletes them only
once the transport acknowledged them, retrying with capped exponential backoff for as long as
the transport fails. Events left in the outbox by a killed or stopped process are sent by the
next one. A full outbox makes `emit` wait (the crawl slows down; nothing is dropped); only an
event the receiver refuses as invalid (HTTP 4xx other than 408/429) is dropped, and counted in
crawler_events_lost_total.

Delivery is at-least-once, made exactly-once per event id at the receiver: the id is the
crawl id plus a digest of the final URL (`event_id`). The Redis transport adds an entry only if
its id was not added before (one Lua script: SET NX of pg:pages:ids:<id>, then XADD), so a send
that timed out but did reach Redis, or a resend after a crash between send and delete, adds
nothing. The dedup worker indexes per URL, so an HTTP resend is not counted twice either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from services.crawler import metrics
from services.crawler.storage import is_disk_full
from services.crawler.store import url_key
from services.crawler.store_sqlite import SQLiteOutbox

log = logging.getLogger("services.crawler.sinks")
STREAM_KEY = "pg:pages"
ID_KEY_PREFIX = "pg:pages:ids:"  # + event id: the stream entry id it was added as
DEFAULT_OUTBOX_ROWS = 50_000  # page events (with their text): tens of MB to a few hundred on disk


class PageSink(Protocol):
    async def emit(self, event: dict[str, Any]) -> None: ...
    async def close(self) -> None: ...


def event_id(event: dict[str, Any]) -> str:
    """Stable id of a page event: the same page of the same crawl always gets the same id."""
    return f"{event.get('crawl_id', '')}:{url_key(str(event['final_url'])).hex()}"


class TransientSendError(Exception):
    """The batch may be delivered later: keep it and retry."""


class RejectedError(Exception):
    """The receiver refused the batch as invalid: retrying it cannot help."""


class Transport(Protocol):
    async def send(self, items: Sequence[tuple[str, str]]) -> None:
        """Deliver (event id, event JSON) pairs; return only once all are acknowledged."""

    async def close(self) -> None: ...


class JsonlSink:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")

    async def emit(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"
        start = self._fh.tell()
        try:
            self._fh.write(line)
            self._fh.flush()
        except OSError:
            # A full disk: cut the partial line off and reopen, so the same emit can be tried again.
            with contextlib.suppress(OSError):
                self._fh.close()
            with contextlib.suppress(OSError):
                os.truncate(self.path, start)
            self._fh = self.path.open("a", encoding="utf-8")
            raise
        metrics.PAGES_EMITTED.inc()

    async def close(self) -> None:
        self._fh.close()


class HttpTransport:
    """POST {"events": [...]} to the dedup worker (which indexes per URL: resends are harmless)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def send(self, items: Sequence[tuple[str, str]]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        body = '{"events":[' + ",".join(b for _, b in items) + "]}"
        try:
            async with self._session.post(
                self.url, data=body.encode("utf-8"), headers={"Content-Type": "application/json"}
            ) as resp:
                if resp.status < 300:
                    return
                text = (await resp.text())[:300]
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientSendError(f"{type(exc).__name__}: {exc}") from None
        if 400 <= resp.status < 500 and resp.status not in (408, 429):
            raise RejectedError(f"HTTP {resp.status}: {text}")
        raise TransientSendError(f"HTTP {resp.status}: {text}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


# KEYS[1] stream; ARGV: maxlen, id-key TTL seconds, key prefix, then (event id, body) pairs.
# An id seen before is skipped, so the stream holds each event once however often it is sent.
_XADD_ONCE = """
local added = 0
for i = 4, #ARGV, 2 do
  local idkey = ARGV[3] .. ARGV[i]
  if redis.call('EXISTS', idkey) == 0 then
    local entry = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                             'event', ARGV[i + 1], 'id', ARGV[i])
    redis.call('SET', idkey, entry, 'EX', ARGV[2])
    added = added + 1
  end
end
return added
"""


class RedisTransport:
    def __init__(
        self,
        url: str,
        *,
        stream: str = STREAM_KEY,
        maxlen: int = 1_000_000,
        id_ttl: int = 6 * 3600,
        timeout: float = 5.0,
    ) -> None:
        import redis.asyncio as aioredis

        # id_ttl: how long an event id is remembered (about 130 bytes of Redis memory each): a
        # resend later than that adds a second entry, which dedup still indexes once (per URL).
        # Timeouts matter: a stopped (SIGSTOP) Redis accepts connections and never answers.
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._script = self._redis.register_script(_XADD_ONCE)
        self.stream = stream
        self.maxlen = maxlen
        self.id_ttl = id_ttl
        self.added = 0  # entries actually appended (a resend of a known id adds none)

    async def send(self, items: Sequence[tuple[str, str]]) -> None:
        args: list[str | int] = [self.maxlen, self.id_ttl, ID_KEY_PREFIX]
        for eid, body in items:
            args += [eid, body]
        try:
            self.added += int(await self._script(keys=[self.stream], args=args))
        except Exception as exc:  # redis.exceptions.* or OSError: the batch stays in the outbox
            raise TransientSendError(f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        await self._redis.aclose()


class OutboxSink:
    """Durable bounded outbox in front of a transport (see the module docstring)."""

    def __init__(
        self,
        transport: Transport,
        outbox: SQLiteOutbox,
        *,
        max_events: int = DEFAULT_OUTBOX_ROWS,
        batch_size: int = 100,
        backoff_min: float = 0.1,
        backoff_max: float = 5.0,
        drain_timeout: float = 5.0,
    ) -> None:
        self.transport = transport
        self.outbox = outbox
        self.max_events = max_events
        self.batch_size = batch_size
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.drain_timeout = drain_timeout
        self.delivered = 0
        self.lost = 0
        self.failures = 0  # failed send attempts
        self._wake = asyncio.Event()  # an event was put, or close() was called
        self._room = asyncio.Event()  # the outbox is below its bound
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        metrics.EVENTS_BUFFER_CAPACITY.set(max_events)
        self._update()

    def _update(self) -> None:
        n = len(self.outbox)
        metrics.EVENTS_BUFFERED.set(n)
        if n < self.max_events:
            self._room.set()
        else:
            self._room.clear()

    def start(self) -> None:
        """Start the delivery loop (emit starts it too): events a previous process left are sent."""
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._deliver(), name="page-outbox")

    async def emit(self, event: dict[str, Any]) -> None:
        self.start()
        if len(self.outbox) >= self.max_events and not self._closing:
            metrics.OUTBOX_WAITS.inc()
            log.warning("page outbox full (%d events): the crawl waits for the sink", len(self.outbox))
            while len(self.outbox) >= self.max_events and not self._closing:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), timeout=1.0)
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        # Committed before the page is marked finished: a crash in between refetches the page
        # and puts the same id again (a no-op while it waits, deduplicated downstream after).
        self.outbox.put(event_id(event), body, time.time())
        metrics.PAGES_EMITTED.inc()
        self._update()
        self._wake.set()

    async def _deliver(self) -> None:
        backoff = self.backoff_min
        while True:
            rows = self.outbox.peek(self.batch_size)
            if not rows:
                if self._closing:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                continue
            try:
                await self._send(rows)
            except Exception as exc:  # TransientSendError, or the outbox itself (disk full...)
                self.failures += 1
                metrics.SINK_ERRORS.inc(len(rows))
                if is_disk_full(exc):  # deleting sent rows needs room too: they are sent again
                    metrics.STORAGE_ERRORS.labels("disk_full").inc()
                log.warning(
                    "page sink failed (%s); %d events kept, retry in %.1fs", exc, len(self.outbox), backoff
                )
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(self.backoff_max, backoff * 2)
                continue
            backoff = self.backoff_min
            self._update()

    async def _send(self, rows: list[tuple[int, str, str]]) -> None:
        """Send a batch; delete what was acknowledged or refused. A refused batch is split to
        find the refused events, so one bad event does not take its neighbours with it."""
        try:
            await self.transport.send([(eid, body) for _, eid, body in rows])
        except RejectedError as exc:
            if len(rows) > 1:
                mid = len(rows) // 2
                await self._send(rows[:mid])
                await self._send(rows[mid:])
                return
            self.lost += 1
            metrics.EVENTS_LOST.inc()
            log.error("page event %s refused by the sink, dropped: %s", rows[0][1], exc)
            self.outbox.delete([rows[0][0]])
            return
        self.outbox.delete([seq for seq, _, _ in rows])
        self.delivered += len(rows)
        metrics.EVENTS_DELIVERED.inc(len(rows))

    async def close(self) -> None:
        """Try to deliver what is waiting for up to drain_timeout; the rest stays in the outbox
        for the next process."""
        self._closing = True
        self._wake.set()
        self._room.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=self.drain_timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
                log.warning("page sink closed with %d events left in the outbox", len(self.outbox))
            except Exception:
                log.exception("page outbox delivery loop failed")
        await self.transport.close()
        self.outbox.close()


def open_sink(
    spec: str | None, *, outbox: str | Path | None = None, max_events: int = DEFAULT_OUTBOX_ROWS
) -> PageSink | None:
    """`spec` is a redis:// or http(s):// URL, or a file path; empty means no sink. Redis and
    HTTP sinks keep their undelivered events in the SQLite file `outbox` (a table of its own,
    so it may be the crawl store); without one they are kept in memory only."""
    if not spec:
        return None
    transport: Transport
    if spec.startswith(("redis://", "rediss://", "unix://")):
        transport = RedisTransport(spec)
    elif spec.startswith(("http://", "https://")):
        transport = HttpTransport(spec)
    else:
        return JsonlSink(spec)
    return OutboxSink(transport, SQLiteOutbox(outbox or ":memory:"), max_events=max_events)
