"""The dedup worker: `python -m services.dedup worker` (FastAPI, default port 8082).

    POST /v1/pages           one page event (docs/formats/page-event.schema.json) or {"events": [...]}
    GET  /v1/clusters?url=   the duplicate cluster of a URL
    GET  /v1/clusters        every cluster of 2+ pages, largest first; ?limit=&offset= pages it
    GET  /v1/stats           index counters
    POST /v1/scans           a filesystem scan job under an allow-listed root (--scan-roots)
    GET  /v1/scans/{id}      its status and report
    + /metrics /healthz /readyz /docs from libs.service

Scan jobs read the worker's filesystem, so /v1/scans* take an API key, `Authorization: Bearer
<key>` (or `X-API-Key`), checked against `--api-keys-sha256` (SHA-256 hex digests; the dev
key is `dev-dedup-key`); a missing or unknown key is a 401 JSON error. A job walks only inside
`--scan-roots`: request paths are resolved (symlinks, `..`) before the containment test (403
naming `body.paths.N`), and the walk itself checks every directory it opens and every symlink
it follows against the roots (see walk.py), reporting an escaping link as an error entry.
The scan is `scanner.run_scan`, the very function `python -m services.dedup scan` calls.

With `--redis URL` it also consumes the stream `pg:pages` (field `event`) in the consumer
group `dedup`: entries are acknowledged only after they are indexed, a restarted consumer
first re-reads its own pending entries, and entries left pending by a dead consumer are
claimed after `--claim-idle-ms`. Indexing is idempotent per URL, so redelivery is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal, cast

from fastapi import Body, Depends, FastAPI, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from libs.service.app import ApiError, create_app
from libs.service.health import Health
from libs.service.heartbeat import Heartbeat
from libs.service.logging import configure_logging, get_logger
from libs.service.settings import ServiceSettings, load_settings
from services.dedup import metrics
from services.dedup.neardup import METHODS, NearConfig, PageIndex
from services.dedup.pagestore import PageStore
from services.dedup.scanner import ScanOptions

log = get_logger("services.dedup.worker")

STREAM = "pg:pages"
GROUP = "dedup"
CLUSTERS_PAGE_MAX = 500  # most clusters in one GET /v1/clusters page
CLUSTER_URLS_SHOWN = 20  # URLs listed per cluster there; ?url=<one of them> gives every member
DEV_API_KEY_SHA256 = "8e791c9767dbf0fbd2205cecd2e3e5fa098621064a900d0220914cb740b92d9f"  # "dev-dedup-key"
_SCAN_DEFAULTS = ScanOptions()  # the CLI's defaults too


class DedupSettings(ServiceSettings):
    port: int = Field(8082, description="TCP port to listen on (0 = any free port)")
    redis: str | None = Field(None, description="consume page events from this Redis (redis://host:port/db)")
    stream: str = Field(STREAM, description="Redis stream holding page events (field 'event')")
    group: str = Field(GROUP, description="Redis consumer group")
    consumer: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        description="consumer name in the group",
    )
    claim_idle_ms: int = Field(
        60_000, ge=1, description="claim entries another consumer left pending this long"
    )
    scan_roots: list[str] = Field(
        default_factory=list,
        description="directories scan jobs may read (comma-separated); none = scans refused",
    )
    api_keys_sha256: list[str] = Field(
        default_factory=lambda: [DEV_API_KEY_SHA256],
        description="SHA-256 (hex) of the API keys /v1/scans accepts (comma-separated; dev: dev-dedup-key)",
    )
    data_dir: str | None = Field(
        None,
        description="keep the page index (fingerprints only) and the scan hash cache here; none = memory",
    )
    scan_cache: str | None = Field(
        None, description="hash cache directory for scan jobs (default: DATA_DIR/hash-cache, else none)"
    )
    near_method: Literal["content", "simhash", "minhash", "both"] = Field(
        "content",
        description="near-duplicate detector: content = bigrams without the site's learned boilerplate",
    )
    content_threshold: float = Field(
        0.2, gt=0, le=1, description="content: min bigram Jaccard of two pages' content"
    )
    simhash_k: int = Field(8, ge=0, le=31, description="SimHash: max Hamming distance of near duplicates")
    minhash_threshold: float = Field(0.5, gt=0, le=1, description="MinHash: min estimated Jaccard similarity")
    max_batch: int = Field(1000, ge=1, description="most events accepted in one POST /v1/pages")


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


class ScanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[str] = Field(min_length=1, description="files or directories, each under an allowed root")
    algorithm: Literal["blake3", "xxh3-128", "sha256"] = _SCAN_DEFAULTS.algorithm  # type: ignore[assignment]
    min_size: int = Field(_SCAN_DEFAULTS.min_size, ge=0, description="smallest file; 0 includes empty files")
    max_size: int | None = Field(_SCAN_DEFAULTS.max_size, ge=0)
    follow_symlinks: bool = Field(
        _SCAN_DEFAULTS.follow_symlinks, description="follow symlinks that stay inside the scan roots"
    )
    one_file_system: bool = _SCAN_DEFAULTS.one_file_system
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    workers: int = Field(_SCAN_DEFAULTS.workers, ge=1, le=32)

    def options(self, roots: Sequence[str], cache_dir: str | None) -> ScanOptions:
        return ScanOptions(
            algorithm=self.algorithm,
            workers=self.workers,
            follow_symlinks=self.follow_symlinks,
            one_file_system=self.one_file_system,
            min_size=self.min_size,
            max_size=self.max_size,
            include=tuple(self.include),
            exclude=tuple(self.exclude),
            confine=tuple(roots),
            cache_dir=cache_dir,
        )


def _first_error_field(exc: ValidationError, prefix: str) -> str:
    loc = exc.errors()[0]["loc"] if exc.errors() else ()
    return ".".join([prefix, *(str(x) for x in loc)])


def _json_safe(obj: Any) -> Any:
    """A report whose strings are valid UTF-8: a name that is not keeps its exact bytes in
    `path_b64` and shows U+FFFD in `path` (lone surrogates cannot be sent as JSON text)."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return obj.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


