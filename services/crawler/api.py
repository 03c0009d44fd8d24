"""Control API (FastAPI): start crawls, watch them, pause/resume/cancel, per-host view.

    POST /v1/crawls                       body: CrawlConfig -> 201 {crawl status}
    GET  /v1/crawls                       all crawls of this process
    GET  /v1/crawls/{crawl_id}            status: state, URL counts, stats, pages/s
    POST /v1/crawls/{crawl_id}/pause      stop dispatching (in-flight requests finish)
    POST /v1/crawls/{crawl_id}/resume
    POST /v1/crawls/{crawl_id}/cancel     stop; the store keeps everything for a later resume
    GET  /v1/crawls/{crawl_id}/hosts      per-host politeness view (delay, rate, robots, URL counts)
    GET  /v1/crawls/{crawl_id}/hosts/{host}
    GET  /v1/workers                      workers and partition owners (with --redis)
Docs at /docs (OpenAPI at /openapi.json); bad input -> 422 naming the field.
Each crawl has its own SQLite store under data_dir, so a crawl id started again resumes it.
Politeness belongs to the host: every crawl of this process shares one slot per host.

With --redis URL the process runs no crawl itself: POST registers the crawl in Redis, where the
workers (`python -m services.crawler worker --redis URL`) run it over their host partitions;
GET shows its state and URL counts (from Redis counters, per partition too), cancel asks the
workers to stop, and /v1/workers lists every live worker and each partition's owner and epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import Field

from libs.service.app import ApiError, create_app
from libs.service.cli import UsageError
from libs.service.health import Health
from libs.service.logging import configure_logging, get_logger
from libs.service.server import serve
from libs.service.settings import ServiceSettings, load_settings
from libs.service.spans import SpanLog
from services.crawler.engine import Crawl
from services.crawler.opener import open_crawl, parse_resolve, run_to_end, sqlite_store
from services.crawler.partitions import cluster_view
from services.crawler.politeness import HostSlot
from services.crawler.settings import CrawlConfig
from services.crawler.sinks import OutboxSink, PageSink, open_sink
from services.crawler.store import NewURL
from services.crawler.store_redis import (
    RedisStore,
    connect,
    crawl_key,
    crawl_state,
    redis_crawl_status,
    redis_host_view,
    register_crawl,
)
from services.crawler.store_redis import list_crawls as redis_crawls
from services.crawler.urlnorm import host_of, normalize

log = get_logger("services.crawler.api")
_CRAWL_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class CrawlerSettings(ServiceSettings):
    """The control API process (python -m services.crawler)."""

    host: str = Field("127.0.0.1", description="address the control API listens on")
    port: int = Field(8081, description="port the control API listens on")
    data_dir: str = Field("data/crawler", description="crawl stores and WARC files go here")
    resolve: list[str] = Field(
        default_factory=list,
        description="resolver map 'PATTERN=IP:PORT' (curl --resolve style), e.g. '*.sim.test=127.0.0.1:8090'",
    )
    allow_private: bool = Field(False, description="allow private/loopback targets outside the resolver map")
    pages_to: str = Field("", description="page event sink: redis://..., http(s)://..., or a .jsonl path")
    warc: bool = Field(True, description="write WARC files under data_dir/warc")
    bloom_capacity: int | None = Field(
        None, description="Bloom filter sized for this many URLs in front of each crawl's exact URL set"
    )
    redis: str = Field(
        "", description="redis://... : crawls are registered there and run by `worker` processes"
    )


@dataclass
class _Running:
    crawl: Crawl
    task: asyncio.Task[None] | None = None
    final: dict[str, Any] | None = None  # status taken just before the store was closed
    final_hosts: dict[str, dict[str, Any]] | None = None  # host views taken at the same moment


def _check_crawl_id(crawl_id: str) -> str:
    if not _CRAWL_ID.match(crawl_id):
        raise ApiError(422, "invalid_request", "crawl_id: 1-64 of A-Z a-z 0-9 _ . -", field="crawl_id")
    return crawl_id


class CrawlManager:
    def __init__(self, settings: CrawlerSettings) -> None:
        self.settings = settings
        self.rules = parse_resolve(settings.resolve)
        self.crawls: dict[str, _Running] = {}
        self.host_slots: dict[str, HostSlot] = {}  # politeness per host, shared by every crawl
        self.redis: Any = None
        if settings.redis:
            self.redis = connect(settings.redis)
        self._sink: PageSink | None = None
        self.spans = SpanLog(settings.span_log, "crawler")

    def _get(self, crawl_id: str) -> _Running:
        running = self.crawls.get(crawl_id)
        if running is None:
            raise ApiError(404, "not_found", f"no crawl {crawl_id!r}", field="crawl_id")
        return running

    def status(self, crawl_id: str) -> dict[str, Any]:
        if self.redis is not None and crawl_id not in self.crawls:
            status = redis_crawl_status(self.redis, crawl_id)
            if status is None:
                raise ApiError(404, "not_found", f"no crawl {crawl_id!r}", field="crawl_id")
            return status
        running = self._get(crawl_id)
        return running.final if running.final is not None else running.crawl.status()

    def start_on_redis(self, config: CrawlConfig, crawl_id: str | None) -> dict[str, Any]:
        """Register the crawl in Redis; the workers run it."""
        crawl_id = _check_crawl_id(crawl_id or uuid.uuid4().hex[:12])
        if crawl_state(self.redis, crawl_id) == "running":
            raise ApiError(409, "conflict", f"crawl {crawl_id!r} is running", field="crawl_id")
        seeds = [NewURL(u, host_of(u), 0) for u in (normalize(s) for s in config.seeds)]
        try:
            register_crawl(
                self.redis,
                crawl_id,
                config.model_dump_json(),
                seeds,
                config.max_depth,
                bloom_capacity=self.settings.bloom_capacity,
            )
        except ValueError as exc:  # resumed with a Bloom filter it did not start with
            raise ApiError(409, "conflict", str(exc), field="crawl_id") from None
        status = redis_crawl_status(self.redis, crawl_id)
        assert status is not None
        return status

    async def start(self, config: CrawlConfig, crawl_id: str | None) -> Crawl:
        crawl_id = _check_crawl_id(crawl_id or uuid.uuid4().hex[:12])
        if crawl_id in self.crawls and not self.crawls[crawl_id].crawl.done:
            raise ApiError(409, "conflict", f"crawl {crawl_id!r} is running", field="crawl_id")
        self.open_sink()
        data = Path(self.settings.data_dir)
        store = sqlite_store(data / f"{crawl_id}.sqlite", config, bloom_capacity=self.settings.bloom_capacity)
        crawl = open_crawl(
            crawl_id,
            config,
            store,
            rules=self.rules,
            allow_private=self.settings.allow_private,
            warc_dir=data / "warc" if self.settings.warc else None,
            sink=self._sink,
            spans=self.spans,
            host_slots=self.host_slots,
        )
        running = _Running(crawl)

        def ended(crawl: Crawl) -> None:
            running.final = crawl.status()
            try:
                running.final_hosts = {h["host"]: h for h in crawl.hosts_view()}
            except Exception:  # the status matters more than the host views: never lose it
                log.exception("crawl %s: host views at the end could not be taken", crawl_id)
                running.final_hosts = {}
            log.info("crawl %s ended: %s", crawl_id, crawl.state.value)

        running.task = asyncio.create_task(run_to_end(crawl, on_end=ended))
        self.crawls[crawl_id] = running
        return crawl

    def open_sink(self) -> PageSink | None:
        """Open the page sink once per process; its outbox (data_dir/outbox.sqlite) holds the
        events not yet delivered, including a previous process's, which it starts sending now."""
        if self._sink is None and self.settings.pages_to:
            outbox = Path(self.settings.data_dir) / "outbox.sqlite"
            self._sink = open_sink(self.settings.pages_to, outbox=outbox)
            if isinstance(self._sink, OutboxSink):
                self._sink.start()
        return self._sink

    async def shutdown(self) -> None:
        for running in self.crawls.values():
            running.crawl.cancel()
        await asyncio.gather(*(r.task for r in self.crawls.values() if r.task), return_exceptions=True)
        if self._sink is not None:
            await self._sink.close()


