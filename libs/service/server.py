"""serve(): run an ASGI app under uvicorn with a graceful, observable shutdown.

On SIGTERM or SIGINT the state machine is:

    serving --signal--> draining: health.draining = True, /readyz answers 503
            --after drain_delay (default 0)--> closing: listening sockets closed (new connections
              are refused), idle keep-alive connections closed, in-flight requests run on and
              their connections close after the response
            --all done, or drain_timeout passed (remaining requests are cancelled)-->
              lifespan shutdown, then the on_shutdown hooks in order --> return 0

A second signal while draining skips the wait (uvicorn's force exit). uvicorn's own signal
capture re-raises the signal after shutdown, which would make the exit status -15 instead of 0;
this server installs its own handlers and does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterable
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from libs.service.health import Health
from libs.service.heartbeat import Heartbeat
from libs.service.logging import get_logger

__all__ = ["DrainingServer", "Hook", "run_hooks", "serve"]

Hook = Callable[[], Awaitable[Any]] | Callable[[], Any]
_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = get_logger("libs.service.server")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server that marks `health` draining on a signal and exits without re-raising it."""

    def __init__(
        self,
        config: uvicorn.Config,
        health: Health,
        *,
        drain_delay: float = 0.0,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        super().__init__(config)
        self.health = health
        self.drain_delay = drain_delay
        self.heartbeat = heartbeat
        self._stop_at: float | None = None
        self._signal: int | None = None
        self._announced = False

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach only the main thread; tests run servers in threads
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs as a signal handler: set flags only (no logging, no locks); on_tick acts on them.
        if self._stop_at is not None:
            self.force_exit = True
            self.should_exit = True
            return
        self._signal = sig
        self.health.draining = True
        self._stop_at = time.monotonic() + self.drain_delay

    async def on_tick(self, counter: int) -> bool:
        # uvicorn ticks every 0.1 s on the serving event loop: a loop blocked by CPU work or a
        # deadlock stops the heartbeat while the socket may still accept connections.
        if self.heartbeat is not None and counter % 10 == 0:
            self.heartbeat.beat()
        if self._stop_at is not None and not self._announced:
            self._announced = True
            name = signal.Signals(self._signal).name if self._signal else "shutdown"
            log.info(
                "draining",
                extra={
                    "signal": name,
                    "in_flight_connections": len(self.server_state.connections),
                    "drain_delay_s": self.drain_delay,
                    "drain_timeout_s": self.config.timeout_graceful_shutdown,
                },
            )
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self.should_exit = True
        return await super().on_tick(counter)


async def run_hooks(hooks: Iterable[Hook]) -> bool:
    ok = True
    for hook in hooks:
        name = getattr(hook, "__qualname__", repr(hook))
        try:
            result = hook()
            if inspect.isawaitable(result):
                await result
        except Exception:
            ok = False
            log.exception("on_shutdown hook failed", extra={"hook": name})
    return ok


def serve(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    health: Health | None = None,
    drain_timeout: float = 10.0,
    on_shutdown: Iterable[Hook] = (),
    drain_delay: float = 0.0,
    loop: str = "asyncio",
    **uvicorn_options: Any,
) -> int:
    """Serve `app` until SIGTERM/SIGINT, drain, run `on_shutdown`; returns the exit status.

    `loop="uvloop"` runs it on uvloop's event loop (libuv, in C), as uvicorn's own runner does
    when uvloop is installed; this function runs the loop itself, so uvicorn's `loop` option would
    not. HTTP is parsed by httptools (C) when it is installed, uvicorn's choice (`http="auto"`).

    `health` defaults to `app.state.health` (what create_app made). `drain_delay` keeps
    accepting for that long after the signal while /readyz says 503, so a load balancer can
    notice first. Returns 0, or 1 when an on_shutdown hook raised (it is logged). A port
    that cannot be bound exits 3 (uvicorn's startup failure) after one log line.
    """
    if health is None:
        state = getattr(app, "state", None)
        health = getattr(state, "health", None) or Health(ready=True)
    options: dict[str, Any] = {
        "log_config": None,  # keep configure_logging's JSON handler
        "access_log": False,  # the request-id middleware writes the access line
        "lifespan": "auto",
        "timeout_graceful_shutdown": drain_timeout,
    }
    options.update(uvicorn_options)
    service = getattr(getattr(app, "state", None), "service", None)
    server = DrainingServer(
        uvicorn.Config(app, host=host, port=port, **options),
        health,
        drain_delay=drain_delay,
        heartbeat=Heartbeat(service, "event_loop") if service else None,
    )
    hooks = list(on_shutdown)

    async def main() -> bool:
        try:
            await server.serve()
        finally:
            hooks_ok = await run_hooks(hooks)
        log.info("stopped", extra={"hooks_ok": hooks_ok})
        return hooks_ok

    loop_factory = None
    if loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    elif loop != "asyncio":
        raise ValueError(f"loop must be asyncio or uvloop, not {loop!r}")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        hooks_ok = runner.run(main())
    return 0 if hooks_ok else 1
