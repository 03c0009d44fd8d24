"""The aiohttp app: one catch-all route; the Host header picks a simulated host or the admin API.

Request flow for a simulated host: locate the host (unknown -> 404), resolve the raw target to a
resource, apply faults (latency, drop, error), then answer as the resource says (robots variant,
redirect, transient 429/503, slow, huge streamed body, ...). Every such request is logged once,
with the status actually sent (0 for a dropped connection).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from email.utils import formatdate, parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from services.websim import admin, document
from services.websim.metrics import FAULTS, REQUESTS, metrics_handler, middlewares
from services.websim.web import (
    DOMAIN,
    CalendarPage,
    Gone,
    Host,
    Page,
    Redirect,
    Special,
    canonical_target,
    normalize_host,
    origin_form,
)

if TYPE_CHECKING:
    from services.websim.sim import WebSim

ADMIN_HOST = f"admin.{DOMAIN}"
SERVER = "websim/0.1"


def is_admin_host(host: str) -> bool:
    """admin.sim.test and every name outside .sim.test (an IP, localhost, the compose service name
    "websim" that Prometheus scrapes): the simulated web is exactly the *.sim.test names."""
    return host == ADMIN_HOST or not (host == DOMAIN or host.endswith("." + DOMAIN))


def retry_until(value: str | None, now: float) -> float | None:
    """The log-clock time a Retry-After header sent at `now` asks to wait until: delta-seconds
    from now, or an HTTP date (converted through the wall clock, so a clock offset cancels)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return now + int(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return now + max(0.0, when.timestamp() - time.time())


class Dropped(Exception):
    """The connection was closed on purpose without a response."""


async def _drop(request: web.Request) -> web.StreamResponse:
    transport = request.transport
    if transport is not None:
        transport.abort()  # RST-like close: the client sees a dropped connection, no response
    raise Dropped


def _text(status: int, body: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=body, headers={"Server": SERVER, **headers})


class Handler:
    def __init__(self, sim: WebSim) -> None:
        self.sim = sim

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        host = normalize_host(request.headers.get("Host", ""))
        if is_admin_host(host):
            return await admin.dispatch(self.sim, request)
        arrival = self.sim.log.clock.now()
        started = time.monotonic()
        raw = request.raw_path
        entry: dict[str, Any] = {
            "ts": arrival,
            "host": host,
            "path": raw,
            "method": request.method,
            "status": 0,
            "user_agent": request.headers.get("User-Agent"),
            "page_id": None,
            "kind": "not_found",
            "attempt": 0,
            "fault": None,
            "duration_s": 0.0,
            "retry_until": None,
        }
        try:
            response = await self._answer(request, host, raw, entry)
            entry["status"] = response.status
            entry["retry_until"] = retry_until(response.headers.get("Retry-After"), self.sim.log.clock.now())
            return response
        except Dropped:
            entry["status"] = 0
            raise
        finally:
            entry["duration_s"] = round(time.monotonic() - started, 6)
            self.sim.log.record(**entry)
            self.sim.watch.observe(host, raw, entry["user_agent"], arrival, entry["kind"])
            REQUESTS.labels(entry["kind"], str(entry["status"])).inc()

    async def _answer(
        self, request: web.Request, host_name: str, raw: str, entry: dict[str, Any]
    ) -> web.StreamResponse:
        sim = self.sim
        host = sim.web.host(host_name)
        if host is None:
            entry["kind"] = "unknown_host"
            return _text(404, f"no such host: {host_name}\n")
        target = canonical_target(origin_form(raw))
        resource = host.resolve(target)
        _describe(resource, entry)
        latency, drop, error = sim.faults.draw(host_name)
        if latency:
            await asyncio.sleep(latency)
        if drop:
            entry["fault"] = "drop"
            FAULTS.labels("drop").inc()
            return await _drop(request)
        if error is not None:
            entry["fault"] = "error"
            FAULTS.labels("error").inc()
            headers = {} if error.retry_after is None else {"Retry-After": str(error.retry_after)}
            return _text(error.status, "injected fault\n", **headers)
        if request.method not in ("GET", "HEAD"):
            entry["kind"] = "bad_method"
            return _text(405, "method not allowed\n", Allow="GET, HEAD")
        if entry["page_id"] is not None:
            # Counted after faults: a transient page fails for its first N requests that reach it.
            entry["attempt"] = sim.count_attempt(entry["page_id"])
        return await self._serve(request, host, resource, entry)

    async def _serve(
        self, request: web.Request, host: Host, resource: object, entry: dict[str, Any]
    ) -> web.StreamResponse:
        match resource:
            case Special(kind="robots", path=path):
                return await self._robots(request, host, path)
            case Special(kind="sitemap"):
                return web.Response(
                    body=document.render_sitemap(host),
                    content_type="application/xml",
                    headers={"Server": SERVER},
                )
            case Redirect(status=status, location=location):
                return _text(status, f"moved to {location}\n", Location=location)
            case Gone(status=status):
                return _text(status, "gone\n")
            case CalendarPage():
                return web.Response(
                    body=document.render_calendar(resource),
                    headers={"Server": SERVER, "Content-Type": "text/html; charset=utf-8"},
                )
            case Page():
                return await self._page(request, resource, entry)
        return _text(404, "not found\n")

    async def _robots(self, request: web.Request, host: Host, path: str) -> web.StreamResponse:
        kind = host.robots_kind
        if kind == "unreachable":
            return await _drop(request)
        if kind in ("404", "500"):
            return _text(host.robots_status, f"robots.txt: {host.robots_status}\n")
        if kind == "redirect" and path == "/robots.txt":
            return _text(301, "moved\n", Location="/robots-real.txt")
        if kind == "slow":
            await asyncio.sleep(self.sim.config.robots_slow_s)
        return web.Response(
            body=host.robots_text, headers={"Server": SERVER, "Content-Type": "text/plain; charset=utf-8"}
        )

    async def _page(self, request: web.Request, page: Page, entry: dict[str, Any]) -> web.StreamResponse:
        sim = self.sim
        if page.transient is not None and entry["attempt"] <= page.transient[1]:
            status = page.transient[0]
            after = sim.config.retry_after_s
            # 429 says seconds; 503 says an HTTP date: a crawler must understand both forms.
            value = str(after) if status == 429 else formatdate(time.time() + after + 1, usegmt=True)
            return _text(status, "try again later\n", **{"Retry-After": value})
        if page.slow_s:
            await asyncio.sleep(page.slow_s)
        headers = {"Server": SERVER, "Content-Type": document.content_type(page)}
        if page.kind != "huge":
            return web.Response(body=document.render_page(sim.web, page), headers=headers)
        size = sim.config.huge_page_bytes
        response = web.StreamResponse(headers=headers)
        response.content_length = document.huge_length(sim.web, page, size)
        await response.prepare(request)
        if request.method != "HEAD":
            try:
                for chunk in document.huge_body(sim.web, page, size):
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionError, RuntimeError):
                pass  # the client stopped reading (a crawler's body limit): fine, status was sent
        return response


