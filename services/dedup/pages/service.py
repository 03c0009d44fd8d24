"""The page flow of the worker: the page event model (docs/formats/page-event.schema.json),
indexing a batch (`ingest`, durable before it returns), the Redis stream consumer group reader
and the cluster listing of `GET /v1/clusters`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from libs.service.heartbeat import Heartbeat
from libs.service.logging import get_logger
from services.dedup import metrics
from services.dedup.pages.neardup import PageIndex
from services.dedup.pages.pagestore import PageStore

log = get_logger("services.dedup.worker")

CLUSTER_URLS_SHOWN = 20  # URLs listed per cluster in GET /v1/clusters; ?url=<one of them> gives every member


class StreamSettings(Protocol):
    """What the consumer reads of the worker's settings (DedupSettings)."""

    redis: str | None
    stream: str
    group: str
    consumer: str
    claim_idle_ms: int


class PageEvent(BaseModel):
    """One fetched page, exactly as docs/formats/page-event.schema.json describes it (strict:
    "200" is not an integer there, so it is not one here either)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    crawl_id: str
    url: str = Field(min_length=1)
    final_url: str = Field(min_length=1)
    status: int
    content_type: str | None = None
    content_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    text: str | None = None
    links: list[str] | None = None
    canonical: str | None = None
    fetched_at: float
    warc_file: str | None = None


class PageBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[PageEvent]


def ingest(index: PageIndex, events: list[dict[str, Any]], store: PageStore | None) -> list[dict[str, Any]]:
    """Index a batch; new pages reach the durable log (fsynced) before this returns, so a
    caller that acknowledges afterwards never acknowledges a page a crash could lose."""
    out = []
    fresh = []
    for event in events:
        t0 = time.perf_counter()
        prepared = index.prepare(event)
        result = index.add(prepared)
        metrics.PAGE_SECONDS.observe(time.perf_counter() - t0)
        metrics.PAGES_SEEN.inc()
        if not result.new:
            metrics.PAGES_REDELIVERED.inc()
        else:
            fresh.append(prepared)
            if result.exact_of:
                metrics.EXACT.inc()
            elif result.near:
                metrics.NEAR.labels(method=result.near[0]["method"]).inc()
        out.append({"url": event["url"], "new": result.new, "exact_of": result.exact_of, "near": result.near})
    if store is not None:
        store.append(fresh)
    return out


class StreamConsumer:
    """Redis stream consumer group reader; at-least-once, acknowledged after indexing."""

    def __init__(self, settings: StreamSettings, index: PageIndex, store: PageStore | None) -> None:
        import redis.asyncio as aioredis

        assert settings.redis is not None
        self.settings = settings
        self.index = index
        self.store = store
        self.client = aioredis.from_url(settings.redis, decode_responses=False)
        self._stop = asyncio.Event()
        self.acked = 0
        self.invalid = 0
        self.errors = 0  # failed turns (Redis unreachable, group missing...)
        self.connected = False

    async def ensure_group(self) -> None:
        from redis.exceptions import ResponseError

        try:
            await self.client.xgroup_create(self.settings.stream, self.settings.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def _read(self, start: str, block: int | None = None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Up to 100 entries of our stream for our group from `start` ("0": our pending, ">": new)."""
        s = self.settings
        resp = await self.client.xreadgroup(s.group, s.consumer, {s.stream: start}, count=100, block=block)
        # The RESP2 reply (redis-py's default protocol): [[stream, entries]], empty when none came.
        streams = cast("list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]", resp or [])
        return streams[0][1] if streams else []

    async def _handle(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        s = self.settings
        events = []
        for entry_id, fields in entries:
            raw = fields.get(b"event")
            try:
                events.append(PageEvent.model_validate_json(raw or b"").model_dump(exclude_none=True))
            except ValidationError as exc:
                # A poison entry must not block the stream: count it, log it, acknowledge it.
                self.invalid += 1
                metrics.PAGES_INVALID.labels(source="redis").inc()
                log.warning("invalid page event", extra={"entry": entry_id.decode(), "error": str(exc)[:300]})
        if events:
            await asyncio.to_thread(ingest, self.index, events, self.store)
        # Acknowledged only now: indexed and (with --data-dir) durable.
        ids = [entry_id for entry_id, _ in entries]
        await self.client.xack(s.stream, s.group, *ids)
        self.acked += len(ids)
        metrics.STREAM_ACKED.inc(len(ids))

    async def _take_own_pending(self) -> None:
        """Our own pending entries first: a restart after a crash finishes what it had taken."""
        while not self._stop.is_set():
            entries = await self._read("0")
            if not entries:
                break
            await self._handle(entries)

    async def _update_backlog(self) -> None:
        s = self.settings
        for group in await self.client.xinfo_groups(s.stream):
            name = group.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == s.group:
                metrics.STREAM_PENDING.set(group.get("pending") or 0)
                lag = group.get("lag")
                if lag is not None:  # None: Redis cannot tell (entries deleted past the group)
                    metrics.STREAM_LAG.set(lag)

    def _set_connected(self, connected: bool) -> None:
        if connected and not self.connected:
            log.info("stream consumer connected", extra={"stream": self.settings.stream})
        self.connected = connected
        metrics.STREAM_CONNECTED.set(1 if connected else 0)

    async def run(self) -> None:
        """Every Redis call is inside the retry: a consumer started before Redis, or one whose
        Redis restarted (the group may be gone with it), sets itself up again and goes on.
        `connected` (readiness, dedup_stream_connected) says whether the last turn succeeded."""
        s = self.settings
        set_up = False
        last_claim = last_backlog = 0.0
        backoff = 0.2
        heartbeat = Heartbeat("dedup", "stream_consumer")
        try:
            while not self._stop.is_set():
                heartbeat.beat()  # every turn, at least each 0.5 s block or retry wait
                try:
                    if not set_up:
                        await self.ensure_group()
                        await self._take_own_pending()
                        set_up = True
                    if time.monotonic() - last_claim > s.claim_idle_ms / 1000 / 2:
                        last_claim = time.monotonic()
                        claimed = await self.client.xautoclaim(
                            s.stream,
                            s.group,
                            s.consumer,
                            min_idle_time=s.claim_idle_ms,
                            start_id="0-0",
                            count=100,
                        )
                        if claimed and claimed[1]:
                            await self._handle([e for e in claimed[1] if e[1] is not None])
                    entries = await self._read(">", block=500)
                    if entries:
                        await self._handle(entries)
                    if time.monotonic() - last_backlog > 2.0:
                        last_backlog = time.monotonic()
                        await self._update_backlog()
                    self._set_connected(True)
                    backoff = 0.2
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Redis gone, or restarted without our group: say so, retry
                    set_up = False
                    self.errors += 1
                    metrics.STREAM_ERRORS.inc()
                    log.warning(
                        "stream consumer turn failed; retrying",
                        extra={"error": repr(exc), "retry_in_s": backoff, "was_connected": self.connected},
                    )
                    self._set_connected(False)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), timeout=backoff)
                    backoff = min(5.0, backoff * 2)
        finally:
            self._set_connected(False)
            heartbeat.stop()

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        await self.client.aclose()


