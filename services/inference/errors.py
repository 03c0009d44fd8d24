"""Errors the inference operations raise, independent of transport.

HTTP (api.py) and gRPC (grpc_server.py) each translate them at one seam: the HTTP status,
`type`, `field` and Retry-After map straight to the JSON error body; gRPC maps the status to a
status code and puts retry-after in the trailing metadata.
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
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.reason = reason or type

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class InvalidRequest(InferenceError):
    """Bad input: a field is out of range or does not fit the model."""

    def __init__(self, message: str, field: str, *, status: int = 400, reason: str = "invalid") -> None:
        super().__init__(status, "invalid_request", message, field=field, reason=reason)


class Unauthenticated(InferenceError):
    """No API key, or one that matches no tenant."""

    def __init__(self, message: str = "missing or unknown API key") -> None:
        super().__init__(
            401, "unauthenticated", message, field="header.authorization", reason="unauthenticated"
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
