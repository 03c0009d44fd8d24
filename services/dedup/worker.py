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
Scan jobs (files/jobs.py) call `files.scanner.run_scan`, the very function that
`python -m services.dedup scan` calls.

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
import os
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Header, Query, Request
from pydantic import Field, ValidationError

from libs.service.app import ApiError, create_app
from libs.service.health import Health
from libs.service.logging import configure_logging, get_logger
from libs.service.settings import ServiceSettings, load_settings
from services.dedup import metrics
from services.dedup.files.jobs import ScanJobs, ScanRequest
from services.dedup.pages.neardup import METHODS, NearConfig, PageIndex
from services.dedup.pages.pagestore import PageStore
from services.dedup.pages.service import (
    CLUSTER_URLS_SHOWN,
    PageBatch,
    PageEvent,
    StreamConsumer,
    _pages_request_body,
    ingest,
    list_clusters,
)

log = get_logger("services.dedup.worker")

STREAM = "pg:pages"
GROUP = "dedup"
CLUSTERS_PAGE_MAX = 500  # most clusters in one GET /v1/clusters page
DEV_API_KEY_SHA256 = "8e791c9767dbf0fbd2205cecd2e3e5fa098621064a900d0220914cb740b92d9f"  # "dev-dedup-key"


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


def _first_error_field(exc: ValidationError, prefix: str) -> str:
    loc = exc.errors()[0]["loc"] if exc.errors() else ()
    return ".".join([prefix, *(str(x) for x in loc)])


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


__all__ = ["METHODS", "DedupSettings", "PageEvent", "ScanRequest", "build_app", "ingest", "main"]
