"""One place opens a crawl: resolver, fetcher, WARC writer and store around the engine, and
closes them again when it ends.

The CLI (one crawl, one SQLite store), the control API (a SQLite store per crawl) and the worker
(every crawl registered in Redis) all go through `open_crawl` and `run_to_end`; they differ only
in the store they pass and in what they do with the crawl's last status. The resolver flags
(`--resolve`, `--allow-private`, `--pages-to`) are declared here once for both command lines.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from libs.service.cli import UsageError
from services.crawler.engine import Crawl
from services.crawler.fetcher import Fetcher, ResolverMap, ResolveRule
from services.crawler.settings import CrawlConfig
from services.crawler.store import FrontierStore
from services.crawler.store_sqlite import SQLiteStore
from services.crawler.warc import WarcOutput


def add_resolver_args(p: argparse.ArgumentParser) -> None:
    """The flags that say where hosts are and where page events go (crawl and worker alike)."""
    p.add_argument(
        "--resolve",
        action="append",
        default=[],
        metavar="PATTERN=IP:PORT",
        help="resolver map entry, repeatable, e.g. '*.sim.test=127.0.0.1:8090'",
    )
    p.add_argument(
        "--allow-private",
        action="store_true",
        help="allow private/loopback addresses outside the resolver map",
    )
    p.add_argument("--pages-to", default="", help="page event sink: redis://, http(s):// or a .jsonl path")


def parse_resolve(specs: list[str]) -> list[ResolveRule]:
    """The resolver map from its 'PATTERN=IP:PORT' entries; a bad one is a usage error naming --resolve."""
    rules = []
    for spec in specs:
        try:
            rules.append(ResolveRule.parse(spec))
        except ValueError as exc:
            raise UsageError(f"--resolve: {exc}") from None
    return rules


def sqlite_store(path: Path, config: CrawlConfig, *, bloom_capacity: int | None = None) -> SQLiteStore:
    """A crawl's own SQLite store, with the config it runs under (an existing store resumes)."""
    store = SQLiteStore(path, bloom_capacity=bloom_capacity)
    store.set_meta("config", config.model_dump_json())
    return store


def open_crawl(
    crawl_id: str,
    config: CrawlConfig,
    store: FrontierStore,
    *,
    rules: list[ResolveRule],
    allow_private: bool = False,
    warc_dir: Path | str | None = None,
    warc_name: str | None = None,
    **engine: Any,
) -> Crawl:
    """A crawl ready to run: its fetcher (behind the resolver map and SSRF guard) and WARC writer
    (files named `warc_name`, default the crawl id) are made here; `engine` goes to `Crawl`
    (sink, owner, host_slots, spans, seed, on_progress). Run it with `run_to_end`."""
    resolver = ResolverMap(rules, allow_private=allow_private)
    fetcher = Fetcher(config.fetch, resolver, config.user_agent, concurrency=config.concurrency)
    warc = WarcOutput(warc_dir, warc_name or crawl_id) if warc_dir is not None else None
    return Crawl(crawl_id, config, store, fetcher, warc=warc, **engine)


async def run_to_end(crawl: Crawl, *, on_end: Callable[[Crawl], None] | None = None) -> None:
    """Run the crawl to its end (finished, cancelled or failed); then `on_end` (the store is still
    open: take the last status and host views there), then close the WARC writer and the store.
    The sink is the caller's: one sink serves every crawl of a process."""
    try:
        async with crawl.fetcher:
            await crawl.run()
    finally:
        try:
            if on_end is not None:
                on_end(crawl)
        finally:
            if crawl.warc is not None:
                crawl.warc.close()
            crawl.store.close()