class ScanJobs:
    """Scan jobs, one at a time on a worker thread (disk I/O is the bottleneck)."""

    def __init__(self, roots: Sequence[str], cache_dir: str | None) -> None:
        self.roots = [os.path.realpath(r) for r in roots]
        self.cache_dir = cache_dir
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dedup-scan")
        self._jobs: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def allowed(self, path: str) -> bool:
        real = os.path.realpath(path)  # symlinks and '..' resolved before the containment test
        return any(real == r or real.startswith(r.rstrip("/") + "/") for r in self.roots)

    def submit(self, req: ScanRequest) -> dict[str, Any]:
        if not self.roots:
            raise ApiError(403, "forbidden", "no scan roots configured (--scan-roots)", field="body.paths")
        for i, p in enumerate(req.paths):
            if not self.allowed(p):
                raise ApiError(
                    403, "forbidden", f"{p!r} is not under an allowed scan root", field=f"body.paths.{i}"
                )
            if not os.path.exists(p):
                raise ApiError(422, "invalid_request", f"{p!r} does not exist", field=f"body.paths.{i}")
        job_id = f"s{next(self._ids)}"
        job = {"id": job_id, "status": "queued", "paths": req.paths, "submitted_at": time.time()}
        with self._lock:
            self._jobs[job_id] = job
        self._pool.submit(self._run, job, req)
        return dict(job)

    def _run(self, job: dict[str, Any], req: ScanRequest) -> None:
        from services.dedup import report
        from services.dedup.scanner import run_scan

        job["status"] = "running"
        job["started_at"] = time.time()
        try:
            result = run_scan(req.paths, req.options(self.roots, self.cache_dir))
            for warning in result.warnings:
                log.warning("scan job warning", extra={"job": job["id"], "warning": warning})
            job["report"] = _json_safe(report.to_dict(result))
            job["status"] = "done"
            metrics.SCAN_BYTES.inc(result.bytes_read)
            metrics.SCAN_WASTED.set(result.wasted_bytes)
        except Exception as exc:  # a job failure is the job's status, never the worker's death
            log.exception("scan job failed", extra={"job": job["id"]})
            job["status"] = "failed"
            job["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            job["finished_at"] = time.time()
            metrics.SCANS.labels(status=job["status"]).inc()

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else dict(job)

    def count(self) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for j in self._jobs.values():
                out[j["status"]] = out.get(j["status"], 0) + 1
            return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


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

    def __init__(self, settings: DedupSettings, index: PageIndex, store: PageStore | None) -> None:
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


class ApiKeys:
    """The accepted API keys, by SHA-256; a key is compared with every digest (constant time)."""

    def __init__(self, digests: Sequence[str]) -> None:
        self.digests = [d.strip().lower() for d in digests if d.strip()]

    def check(self, authorization: str | None, x_api_key: str | None) -> None:
        key = x_api_key
        if not key and authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(
                    401,
                    "unauthorized",
                    "expected 'Authorization: Bearer <key>'",
                    field="header.authorization",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            key = token.strip()
        if not key:
            raise ApiError(
                401,
                "unauthorized",
                "missing API key (Authorization: Bearer <key>)",
                field="header.authorization",
                headers={"WWW-Authenticate": "Bearer"},
            )
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
        found = False
        for stored in self.digests:  # no early exit: the time does not depend on the position
            found |= hmac.compare_digest(stored, digest)
        if not found:
            raise ApiError(
                401,
                "unauthorized",
                "unknown API key",
                field="header.authorization",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )


def build_app(settings: DedupSettings, index: PageIndex | None = None) -> FastAPI:
    index = index or PageIndex(
        NearConfig(
            method=settings.near_method,
            simhash_k=settings.simhash_k,
            minhash_threshold=settings.minhash_threshold,
            content_threshold=settings.content_threshold,
        )
    )
    store = None
    if settings.data_dir:
        store = PageStore(os.path.join(settings.data_dir, "pages"))
        replayed = store.replay(index)
        log.info("page index restored", extra={"pages": replayed, "skipped_lines": store.skipped})
    scan_cache = settings.scan_cache
    if scan_cache is None and settings.data_dir:
        scan_cache = os.path.join(settings.data_dir, "hash-cache")
    jobs = ScanJobs(settings.scan_roots, scan_cache)
    keys = ApiKeys(settings.api_keys_sha256)

    def require_key(
        authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
        x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> None:
        keys.check(authorization, x_api_key)

    health = Health()
    consumer = StreamConsumer(settings, index, store) if settings.redis else None
    if consumer is not None:
        health.add_check("redis", consumer.ping)
        # Redis answering is not enough: the consumer must be reading (group set up, last turn ok).
        health.add_check("stream_consumer", lambda: consumer.connected)
    # Scraped from the index itself, however its pages arrived (HTTP, the stream, the replay).
    metrics.INDEX_PAGES.set_function(lambda: index.stats()["index_size"])
    metrics.CLUSTERS.set_function(lambda: index.stats()["clusters"])

    def _consumer_ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("stream consumer died", exc_info=task.exception())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        if consumer is not None:
            task = asyncio.create_task(consumer.run(), name="dedup-stream")
            task.add_done_callback(_consumer_ended)
        health.set_ready(True)
        try:
            yield
        finally:
            if task is not None and consumer is not None:
                consumer.stop()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                await consumer.close()
            jobs.close()
            if store is not None:
                store.close()

    app = create_app(
        "dedup",
        title="Dedup worker",
        version="0.1.0",
        health=health,
        description="Exact and near-duplicate detection for crawled pages; filesystem scan jobs.",
        lifespan=lifespan,
    )
    app.state.index = index
    app.state.jobs = jobs
    app.state.consumer = consumer

    @app.post(
        "/v1/pages",
        tags=["pages"],
        summary="Index one page event or a batch {'events': [...]}; returns what each duplicates",
        openapi_extra={"requestBody": _pages_request_body()},
    )
    def post_pages(
        payload: Annotated[
            dict[str, Any],
            Body(
                description="a page event (docs/formats/page-event.schema.json) or {'events': [event, ...]}",
                openapi_examples={
                    "one": {
                        "value": {
                            "crawl_id": "c1",
                            "url": "http://h0001.sim.test/a",
                            "final_url": "http://h0001.sim.test/a",
                            "status": 200,
                            "content_sha256": "0" * 64,
                            "text": "hello world",
                            "fetched_at": 1700000000.0,
                        }
                    }
                },
            ),
        ],
    ) -> dict[str, Any]:
        try:
            if "events" in payload:
                events = PageBatch.model_validate(payload).events
            else:
                events = [PageEvent.model_validate(payload)]
        except ValidationError as exc:
            metrics.PAGES_INVALID.labels(source="http").inc()
            raise ApiError(
                422, "invalid_request", exc.errors()[0]["msg"], field=_first_error_field(exc, "body")
            ) from None
        if len(events) > settings.max_batch:
            raise ApiError(
                413, "payload_too_large", f"at most {settings.max_batch} events per request", "body.events"
            )
        results = ingest(index, [e.model_dump(exclude_none=True) for e in events], store)
        return {"accepted": len(results), "results": results}

    @app.get(
        "/v1/clusters",
        tags=["pages"],
        summary="With ?url=: that page's duplicate cluster; without: every cluster, largest first",
        description=(
            "Without `url`, a page of the clusters of two or more pages, ordered by size (largest "
            "first) then by their first URL: `{total, offset, limit, next_offset, clusters: "
            f"[{{cluster_id, size, urls}}]}}`, with at most {CLUSTER_URLS_SHOWN} URLs per cluster "
            "(oldest first); `?url=` one of them for every member and the edges. "
            "`next_offset` is null on the last page."
        ),
    )
    def get_clusters(
        request: Request,
        url: Annotated[
            str | None, Query(min_length=1, description="page URL (as sent, or final URL): its cluster")
        ] = None,
        limit: Annotated[
            int, Query(ge=1, le=CLUSTERS_PAGE_MAX, description="clusters per page (list only)")
        ] = 50,
        offset: Annotated[int, Query(ge=0, description="clusters to skip (list only)")] = 0,
    ) -> dict:
        if url is not None:
            for name in ("limit", "offset"):
                if name in request.query_params:
                    raise ApiError(
                        422, "invalid_request", f"{name} pages the list; not with url", field=f"query.{name}"
                    )
            cluster = index.cluster(url)
            if cluster is None:
                raise ApiError(404, "not_found", f"no page indexed for {url!r}", field="query.url")
            return cluster
        return list_clusters(index, limit, offset)

    @app.get("/v1/stats", tags=["pages"], summary="Index and worker counters")
    def get_stats() -> dict[str, Any]:
        out: dict[str, Any] = {"index": index.stats(), "scans": jobs.count(), "scan_roots": jobs.roots}
        if consumer is not None:
            out["stream"] = {
                "stream": settings.stream,
                "group": settings.group,
                "consumer": settings.consumer,
                "acked": consumer.acked,
                "invalid": consumer.invalid,
                "connected": consumer.connected,
                "errors": consumer.errors,
            }
        return out

    @app.post(
        "/v1/scans",
        tags=["scans"],
        status_code=202,
        summary="Start a scan job under an allowed root (API key required)",
        dependencies=[Depends(require_key)],
    )
    def post_scan(req: ScanRequest) -> dict[str, Any]:
        return jobs.submit(req)

    @app.get(
        "/v1/scans/{scan_id}",
        tags=["scans"],
        summary="Status and report of a scan job (API key required)",
        dependencies=[Depends(require_key)],
    )
    def get_scan(scan_id: str) -> dict[str, Any]:
        job = jobs.get(scan_id)
        if job is None:
            raise ApiError(404, "not_found", f"no scan job {scan_id!r}", field="path.scan_id")
        return job

    return app


def main(argv: Sequence[str] | None = None) -> int:
    from libs.service.server import serve

    settings = load_settings(
        DedupSettings, argv, env_prefix="PG_DEDUP_", prog="python -m services.dedup worker"
    )
    configure_logging("dedup", settings.log_level)
    app = build_app(settings)
    log.info(
        "starting",
        extra={"port": settings.port, "redis": bool(settings.redis), "scan_roots": settings.scan_roots},
    )
    return serve(app, settings.host, settings.port, drain_timeout=settings.drain_timeout)


__all__ = ["METHODS", "DedupSettings", "PageEvent", "build_app", "main"]