def list_clusters(index: PageIndex, limit: int, offset: int) -> dict[str, Any]:
    """One page of the clusters of 2+ pages, largest first (ties: by first URL, so pages are
    stable while nothing is indexed). Each cluster's URLs come oldest first."""
    every = sorted(index.clusters(), key=lambda urls: (-len(urls), urls[0]))
    out = []
    for urls in every[offset : offset + limit]:
        detail = index.cluster(urls[0])  # its id; the same members unless a page joined meanwhile
        members = [m["url"] for m in detail["members"]] if detail else urls
        out.append(
            {
                "cluster_id": detail["cluster_id"] if detail else None,
                "size": len(members),
                "urls": members[:CLUSTER_URLS_SHOWN],
            }
        )
    more = offset + limit < len(every)
    return {
        "total": len(every),
        "offset": offset,
        "limit": limit,
        "next_offset": offset + limit if more else None,
        "clusters": out,
    }


def _pages_request_body() -> dict[str, Any]:
    """The documented body of POST /v1/pages: an event, or a batch of them. Validation is done
    by hand (see post_pages) so that errors name `body.events.1.url`, not a union branch."""
    event = PageEvent.model_json_schema()
    batch = {
        "title": "PageBatch",
        "type": "object",
        "properties": {"events": {"type": "array", "items": event}},
        "required": ["events"],
        "additionalProperties": False,
    }
    return {"required": True, "content": {"application/json": {"schema": {"oneOf": [event, batch]}}}}
