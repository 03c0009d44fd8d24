"""Request ids: honour a well-formed X-Request-ID, else make one; echo it; log one line per request.

Pure ASGI middleware (no BaseHTTPMiddleware: that buffers nothing but breaks contextvars and
streaming cancellation), plus the aiohttp twin.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.service.logging import get_logger, request_id_var
from libs.service.routes import asgi_route

__all__ = [
    "REQUEST_ID_HEADER",
    "REQUEST_ID_KEY",
    "RequestIdMiddleware",
    "aiohttp_request_id_middleware",
    "new_request_id",
]

REQUEST_ID_HEADER = "X-Request-ID"
# Ids end up in logs and span logs: keep them short and free of anything a log parser chokes on.
# fullmatch, not match + `$`: `$` also matches before a trailing newline, and "id\n" is no id.
_WELL_FORMED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
# Probes and scrapes arrive every few seconds; their access lines go to DEBUG.
_QUIET_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})

log = get_logger("libs.service.access")
REQUEST_ID_KEY = web.RequestKey("pg_request_id", str)


def new_request_id() -> str:
    """32 lowercase hex digits: also usable as a span-log trace_id."""
    return os.urandom(16).hex()  # uuid4().hex without building a UUID: a few us per request


def accept_request_id(value: str | None) -> str:
    """The client's id when well-formed, else a fresh one."""
    if value and _WELL_FORMED.fullmatch(value):
        return value
    return new_request_id()


class RequestIdMiddleware:
    """Sets request_id_var for the request, adds X-Request-ID to the response, logs an access line."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = accept_request_id(incoming)
        token = request_id_var.set(request_id)
        status = 500
        started = time.perf_counter()
        header = (b"x-request-id", request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                path = scope.get("path", "")
                log.log(
                    10 if path in _QUIET_PATHS else 20,
                    "request",
                    extra={
                        "method": scope.get("method"),
                        "path": path,
                        "route": asgi_route(scope),
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    },
                )
            request_id_var.reset(token)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def aiohttp_request_id_middleware(
    *, access_log: bool = False
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """aiohttp middleware with the same contract (aiohttp has its own access log, so off by default)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = accept_request_id(request.headers.get(REQUEST_ID_HEADER))
        request[REQUEST_ID_KEY] = request_id  # for on_response_prepare (see instrument_aiohttp)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                exc.headers[REQUEST_ID_HEADER] = request_id
                status = exc.status
                raise
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = request_id
            status = response.status
            return response
        finally:
            if access_log:
                log.info(
                    "request",
                    extra={
                        "method": request.method,
                        "path": request.path,
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    },
                )
            request_id_var.reset(token)

    return middleware
