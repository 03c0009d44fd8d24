"""The same service plumbing for aiohttp apps (websim): request ids, metrics, health, drain.

    health = instrument_aiohttp(app, "websim")          # X-Request-ID, metrics, /metrics, /healthz, /readyz
    sys.exit(serve_aiohttp(app, host, port, health=health, drain_timeout=5.0))

serve_aiohttp follows serve()'s shutdown state machine: on SIGTERM/SIGINT health.draining
(readyz 503), after drain_delay the listener closes, in-flight handlers get drain_timeout to
finish (then are cancelled), the app's own on_shutdown/on_cleanup run, then our hooks; exit 0.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterable

from aiohttp import web

from libs.service.health import Health, aiohttp_health_routes
from libs.service.logging import get_logger
from libs.service.metrics import aiohttp_metrics_middleware, metrics_handler
from libs.service.request_id import REQUEST_ID_HEADER, REQUEST_ID_KEY, aiohttp_request_id_middleware
from libs.service.server import Hook, run_hooks

__all__ = ["HEALTH_KEY", "instrument_aiohttp", "serve_aiohttp"]

HEALTH_KEY = web.AppKey("pg_health", Health)
_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = get_logger("libs.service.server")


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    # on_response_prepare also sees streaming responses the handler prepared itself
    request_id = request.get(REQUEST_ID_KEY)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


def instrument_aiohttp(
    app: web.Application, service: str, *, health: Health | None = None, access_log: bool = False
) -> Health:
    """Add request ids, HTTP metrics, GET /metrics, /healthz, /readyz to `app`; returns its Health.

    Call before the app starts. The two middlewares go first (outermost), so they see every
    request, including those your own middlewares answer.
    """
    health = health if health is not None else Health(ready=True)
    app[HEALTH_KEY] = health
    app.middlewares.insert(0, aiohttp_metrics_middleware(service))
    app.middlewares.insert(0, aiohttp_request_id_middleware(access_log=access_log))
    app.on_response_prepare.append(_echo_request_id)
    app.router.add_get("/metrics", metrics_handler)
    app.add_routes(aiohttp_health_routes(health))
    return health


def serve_aiohttp(
    app: web.Application,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    health: Health | None = None,
    drain_timeout: float = 10.0,
    on_shutdown: Iterable[Hook] = (),
    drain_delay: float = 0.0,
) -> int:
    """Serve `app` until SIGTERM/SIGINT, drain, run hooks. Returns 0 (1 if a hook raised, 3 if
    the port cannot be bound)."""
    health = health if health is not None else app.get(HEALTH_KEY) or Health(ready=True)
    hooks = list(on_shutdown)

    async def main() -> int:
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=drain_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except OSError as exc:
            log.error(str(exc), extra={"host": host, "port": port})
            await runner.cleanup()
            return 3
        log.info("serving", extra={"host": host, "port": port})
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        received: list[int] = []

        def on_signal(sig: int) -> None:
            if received:  # a second signal: stop waiting for the drain delay
                stop.set()
                return
            received.append(sig)
            health.draining = True
            log.info("draining", extra={"signal": signal.Signals(sig).name, "drain_timeout_s": drain_timeout})
            loop.call_later(drain_delay, stop.set)

        for sig in _SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await stop.wait()
            await runner.cleanup()  # closes the listener, waits for handlers up to drain_timeout
        finally:
            for sig in _SIGNALS:
                loop.remove_signal_handler(sig)
            hooks_ok = await run_hooks(hooks)
        log.info("stopped", extra={"hooks_ok": hooks_ok})
        return 0 if hooks_ok else 1

    return asyncio.run(main())
