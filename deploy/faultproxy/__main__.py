"""`python -m deploy.faultproxy [-host HOST] [-port PORT] [-config FILE] [-seed N]`

The same flags as `toxiproxy-server` (single or double dash), so docker-compose.yml can give the
official image and the local launcher one command line. -config is a JSON array of proxies
({"name", "listen", "upstream", "enabled"}) created at start-up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import sys
from pathlib import Path

from aiohttp import web

from deploy.faultproxy.api import ProxyCollection, make_app
from deploy.faultproxy.proxy import ProxyError
from libs.service.cli import EXIT_USAGE, ArgumentParser, UsageError
from libs.service.logging import configure_logging


def parse_args(argv: list[str] | None):
    parser = ArgumentParser(prog="python -m deploy.faultproxy", description=__doc__.split("\n")[2])
    parser.add_argument("-host", "--host", default="localhost", help="API host (default localhost)")
    parser.add_argument("-port", "--port", type=int, default=8474, help="API port (default 8474)")
    parser.add_argument("-config", "--config", type=Path, default=None, help="JSON array of proxies")
    parser.add_argument("-seed", "--seed", type=int, default=None, help="seed for toxicity and jitter")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"-port: expected 0-65535, got {args.port}")
    config = None
    if args.config is not None:
        try:
            config = json.loads(args.config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"-config {args.config}: {exc}") from exc
        if not isinstance(config, list):
            raise UsageError(f"-config {args.config}: expected a JSON array of proxies")
    return args, config


async def serve(host: str, port: int, config: list | None, seed: int | None) -> int:
    proxies = ProxyCollection(random.Random(seed))
    if config:
        try:
            await proxies.populate(config)
        except ProxyError as exc:
            print(f"error: -config: {exc}", file=sys.stderr)
            await proxies.close()
            return EXIT_USAGE
    runner = web.AppRunner(make_app(proxies), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1" if host == "localhost" else host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        print(f"error: -port {port}: {exc.strerror}", file=sys.stderr)
        await proxies.close()
        await runner.cleanup()
        return 1
    logging.getLogger("faultproxy").info(
        "API on %s:%d, %d proxies: %s", host, port, len(proxies.proxies), ", ".join(proxies.proxies)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxies.close()
    await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args, config = parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging("faultproxy")
    return asyncio.run(serve(args.host, args.port, config, args.seed))


if __name__ == "__main__":
    sys.exit(main())
