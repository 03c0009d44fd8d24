"""create_app: a FastAPI app with everything a Proving Ground service shares.

Request flow (outermost first): RequestIdMiddleware (X-Request-ID, access line) ->
MetricsMiddleware (counts, latency, in-flight) -> SpanMiddleware (only with spans=) ->
ErrorMiddleware (unhandled -> JSON 500) ->
FastAPI's exception handlers (uniform JSON errors) -> your routes. Plus GET /metrics, /healthz,
/readyz. Docs stay at FastAPI's /docs and /openapi.json.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.responses import JSONResponse

from libs.service.errors import ApiError, ErrorMiddleware, install_error_handlers
from libs.service.health import Health
from libs.service.metrics import instrument_fastapi
from libs.service.request_id import RequestIdMiddleware
from libs.service.spans import SpanLog, SpanMiddleware

__all__ = ["ApiError", "create_app"]

_NO_STORE = {"Cache-Control": "no-store"}


def create_app(
    service: str,
    *,
    title: str | None = None,
    version: str = "0.1.0",
    health: Health | None = None,
    description: str = "",
    access_log: bool = True,
    spans: SpanLog | None = None,
    **fastapi_kwargs: Any,
) -> FastAPI:
    """A FastAPI app for `service`. Without `health`, one that is ready at once is made.

    With `spans` (an enabled SpanLog), every request is a root span `<METHOD> <route>` whose
    trace_id is the request id; spans opened by handlers nest under it.
    `app.state.service`, `app.state.health` and `app.state.spans` hold what was passed.
    """
    app = FastAPI(title=title or service, version=version, description=description, **fastapi_kwargs)
    health = health if health is not None else Health(ready=True)
    app.state.service = service
    app.state.health = health
    app.state.spans = spans

    install_error_handlers(app)
    # add_middleware puts each new one OUTSIDE the previous: add innermost first.
    app.add_middleware(ErrorMiddleware)
    if spans is not None and spans.enabled:
        app.add_middleware(SpanMiddleware, spans=spans)
    instrument_fastapi(app, service)
    app.add_middleware(RequestIdMiddleware, access_log=access_log)

    @app.get("/healthz", tags=["ops"], summary="Liveness: 200 while the process answers")
    async def healthz() -> JSONResponse:
        return JSONResponse(health.liveness(), headers=_NO_STORE)

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Readiness: 200 when ready, not draining and every check passes; else 503",
        responses={
            503: {"description": "not ready: the body says which check failed or that it is draining"}
        },
    )
    async def readyz() -> JSONResponse:
        ok, body = await health.readiness()
        return JSONResponse(body, status_code=200 if ok else 503, headers=_NO_STORE)

    return app