def _describe(resource: object, entry: dict[str, Any]) -> None:
    match resource:
        case Page(pid=pid):
            entry["kind"], entry["page_id"] = "page", pid
        case CalendarPage():
            entry["kind"], entry["page_id"] = "calendar", resource.pid
        case Redirect(rid=rid):
            entry["kind"], entry["page_id"] = "redirect", rid
        case Gone(gid=gid):
            entry["kind"], entry["page_id"] = "gone", gid
        case Special(kind=kind):
            entry["kind"] = kind
        case _:
            entry["kind"] = "not_found"


@web.middleware
async def _quiet_drops(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except Dropped:
        # Nothing can be sent on an aborted transport; a bare 444-style response object keeps
        # aiohttp from logging a traceback for what is an intended fault.
        return web.Response(status=499)


def build_app(sim: WebSim) -> web.Application:
    app = web.Application(middlewares=[*middlewares(), _quiet_drops], client_max_size=1024**2)
    handler = Handler(sim)

    async def handle(request: web.Request) -> web.StreamResponse:
        return await handler(request)

    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@asynccontextmanager
async def serve(sim: WebSim, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
    """Serve `sim` on host:port (0 = a free port) while the block runs; yields the port."""
    runner = web.AppRunner(build_app(sim), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        yield runner.addresses[0][1]  # (host, port, ...) of the bound socket
    finally:
        await runner.cleanup()


@contextmanager
def run_in_thread(sim: WebSim, host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """Serve `sim` from a background thread with its own event loop; yields the port."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    def main() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop

        async def run() -> None:
            stop = asyncio.Event()
            box["stop"] = stop
            try:
                async with serve(sim, host, port) as bound:
                    box["port"] = bound
                    ready.set()
                    await stop.wait()
            except BaseException as exc:  # surfaced to the caller below
                box["error"] = exc
                ready.set()

        loop.run_until_complete(run())
        loop.close()

    thread = threading.Thread(target=main, name="websim", daemon=True)
    thread.start()
    ready.wait(30)
    if "error" in box:
        raise box["error"]
    try:
        yield box["port"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)


__all__ = ["build_app", "is_admin_host", "metrics_handler", "run_in_thread", "serve"]
