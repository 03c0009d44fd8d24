"""Errors the inference operations raise, independent of transport.

HTTP (api.py) and gRPC (grpc_server.py) each translate them at one seam. HTTP answers in the
OpenAI API's error shape, `openai_error()`:

    {"error": {"message", "type", "param", "code", "field"}}

`type` is OpenAI's category (invalid_request_error, requests/tokens for rate limits,
server_error), `code` the specific reason (invalid_api_key, model_not_found,
rate_limit_exceeded, context_length_exceeded, overloaded, ...), `param` the request field
(`max_tokens`, `messages.0.content`) or null, and `field` the same location with its part
(`body.max_tokens`, `header.authorization`), as the project's other services name it.
429/503 carry Retry-After. gRPC maps the status to a status code and puts retry-after in the
trailing metadata.
"""

from __future__ import annotations

import math


class InferenceError(Exception):
    """Any error a client of the inference API sees."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        field: str | None = None,
        retry_after: float | None = None,
        reason: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.reason = reason or type
        self.code = code

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}

    def openai_error(self) -> dict[str, object]:
        """The body of the HTTP answer, in the OpenAI API's shape."""
        return {
            "error": {
                "message": self.message,
                "type": openai_type(self.status, self.reason),
                "param": param_of(self.field),
                "code": self.code or _CODES.get(self.status) or self.reason,
                "field": self.field,
            }
        }


_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded", 413: "context_length_exceeded"}


def openai_type(status: int, reason: str = "") -> str:
    """OpenAI's error category for an HTTP status."""
    if status == 429:
        return "tokens" if "token" in reason else "requests"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def param_of(field: str | None) -> str | None:
    """`body.messages.0.content` -> `messages.0.content`; headers/query/path -> their name."""
    if not field:
        return None
    part, _, rest = field.partition(".")
    if part in ("body", "query", "path", "header") and rest:
        return None if part == "header" else rest
    return field


class InvalidRequest(InferenceError):
    """Bad input: a field is out of range or does not fit the model."""

    def __init__(self, message: str, field: str, *, status: int = 400, reason: str = "invalid") -> None:
        super().__init__(status, "invalid_request", message, field=field, reason=reason)


class Unauthenticated(InferenceError):
    """No API key, or one that matches no tenant."""

    def __init__(self, message: str = "missing or unknown API key") -> None:
        super().__init__(
            401,
            "unauthenticated",
            message,
            field="header.authorization",
            reason="unauthenticated",
            code="invalid_api_key",
        )


class RateLimited(InferenceError):
    """The tenant is over one of its own limits (429): retrying later will work."""

    def __init__(self, message: str, reason: str, retry_after: float) -> None:
        super().__init__(429, "rate_limited", message, retry_after=retry_after, reason=reason)


class Overloaded(InferenceError):
    """The service cannot take the work now (503): overload, deadline, draining, kill switch."""

    def __init__(self, message: str, reason: str, retry_after: float) -> None:
        super().__init__(503, "overloaded", message, retry_after=retry_after, reason=reason)


class NotFound(InferenceError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(404, "not_found", message, field=field)


class Conflict(InferenceError):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(409, "conflict", message, field=field)
