"""Prometheus metrics on the default registry: HTTP middleware for FastAPI and aiohttp, /metrics.

    http_requests_total{service,method,route,status}          counter
    http_request_duration_seconds{service,method,route}       histogram (to the last body byte)
    http_requests_in_flight{service}                          gauge

`route` is the route template or `<unmatched>`; `method` is one of the standard verbs or OTHER.
Both keep the number of series bounded whatever clients send.

`counter()`, `gauge()` and `histogram()` get-or-create on the default registry, so a module that
defines its metrics can be imported twice, and two apps can be built in one process (tests),
without prometheus_client's "Duplicated timeseries" error. Services should define theirs with
these helpers too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.service.routes import aiohttp_route, asgi_route

if TYPE_CHECKING:  # an annotation only: importing fastapi costs a recording process 0.2-0.3 CPU s
    from fastapi import FastAPI

__all__ = [
    "LATENCY_BUCKETS",
    "MetricsMiddleware",
    "aiohttp_metrics_middleware",
    "counter",
    "gauge",
    "histogram",
    "http_metrics",
    "instrument_fastapi",
    "metrics_handler",
    "metrics_response_body",
]

# From 1 ms to a minute: covers a cache hit and a long generation in the same histogram.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

M = TypeVar("M", bound=MetricWrapperBase)


def _get_or_create(kind: type[M], name: str, documentation: str, labelnames: Sequence[str], **kw: Any) -> M:
    # prometheus_client keeps no public lookup; _names_to_collectors is the registry's own index
    # (stable across releases, used by its tests and by many exporters).
    existing = REGISTRY._names_to_collectors.get(name)
    if existing is None:
        return kind(name, documentation, labelnames=tuple(labelnames), **kw)
    # A collector that is no metric wrapper (a custom one) has no _labelnames to show.
    theirs = getattr(existing, "_labelnames", ())
    if not isinstance(existing, kind) or tuple(theirs) != tuple(labelnames):
        raise ValueError(
            f"metric {name!r} already registered as {type(existing).__name__}"
            f"{list(theirs)}, asked for {kind.__name__}{list(labelnames)}"
        )
    return existing


def counter(name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
    """Get-or-create a Counter on the default registry (name should end in _total)."""
    return _get_or_create(Counter, name, documentation, labelnames)


def gauge(name: str, documentation: str, labelnames: Sequence[str] = (), **kw: Any) -> Gauge:
    """Get-or-create a Gauge on the default registry."""
    return _get_or_create(Gauge, name, documentation, labelnames, **kw)


def histogram(
    name: str, documentation: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
) -> Histogram:
    """Get-or-create a Histogram on the default registry (name should end in a unit, e.g. _seconds)."""
    return _get_or_create(Histogram, name, documentation, labelnames, buckets=tuple(buckets))


class _HttpMetrics:
    def __init__(self) -> None:
        self.requests = counter(
            "http_requests_total", "HTTP requests served", ("service", "method", "route", "status")
        )
        self.duration = histogram(
            "http_request_duration_seconds",
            "HTTP request latency, from the request to the last body byte sent",
            ("service", "method", "route"),
        )
        self.in_flight = gauge(
            "http_requests_in_flight", "HTTP requests being served", ("service",), multiprocess_mode="livesum"
        )

        # labels() validates and locks on every call; the label sets are bounded, so keep the
        # children (a racing first insert stores the same objects: labels() is get-or-create).
        self._children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}

    def observe(self, service: str, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "OTHER"
        key = (service, method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(service, method, route, str(status)),
                self.duration.labels(service, method, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


_http: _HttpMetrics | None = None


def http_metrics() -> _HttpMetrics:
    """The three shared HTTP metrics, created on first use."""
    global _http
    if _http is None:
        _http = _HttpMetrics()
    return _http


def metrics_response_body() -> tuple[bytes, str]:
    """(exposition text, content type) of the default registry."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI: counts and times every HTTP request, streaming responses to their last byte."""

    def __init__(self, app: ASGIApp, *, service: str) -> None:
        self.app = app
        self.service = service
        self.metrics = http_metrics()
        self.in_flight = self.metrics.in_flight.labels(service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root_path = scope.get("root_path", "")
        status = 500  # an exception before any response is what the client sees as a 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.in_flight.inc()
        try:
            # Returns only after the last http.response.body: streaming is measured to the end.
            await self.app(scope, receive, send_status)
        finally:
            self.in_flight.dec()
            self.metrics.observe(
                self.service,
                scope["method"],
                asgi_route(scope, root_path),
                status,
                time.perf_counter() - started,
            )


async def _metrics_endpoint(request: Request) -> Response:
    body, content_type = metrics_response_body()
    return Response(body, media_type=content_type)


def instrument_fastapi(app: FastAPI, service: str, *, metrics_path: str = "/metrics") -> FastAPI:
    """Add the metrics middleware and GET /metrics to `app` (once; a second call is a no-op)."""
    if getattr(app.state, "pg_metrics_service", None) is not None:
        return app
    app.state.pg_metrics_service = service
    app.add_middleware(MetricsMiddleware, service=service)
    app.add_api_route(metrics_path, _metrics_endpoint, methods=["GET"], include_in_schema=False)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def aiohttp_metrics_middleware(service: str) -> Middleware:
    """aiohttp middleware recording the same three metrics as the FastAPI one."""
    metrics = http_metrics()
    in_flight = metrics.in_flight.labels(service)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        in_flight.inc()
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            in_flight.dec()
            metrics.observe(
                service, request.method, aiohttp_route(request), status, time.perf_counter() - started
            )

    return middleware


async def metrics_handler(request: web.Request) -> web.Response:
    """aiohttp handler for GET /metrics."""
    body, content_type = metrics_response_body()
    return web.Response(body=body, headers={"Content-Type": content_type})
