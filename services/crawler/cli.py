"""`python -m services.crawler crawl SEED...`: a one-shot crawl with a progress bar.

Running it again on the same --store resumes: finished URLs stay finished, URLs a killed run held
come back when their lease expires. Exit codes: 0 finished, 1 the crawl failed, 2 bad usage,
130 interrupted (Ctrl-C stops dispatching, lets in-flight requests finish, keeps the store).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from libs.service.cli import ArgumentParser, UsageError
from libs.service.logging import configure_logging
from libs.service.spans import SpanLog
from services.crawler.engine import Crawl, CrawlState
from services.crawler.opener import add_resolver_args, open_crawl, parse_resolve, run_to_end, sqlite_store
from services.crawler.settings import DEFAULT_MAX_DEPTH, DEFAULT_MAX_URLS_PER_PATTERN, USER_AGENT, CrawlConfig
from services.crawler.sinks import open_sink

# CrawlConfig field path -> the flag that sets it, so validation errors name what the user typed.
_FLAGS = {
    "seeds": "SEED",
    "scope": "--scope",
    "max_pages": "--max-pages",
    "max_depth": "--max-depth",
    "max_urls_per_pattern": "--max-urls-per-pattern",
    "max_pages_per_host": "--max-pages-per-host",
    "concurrency": "--concurrency",
    "user_agent": "--user-agent",
    "politeness.min_delay": "--min-delay",
    "politeness.max_in_flight_per_host": "--max-in-flight-per-host",
    "politeness.max_delay": "--max-host-delay",
    "lease_seconds": "--lease-seconds",
    "fetch.connect_timeout": "--connect-timeout",
    "fetch.read_timeout": "--read-timeout",
    "fetch.total_timeout": "--total-timeout",
    "fetch.max_body_bytes": "--max-body-bytes",
    "retry.max_attempts": "--max-attempts",
}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m services.crawler crawl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("seeds", nargs="+", metavar="SEED", help="absolute http(s) URL to start from")
    p.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="GLOB",
        help="host glob allowed, repeatable (default: the seeds' hosts)",
    )
    p.add_argument("--max-pages", type=int, default=10_000, help="stop after this many fetched URLs")
    p.add_argument(
        "--max-depth", type=int, default=DEFAULT_MAX_DEPTH, help="link hops from a seed (trap guard)"
    )
    p.add_argument(
        "--max-urls-per-pattern",
        type=int,
        default=DEFAULT_MAX_URLS_PER_PATTERN,
        help="distinct URLs per host and pattern, digits collapsed: /calendar/#/# (trap guard)",
    )
    p.add_argument("--max-pages-per-host", type=int, default=5_000, help="URLs admitted per host")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight across hosts")
    p.add_argument("--min-delay", type=float, default=1.0, help="minimum seconds between requests to a host")
    p.add_argument("--max-in-flight-per-host", type=int, default=1, help="concurrent requests per host")
    p.add_argument(
        "--max-host-delay",
        type=float,
        default=120.0,
        help="a host asking for a longer wait (Crawl-delay, Retry-After) is dropped, never asked sooner",
    )
    p.add_argument("--adaptive-factor", type=float, default=1.0, help="delay >= factor * mean latency")
    p.add_argument("--user-agent", default=USER_AGENT, help="User-Agent header")
    p.add_argument("--lease-seconds", type=float, default=60.0, help="a claimed URL returns after this")
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--read-timeout", type=float, default=10.0)
    p.add_argument("--total-timeout", type=float, default=30.0)
    p.add_argument("--max-body-bytes", type=int, default=2 * 1024 * 1024)
    p.add_argument("--max-attempts", type=int, default=4, help="fetch attempts per URL")
    p.add_argument("--retry-base", type=float, default=0.5, help="backoff base seconds")
    p.add_argument("--retry-cap", type=float, default=30.0, help="backoff cap seconds")
    add_resolver_args(p)
    p.add_argument("--store", default=None, help="SQLite store (default data/crawler/<crawl-id>.sqlite)")
    p.add_argument(
        "--bloom-capacity",
        type=int,
        default=None,
        help="put a Bloom filter sized for this many URLs in front of the exact URL set",
    )
    p.add_argument("--span-log", default=None, help="append span records (fetch/parse/store) to this file")
    p.add_argument("--crawl-id", default="cli", help="crawl id used in page events and file names")
    p.add_argument("--warc-dir", default=None, help="write WARC files here (default: none)")
    p.add_argument("--seed", type=int, default=None, help="random seed for retry jitter")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    return p


def _config_from_args(args: argparse.Namespace) -> CrawlConfig:
    raw: dict[str, Any] = {
        "seeds": args.seeds,
        "scope": args.scope,
        "max_pages": args.max_pages,
        "max_depth": args.max_depth,
        "max_urls_per_pattern": args.max_urls_per_pattern,
        "max_pages_per_host": args.max_pages_per_host,
        "concurrency": args.concurrency,
        "user_agent": args.user_agent,
        "lease_seconds": args.lease_seconds,
        "politeness": {
            "min_delay": args.min_delay,
            "max_in_flight_per_host": args.max_in_flight_per_host,
            "max_delay": args.max_host_delay,
            "adaptive_factor": args.adaptive_factor,
        },
        "fetch": {
            "connect_timeout": args.connect_timeout,
            "read_timeout": args.read_timeout,
            "total_timeout": args.total_timeout,
            "max_body_bytes": args.max_body_bytes,
        },
        "retry": {
            "max_attempts": args.max_attempts,
            "base_delay": args.retry_base,
            "max_delay": args.retry_cap,
        },
    }
    try:
        return CrawlConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        raise UsageError(f"{_FLAGS.get(loc, loc)}: {err['msg']}") from None


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(unit="page", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def __call__(self, crawl: Crawl) -> None:
        if self.bar is None:
            return
        done = crawl.stats.fetched
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(
            hosts=len(crawl.frontier.slots),
            queued_hosts=len(crawl.frontier),
            denied=crawl.stats.robots_denied,
            retries=crawl.stats.retries,
            refresh=False,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def run_crawl(args: argparse.Namespace, config: CrawlConfig) -> dict[str, Any]:
    store_path = Path(args.store or f"data/crawler/{args.crawl_id}.sqlite")
    store = sqlite_store(store_path, config, bloom_capacity=args.bloom_capacity)
    sink = open_sink(args.pages_to, outbox=store_path)  # undelivered events: a table of the store
    progress = _Progress(sys.stderr.isatty() if args.progress is None else args.progress)
    crawl = open_crawl(
        args.crawl_id,
        config,
        store,
        rules=parse_resolve(args.resolve),
        allow_private=args.allow_private,
        warc_dir=args.warc_dir,
        sink=sink,
        seed=args.seed,
        on_progress=progress,
        spans=SpanLog(args.span_log, "crawler") if args.span_log else None,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, crawl.cancel)
    status: dict[str, Any] = {}
    try:
        await run_to_end(crawl, on_end=lambda c: status.update(c.status(), store=str(store_path)))
    finally:
        progress.close()
        if sink is not None:
            await sink.close()
    return status


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        config = _config_from_args(args)
        parse_resolve(args.resolve)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(service="crawler", level="WARNING")  # JSON lines on stderr, like the service
    try:
        import uvloop  # (libuv: the loop's own work, timers and socket writes, in C)

        # The cyclic collector: what is alive after start-up (modules, classes) is never garbage,
        # and with the default threshold (700) a wide crawl collected ~1,000 times, 1.3-1.8 CPU s
        # of ~13 (full collections ~0.1 s each); a page's objects die by reference counting anyway.
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            status = runner.run(run_crawl(args, config))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(status, indent=2, sort_keys=True))
    if status.get("stopped_by") == "max_pages":
        print(
            f"note: stopped by --max-pages {config.max_pages} with {status['frontier_size']} URLs still"
            " queued; run again with a higher --max-pages and the same --store to go on",
            file=sys.stderr,
        )
    if status["state"] == CrawlState.FAILED.value:
        return 1
    if status["state"] == CrawlState.CANCELLED.value:
        return 130
    return 0
