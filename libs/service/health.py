"""Liveness and readiness.

/healthz answers 200 while the process can answer at all. /readyz answers 200 only when the
service said it is ready (`set_ready(True)`, after warm-up), it is not draining (SIGTERM seen),
and every named check passes within its timeout; otherwise 503. Its JSON says why:

    {"status": "not_ready", "ready": true, "draining": false,
     "checks": {"redis": {"ok": false, "error": "timed out after 1.0s", "duration_ms": 1000.4}}}

A check is a callable, sync or async, returning something truthy for healthy; an exception or a
timeout counts as failed. Sync checks run in a worker thread so a slow one cannot stall the loop.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["Check", "Health", "aiohttp_health_routes"]

Check = Callable[[], Any] | Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class _NamedCheck:
    name: str
    fn: Check
    timeout: float


class Health:
    """Readiness state shared by the app (endpoints) and the server (draining on SIGTERM)."""

    def __init__(self, *, ready: bool = False) -> None:
        self.ready = ready
        self.draining = False
        self._checks: dict[str, _NamedCheck] = {}

    def set_ready(self, ready: bool = True) -> None:
        self.ready = ready

    def set_draining(self, draining: bool = True) -> None:
        self.draining = draining

    def add_check(self, name: str, fn: Check, *, timeout: float = 2.0) -> None:
        """Register (or replace) a named readiness check."""
        if timeout <= 0:
            raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
        self._checks[name] = _NamedCheck(name, fn, timeout)

    def remove_check(self, name: str) -> None:
        self._checks.pop(name, None)

    @property
    def checks(self) -> list[str]:
        return list(self._checks)

    async def _run(self, check: _NamedCheck) -> dict[str, Any]:
        started = time.perf_counter()
        result: dict[str, Any] = {"ok": False, "error": None}
        try:
            if inspect.iscoroutinefunction(check.fn):
                value = await asyncio.wait_for(check.fn(), check.timeout)
            else:
                value = await asyncio.wait_for(asyncio.to_thread(check.fn), check.timeout)
                if inspect.isawaitable(value):  # a sync callable that returned a coroutine
                    value = await asyncio.wait_for(value, check.timeout)
            result["ok"] = bool(value)
            if not value:
                result["error"] = f"check returned {value!r}"
        except TimeoutError:
            result["error"] = f"timed out after {check.timeout}s"
        except Exception as exc:  # a failing check is a result, not a crash of /readyz
            result["error"] = f"{type(exc).__name__}: {exc}"
        result["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return result

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready?, JSON body). Checks run concurrently; skipped while draining."""
        checks: dict[str, dict[str, Any]] = {}
        if not self.draining and self._checks:
            named = list(self._checks.values())
            results = await asyncio.gather(*(self._run(c) for c in named))
            checks = {c.name: r for c, r in zip(named, results, strict=True)}
        ok = self.ready and not self.draining and all(r["ok"] for r in checks.values())
        status = "ready" if ok else ("draining" if self.draining else "not_ready")
        return ok, {"status": status, "ready": self.ready, "draining": self.draining, "checks": checks}

    @staticmethod
    def liveness() -> dict[str, Any]:
        return {"status": "ok"}


def aiohttp_health_routes(health: Health) -> list[web.RouteDef]:
    """GET /healthz and /readyz for an aiohttp app: `app.add_routes(aiohttp_health_routes(h))`."""

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response(health.liveness())

    async def readyz(request: web.Request) -> web.Response:
        ok, body = await health.readiness()
        return web.json_response(body, status=200 if ok else 503)

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]
