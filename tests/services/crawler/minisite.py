"""A tiny multi-host web of our own for unit tests (the big proofs run against websim).

Hosts are chosen by the Host header; every request is logged with a monotonic timestamp so tests
can judge the crawler from the server side, as the websim proofs do.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], web.StreamResponse | None]


@dataclass
class Entry:
    ts: float
    host: str
    path: str
    user_agent: str
    status: int


@dataclass
class MiniSite:
    # host -> raw path (incl. query) -> (status, headers, body)
    routes: dict[str, dict[str, tuple[int, dict[str, str], bytes]]] = field(default_factory=dict)
    log: list[Entry] = field(default_factory=list)
    hooks: dict[tuple[str, str], Handler] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def page(
        self,
        host: str,
        path: str,
        body: str | bytes,
        status: int = 200,
        content_type: str = "text/html; charset=utf-8",
        **headers: str,
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.routes.setdefault(host, {})[path] = (status, {"Content-Type": content_type, **headers}, data)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        host = request.host.split(":")[0].lower()
        path = request.raw_path
        key = (host, path)
        self.counts[key] = self.counts.get(key, 0) + 1
        resp: web.StreamResponse
        hook = self.hooks.get(key)
        hooked = hook(request) if hook else None
        if hooked is not None:
            resp = hooked
            if asyncio.iscoroutine(resp):
                resp = await resp
        elif path in self.routes.get(host, {}):
            status, headers, body = self.routes[host][path]
            resp = web.Response(status=status, body=body, headers=headers)
        else:
            resp = web.Response(status=404, text="not found")
        self.log.append(
            Entry(time.monotonic(), host, path, request.headers.get("User-Agent", ""), resp.status)
        )
        return resp

    @contextmanager
    def serve(self) -> Iterator[int]:
        loop = asyncio.new_event_loop()
        started = threading.Event()
        holder: dict[str, object] = {}

        async def start() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self.handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            holder["runner"] = runner
            holder["port"] = runner.addresses[0][1]
            started.set()

        def main() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(start())
            loop.run_forever()
            loop.run_until_complete(holder["runner"].cleanup())  # type: ignore[attr-defined]
            loop.close()

        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        started.wait(10)
        try:
            yield int(holder["port"])  # type: ignore[arg-type]
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
