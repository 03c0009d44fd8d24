"""One JSON error shape for every HTTP error a service returns:

    {"error": {"type": "invalid_request", "message": "...", "field": "body.seeds.0"}}

- 422 `invalid_request`: validation failed; `field` is the dotted location of the first error
  (`body.seeds.0`, `query.limit`), `details` lists every error.
- 400 `malformed_json`: the body is not JSON at all.
- 404/405/...: Starlette's HTTP errors, same shape (405 keeps its Allow header).
- 500 `internal`: an unhandled exception; the body says nothing more than the request id, the
  traceback goes to the log line with that id.
- ApiError: a service's own errors, with any status, type, field and headers (Retry-After...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.service.logging import get_logger, request_id_var

__all__ = ["ApiError", "ErrorMiddleware", "error_body", "error_response", "install_error_handlers"]

log = get_logger("libs.service.errors")

_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal",
    501: "not_implemented",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """Raise from a handler to answer `status` with the uniform JSON error body."""

    def __init__(
        self,
        status: int = 400,
        type: str | None = None,
        message: str = "",
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.type = type or _TYPES.get(status, "error")
        self.message = message or HTTPStatus(status).phrase
        self.field = field
        self.headers = dict(headers or {})
        super().__init__(f"{status} {self.type}: {self.message}")


def error_body(type: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"type": type, "message": message, "field": field, **extra}}


def error_response(
    status: int,
    type: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse(
        error_body(type, message, field, **extra), status_code=status, headers=dict(headers or {})
    )


def _field_path(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.type, exc.message, exc.field, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    for err in errors:
        if err.get("type") == "json_invalid":
            # FastAPI reports undecodable JSON as a validation error; to the client it is a 400.
            reason = (err.get("ctx") or {}).get("error") or err.get("msg", "")
            return error_response(400, "malformed_json", f"request body is not valid JSON: {reason}", "body")
    details = [
        {"field": _field_path(err.get("loc", ())), "message": err.get("msg", "invalid")} for err in errors
    ]
    field = details[0]["field"] if details else None
    message = str(details[0]["message"]) if details else "invalid request"
    if field:
        message = f"{field}: {message}"
    return error_response(422, "invalid_request", message, field, details=details)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
    detail = exc.detail if isinstance(exc.detail, str) else phrase
    if detail == phrase:  # Starlette's own 404/405: say what was asked for
        detail = f"{phrase.lower()}: {request.method} {request.url.path}"
    if status < 200 or status in (204, 304):  # no body allowed
        return Response(status_code=status, headers=exc.headers)
    return error_response(status, _TYPES.get(status, "http_error"), detail, None, exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)


class ErrorMiddleware:
    """Pure ASGI: an unhandled exception becomes a JSON 500 and one log line with the traceback.

    Sits inside the request-id and metrics middleware, so the 500 carries X-Request-ID and is
    counted. If the response had already started (a stream failed midway) the exception is
    re-raised so the server aborts the connection and the client sees the truncation.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            log.exception("unhandled error", extra={"method": scope.get("method"), "path": scope.get("path")})
            if started:
                raise
            request_id = request_id_var.get()
            response = error_response(500, "internal", "internal server error", None, request_id=request_id)
            await response(scope, receive, send)
