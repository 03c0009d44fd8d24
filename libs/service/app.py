"""create_app: a FastAPI app with everything a Proving Ground service shares.

Request flow (outermost first): RequestIdMiddleware (X-Request-ID, access line) ->
MetricsMiddleware (counts, latency, in-flight) -> BodyLimitMiddleware (413 over 32 MiB) ->
SpanMiddleware (only with spans=) -> ErrorMiddleware (unhandled -> JSON 500) ->
FastAPI's exception handlers (uniform JSON errors) -> your routes. Plus GET /metrics, /healthz,
/readyz, and the API docs: /openapi.json and Swagger UI at /docs, whose assets are served from
libs/service/static/swagger-ui (mounted at /docs/assets), so the page works offline. ReDoc
(/redoc) is off: it loads its script and fonts from CDNs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, JSONResponse
from starlette.staticfiles import StaticFiles

from libs.service.body_limit import DEFAULT_MAX_BODY_BYTES, BodyLimitMiddleware
from libs.service.errors import ApiError, ErrorMiddleware, install_error_handlers
from libs.service.health import Health
from libs.service.metrics import instrument_fastapi
from libs.service.request_id import RequestIdMiddleware
from libs.service.spans import SpanLog, SpanMiddleware

__all__ = ["ApiError", "create_app"]

_NO_STORE = {"Cache-Control": "no-store"}
SWAGGER_UI_DIR = Path(__file__).parent / "static" / "swagger-ui"


def create_app(
    service: str,
    *,
    title: str | None = None,
    version: str = "0.1.0",
    health: Health | None = None,
    description: str = "",
    access_log: bool = True,
    spans: SpanLog | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    **fastapi_kwargs: Any,
) -> FastAPI:
    """A FastAPI app for `service`. Without `health`, one that is ready at once is made.

    With `spans` (an enabled SpanLog), every request is a root span `<METHOD> <route>` whose
    trace_id is the request id; spans opened by handlers nest under it. A request body over
    `max_body_bytes` is answered 413 before any handler reads it (body_limit.py).
    `app.state.service`, `app.state.health` and `app.state.spans` hold what was passed.
    """
    docs_url = fastapi_kwargs.pop("docs_url", "/docs")
    fastapi_kwargs.setdefault("redoc_url", None)
    app = FastAPI(
        title=title or service,
        version=version,
        description=description,
        docs_url=None,
        **fastapi_kwargs,
    )
    health = health if health is not None else Health(ready=True)
    app.state.service = service
    app.state.health = health
    app.state.spans = spans

    install_error_handlers(app)
    # add_middleware puts each new one OUTSIDE the previous: add innermost first.
    app.add_middleware(ErrorMiddleware)
    if spans is not None and spans.enabled:
        app.add_middleware(SpanMiddleware, spans=spans)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
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

    if docs_url and app.openapi_url:
        _serve_local_swagger_ui(app, docs_url, app.openapi_url)
    return app


def _serve_local_swagger_ui(app: FastAPI, docs_url: str, openapi_url: str) -> None:
    """FastAPI's /docs page, with Swagger UI's script, CSS and favicon served by the app itself."""
    assets = f"{docs_url.rstrip('/')}/assets"
    app.mount(assets, StaticFiles(directory=SWAGGER_UI_DIR), name="swagger-ui-assets")
    # No online validator badge (it would fetch validator.swagger.io); the app's own parameters win.
    parameters = {"validatorUrl": None, **(app.swagger_ui_parameters or {})}

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{assets}/swagger-ui.css",
            swagger_favicon_url=f"{root}{assets}/favicon-32x32.png",
            swagger_ui_parameters=parameters,
        )
