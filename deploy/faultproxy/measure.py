"""What the fault proxy costs and what its toxics do, measured on real sockets.

    python -m deploy.faultproxy.measure [--requests 300]

Starts `python -m deploy.faultproxy` (its own process, as in the stack) and a small HTTP
upstream (aiohttp) on free loopback ports, then times
sequential keep-alive GETs: straight to the upstream, through the proxy, through the proxy with
a 50 ms latency toxic, and measures how long a reset_peer toxic and a disabled proxy take to fail
a request. Prints one table (milliseconds).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import time

import httpx
from aiohttp import web

from libs.service.cli import EXIT_USAGE, ArgumentParser, UsageError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _timed_gets(url: str, n: int) -> list[float]:
    times = []
    async with httpx.AsyncClient(timeout=10) as client:
        await client.get(url)  # connect first: time requests, not the handshake
        for _ in range(n):
            start = time.perf_counter()
            (await client.get(url)).raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
    return times


async def _time_to_fail(url: str) -> float:
    async with httpx.AsyncClient(timeout=10) as client:  # built outside the timing (SSL context)
        start = time.perf_counter()
        try:
            await client.get(url)
        except httpx.HTTPError:
            return (time.perf_counter() - start) * 1000
    raise AssertionError("the request did not fail")


async def measure(n: int) -> list[tuple[str, str]]:
    async def page(_: web.Request) -> web.Response:
        return web.Response(text="x" * 1000)

    upstream = web.Application()
    upstream.router.add_get("/", page)
    up_runner = web.AppRunner(upstream, access_log=None)
    await up_runner.setup()
    up_port, api_port = _free_port(), _free_port()
    await web.TCPSite(up_runner, "127.0.0.1", up_port).start()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "deploy.faultproxy", "-port", str(api_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{api_port}"
    for _ in range(300):  # bounded: up to ~30 s for the proxy to listen
        try:
            socket.create_connection(("127.0.0.1", api_port), timeout=0.1).close()
            break
        except OSError:
            await asyncio.sleep(0.1)
    rows = []
    try:
        async with httpx.AsyncClient(base_url=api, timeout=10) as control:
            created = (
                await control.post("/proxies", json={"name": "m", "upstream": f"127.0.0.1:{up_port}"})
            ).json()
            via = f"http://{created['listen']}/"

            def row(name: str, times: list[float]) -> None:
                q = statistics.quantiles(times, n=100)
                rows.append((name, f"p50 {statistics.median(times):7.2f}   p99 {q[98]:7.2f}"))

            row("direct GET", await _timed_gets(f"http://127.0.0.1:{up_port}/", n))
            row("through the proxy", await _timed_gets(via, n))
            await control.post("/proxies/m/toxics", json={"type": "latency", "attributes": {"latency": 50}})
            row("with latency 50 ms", await _timed_gets(via, max(20, n // 10)))
            await control.post("/reset")
            await control.post("/proxies/m/toxics", json={"type": "reset_peer", "attributes": {"timeout": 0}})
            rows.append(("reset_peer: request fails after", f"{await _time_to_fail(via):7.2f}"))
            await control.post("/reset")
            await control.post("/proxies/m", json={"enabled": False})
            rows.append(("disabled: request fails after", f"{await _time_to_fail(via):7.2f}"))
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
        await up_runner.cleanup()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m deploy.faultproxy.measure", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    try:
        args = parser.parse_args(argv)
        if args.requests < 20:
            raise UsageError(f"--requests: expected at least 20, got {args.requests}")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for name, value in asyncio.run(measure(args.requests)):
        print(f"{name:<34} {value}  ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