def build_app(settings: CrawlerSettings, health: Health | None = None) -> tuple[FastAPI, CrawlManager]:
    health = health or Health(ready=True)
    manager = CrawlManager(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager.open_sink()  # sends what a previous (killed) process left in the outbox
        yield

    app = create_app(
        "crawler",
        title="Crawler",
        version="0.1.0",
        health=health,
        description="Polite crawler control API (ProvingGroundBot)",
        lifespan=lifespan,
    )

    @app.post("/v1/crawls", status_code=201, summary="Start (or resume) a crawl")
    async def start_crawl(config: CrawlConfig, crawl_id: str | None = None) -> dict[str, Any]:
        if manager.redis is not None:
            return manager.start_on_redis(config, crawl_id)
        crawl = await manager.start(config, crawl_id)
        return crawl.status()

    @app.get("/v1/crawls", summary="All crawls of this process")
    async def list_crawls() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {"crawl_id": cid, "state": r.crawl.state.value} for cid, r in manager.crawls.items()
        ]
        if manager.redis is not None:
            out += [
                {"crawl_id": cid, "state": crawl_state(manager.redis, cid)}
                for cid in redis_crawls(manager.redis)
            ]
        return out

    @app.get("/v1/workers", summary="Live workers and every partition's owner and epoch (Redis)")
    async def workers() -> dict[str, Any]:
        if manager.redis is None:
            raise ApiError(404, "not_found", "no --redis: this process runs its crawls alone", field="redis")
        return cluster_view(manager.redis)

    @app.get("/v1/crawls/{crawl_id}", summary="Status of one crawl")
    async def get_crawl(crawl_id: str) -> dict[str, Any]:
        return manager.status(crawl_id)

    @app.post("/v1/crawls/{crawl_id}/pause", summary="Stop dispatching; in-flight requests finish")
    async def pause(crawl_id: str) -> dict[str, Any]:
        crawl = manager._get(crawl_id).crawl
        crawl.pause()
        return {"crawl_id": crawl_id, "state": crawl.state.value}

    @app.post("/v1/crawls/{crawl_id}/resume", summary="Resume a paused crawl")
    async def resume(crawl_id: str) -> dict[str, Any]:
        crawl = manager._get(crawl_id).crawl
        crawl.resume()
        return {"crawl_id": crawl_id, "state": crawl.state.value}

    @app.post("/v1/crawls/{crawl_id}/cancel", summary="Cancel; the store keeps the work done")
    async def cancel(crawl_id: str) -> dict[str, Any]:
        if manager.redis is not None and crawl_id not in manager.crawls:
            state = crawl_state(manager.redis, crawl_id)
            if state is None:
                raise ApiError(404, "not_found", f"no crawl {crawl_id!r}", field="crawl_id")
            if state == "running":
                manager.redis.hset(crawl_key(crawl_id, "meta"), "state", "cancelled")
            return {"crawl_id": crawl_id, "state": crawl_state(manager.redis, crawl_id)}
        running = manager._get(crawl_id)
        running.crawl.cancel()
        if running.task is not None:
            await asyncio.shield(running.task)
        return {"crawl_id": crawl_id, "state": running.crawl.state.value}

    # A crawl that has ended answers with its host views as they were when it ended (taken just
    # before its store closed): a finished crawl's politeness record is still worth reading.
    @app.get("/v1/crawls/{crawl_id}/hosts", summary="Per-host politeness view")
    async def hosts(crawl_id: str) -> list[dict[str, Any]]:
        if manager.redis is not None and crawl_id not in manager.crawls:
            manager.status(crawl_id)  # 404 for an unknown crawl
            views = (
                redis_host_view(manager.redis, crawl_id, h)
                for h in RedisStore(manager.redis, crawl_id).hosts()
            )
            return [v for v in views if v is not None]
        running = manager._get(crawl_id)
        if running.final_hosts is not None:
            return list(running.final_hosts.values())
        return running.crawl.hosts_view()

    @app.get("/v1/crawls/{crawl_id}/hosts/{host}", summary="One host's politeness state")
    async def host(crawl_id: str, host: str) -> dict[str, Any]:
        if manager.redis is not None and crawl_id not in manager.crawls:
            manager.status(crawl_id)  # 404 for an unknown crawl
            view = redis_host_view(manager.redis, crawl_id, host)
            if view is None:
                raise ApiError(404, "not_found", f"host {host!r} not seen in this crawl", field="host")
            return view
        running = manager._get(crawl_id)
        views = running.final_hosts
        if host not in (views if views is not None else running.crawl.frontier.seen):
            raise ApiError(404, "not_found", f"host {host!r} not seen in this crawl", field="host")
        return views[host] if views is not None else running.crawl.host_view(host)

    app.state.crawls = manager
    return app, manager


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(
        CrawlerSettings, argv, env_prefix="PG_CRAWLER_", prog="python -m services.crawler"
    )
    try:
        parse_resolve(settings.resolve)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(service="crawler", level=settings.log_level)
    health = Health(ready=True)
    app, manager = build_app(settings, health)
    return serve(app, settings.host, settings.port, health=health, on_shutdown=[manager.shutdown])
