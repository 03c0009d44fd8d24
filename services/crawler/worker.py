"""`python -m services.crawler worker --redis URL`: one of several workers running crawls over Redis.

A worker joins the service's partitions (partitions.py): it heartbeats, takes its fair share of
host partitions under fenced leases, and runs every crawl registered in Redis (by the control
API or `register_crawl`) over the hosts of the partitions it owns. Politeness slots are shared
by all crawls of the worker, and every request passes the host's shared record in Redis, so
workers, crawls and failovers never ask a host sooner than it allows. A crawl ends when its
counters in Redis say nothing is left; the first worker to see it marks it finished.

SIGTERM/SIGINT: stop dispatching, let in-flight requests finish, release the partitions at once
(the others adopt them without waiting for a lease to run out), print a JSON summary, exit 0.
Exit codes: 0 stopped, 1 Redis unreachable, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from libs.service.cli import ArgumentParser, UsageError
from libs.service.logging import configure_logging
from services.crawler.engine import Crawl, CrawlState, new_owner_id
from services.crawler.opener import add_resolver_args, open_crawl, parse_resolve, run_to_end
from services.crawler.partitions import DEFAULT_PARTITIONS, MAX_PARTITIONS, PartitionManager
from services.crawler.politeness import HostSlot
from services.crawler.settings import CrawlConfig
from services.crawler.sinks import PageSink, open_sink
from services.crawler.store_redis import RedisStore, connect, crawl_key, crawl_state, list_crawls

log = logging.getLogger("services.crawler.worker")
_DISCOVER_EVERY = 0.25
_RETRY_FAILED_AFTER = 5.0  # a crawl that failed here (e.g. Redis away too long) is taken up again


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m services.crawler worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--redis",
        required=True,
        metavar="URL",
        help="redis://host:port/db of the crawl state, or redis-cluster://host:port for a Redis Cluster",
    )
    p.add_argument("--worker-id", default=None, help="name in the worker set (default host-pid-random)")
    p.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help="host partitions of the service (the first worker's value wins; others read it back)",
    )
    p.add_argument(
        "--partition-lease",
        type=float,
        default=5.0,
        help="seconds a partition lease lasts unless renewed (a dead worker's hosts wait this long)",
    )
    add_resolver_args(p)
    p.add_argument("--data-dir", default="data/crawler", help="WARC files and the page outbox go here")
    p.add_argument("--warc", action="store_true", help="write WARC files under data-dir/warc")
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics here (0: off)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics endpoint")
    return p


class Worker:
    def __init__(self, args: argparse.Namespace, client: Any) -> None:
        self.args = args
        self.redis = client
        self.worker_id = args.worker_id or new_owner_id()
        self.rules = parse_resolve(args.resolve)
        self.mgr = PartitionManager(
            client, self.worker_id, partitions=args.partitions, lease_seconds=args.partition_lease
        )
        self.host_slots: dict[str, HostSlot] = {}  # shared by every crawl of this worker
        self.crawls: dict[str, Crawl] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.done: dict[str, dict[str, Any]] = {}
        self._started: dict[str, str] = {}  # crawl id -> created_at of the registration run here
        self._retry_at: dict[str, float] = {}  # crawl id -> monotonic time to try a failed crawl again
        self.stopping = asyncio.Event()
        self._stop_ticker = threading.Event()
        self.sink: PageSink | None = None

    def _ticker(self) -> None:
        """Heartbeat and partition leases, on a thread of their own: a busy event loop (parsing,
        a slow store call) does not cost the worker its partitions. A frozen process (SIGSTOP)
        stops this thread too, and then fencing makes its late writes harmless."""
        interval = self.args.partition_lease / 3
        last = time.monotonic()
        # At a fixed rate from each tick's start: a slow tick (a starved process, a Cluster's
        # round trips) does not push the next renewal later by its own length.
        while not self._stop_ticker.wait(max(0.0, last + interval - time.monotonic())):
            last = time.monotonic()
            try:
                self.mgr.tick()
            except Exception:
                log.warning("worker %s: partition tick failed", self.worker_id, exc_info=True)

    def _start_crawl(self, crawl_id: str) -> None:
        raw = self.redis.hget(crawl_key(crawl_id, "meta"), "config")
        if raw is None:
            return
        config = CrawlConfig.model_validate_json(raw)
        self._started[crawl_id] = str(self.redis.hget(crawl_key(crawl_id, "meta"), "created_at"))
        store = RedisStore(self.redis, crawl_id, self.mgr)
        data = Path(self.args.data_dir)
        if self.sink is None and self.args.pages_to:
            self.sink = open_sink(self.args.pages_to, outbox=data / f"outbox-{self.worker_id}.sqlite")
        crawl = open_crawl(
            crawl_id,
            config,
            store,
            rules=self.rules,
            allow_private=self.args.allow_private,
            warc_dir=data / "warc" if self.args.warc else None,
            warc_name=f"{crawl_id}-{self.worker_id}",
            sink=self.sink,
            owner=self.worker_id,
            host_slots=self.host_slots,
        )
        self.crawls[crawl_id] = crawl
        self.tasks[crawl_id] = asyncio.create_task(self._run(crawl), name=f"crawl-{crawl_id}")

    async def _run(self, crawl: Crawl) -> None:
        await run_to_end(crawl, on_end=self._ended)
        if crawl.state is CrawlState.FINISHED:
            self.redis.hset(crawl_key(crawl.crawl_id, "meta"), "state", "finished")

    def _ended(self, crawl: Crawl) -> None:
        crawl_id = crawl.crawl_id
        self.done[crawl_id] = {
            "state": crawl.state.value,
            "stats": crawl.stats.as_dict(),
            # requests the host's shared record held back (another worker or crawl asked it)
            "held_back": crawl.stats.politeness_waits,
            # requests the server may have counted twice (store_redis.RedisStore.answers_lost)
            "answers_lost": getattr(crawl.store, "answers_lost", 0),
            "unanswered_retries": getattr(crawl.store, "unanswered_retries", 0),
        }
        if crawl.state is CrawlState.FAILED:
            log.error("worker %s: crawl %s failed here: %s", self.worker_id, crawl_id, crawl.error)
            self._retry_at[crawl_id] = time.monotonic() + _RETRY_FAILED_AFTER
        self.crawls.pop(crawl_id, None)

    def _wanted(self, crawl_id: str) -> bool:
        """A running crawl not run here yet, registered again since (resumed), or failed here a
        while ago (its state is in Redis: taking it up again loses nothing)."""
        if crawl_id not in self.done:
            return True
        if self.done[crawl_id]["state"] == CrawlState.FAILED.value:
            return time.monotonic() >= self._retry_at.get(crawl_id, 0.0)
        created = str(self.redis.hget(crawl_key(crawl_id, "meta"), "created_at"))
        return created != self._started.get(crawl_id)

    async def _discover(self) -> None:
        while not self.stopping.is_set():
            try:
                for crawl_id in list_crawls(self.redis):
                    state = crawl_state(self.redis, crawl_id)
                    if state == "running" and crawl_id not in self.crawls and self._wanted(crawl_id):
                        self._start_crawl(crawl_id)
                    elif state in ("cancelled", "finished") and crawl_id in self.crawls:
                        self.crawls[crawl_id].cancel()
            except Exception:
                log.warning("worker %s: crawl discovery failed", self.worker_id, exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=_DISCOVER_EVERY)

    async def run(self) -> dict[str, Any]:
        self.mgr.tick()  # take a share before the first crawl starts
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        ticker = threading.Thread(target=self._ticker, name="partition-ticker", daemon=True)
        ticker.start()
        discover = asyncio.create_task(self._discover())
        await self.stopping.wait()
        for crawl in list(self.crawls.values()):
            crawl.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        discover.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await discover
        self._stop_ticker.set()
        await asyncio.to_thread(ticker.join)
        self.mgr.leave()
        if self.sink is not None:
            await self.sink.close()
        return {
            "worker": self.worker_id,
            "crawls": self.done,
            "partitions_adopted": self.mgr.adopted,
            "partitions_resumed": self.mgr.resumed,  # renewed late, the lease still ours (same epoch)
            "fenced_refusals": self.mgr.fenced_refusals,
        }


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if not 1 <= args.partitions <= MAX_PARTITIONS:
            raise UsageError(f"--partitions: must be 1..{MAX_PARTITIONS}, got {args.partitions}")
        if not 0 <= args.metrics_port <= 65535:
            raise UsageError(f"--metrics-port: must be 0..65535, got {args.metrics_port}")
        if args.partition_lease <= 0:
            raise UsageError(f"--partition-lease: must be > 0, got {args.partition_lease}")
        if not args.redis.startswith(("redis://", "rediss://", "unix://", "redis-cluster://")):
            raise UsageError(
                f"--redis: expected redis://host:port/db or redis-cluster://host:port, got {args.redis!r}"
            )
        parse_resolve(args.resolve)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(service="crawler", level=args.log_level)
    import redis

    try:
        client = connect(args.redis)
        client.ping()
    except (redis.RedisError, OSError) as exc:
        print(f"error: --redis: {args.redis} unreachable: {exc}", file=sys.stderr)
        return 1
    if args.metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(args.metrics_port, addr=args.metrics_host)
        except OSError as exc:
            print(f"error: --metrics-port {args.metrics_port}: {exc}", file=sys.stderr)
            return 1
    summary = asyncio.run(Worker(args, client).run())
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(summary, sort_keys=True))
    return 0
