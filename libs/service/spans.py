"""The span log: one JSON object per finished span, appended to a file that libs.trace reads.

Format: docs/formats/span-log.schema.json. A record is written when its span ends, so children
precede their parent; intervals are half-open [ts, ts + dur), ts wall-clock, dur monotonic.

    spans = SpanLog("spans.jsonl", service="crawler")     # SpanLog(None, ...) records nothing
    with spans.span("fetch", host="h1.sim.test") as s:    # or `async with`
        ...
        s.set("status", 200)

Nesting follows contextvars: a span opened inside another (same thread, or an asyncio task
created inside it) gets its parent_id and trace_id. A root span takes its trace_id from the
current request id (libs.service.logging.request_id_var) when there is one, so every span of
one HTTP request shares a trace; otherwise it starts a new trace.

Writes: each record is one os.write() of one complete line on an O_APPEND descriptor, under a
lock. Threads never interleave, processes sharing the file do not either (the kernel appends a
single write as a unit on local filesystems), and a crash leaves no half-record behind except
in the rare short write, which libs.trace reports by line number.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.service.logging import request_id_var
from libs.service.routes import asgi_route

__all__ = ["Span", "SpanLog", "SpanMiddleware", "configure_spans", "current_span", "span"]

_HEX32 = re.compile(r"[0-9a-f]{32}")  # used with fullmatch: `$` would allow a trailing "\n"
_MAX_ATTR_CHARS = 256

F = TypeVar("F", bound=Callable[..., Any])

_current: ContextVar[Span | None] = ContextVar("pg_current_span", default=None)


def current_span() -> Span | None:
    """The innermost open span in this context, if any."""
    return _current.get()


def _trace_id_for_root() -> tuple[str, str | None]:
    """(trace_id, request_id it came from or None)."""
    request_id = request_id_var.get()
    if request_id is None:
        return secrets.token_hex(16), None
    if _HEX32.fullmatch(request_id):
        return request_id, request_id
    # A client-chosen id ("abc-123"): derive a stable trace id so all its spans still group.
    return hashlib.blake2b(request_id.encode(), digest_size=16).hexdigest(), request_id


def _scalar(value: object) -> str | int | float | bool | None:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # JSON has no NaN/Infinity
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= _MAX_ATTR_CHARS else text[: _MAX_ATTR_CHARS - 1] + "…"


def _worker_name() -> str:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        task = None
    return task.get_name() if task is not None else threading.current_thread().name


class Span:
    """One timed operation. Use as a (sync or async) context manager; `set()` adds attributes."""

    __slots__ = (
        "_log",
        "_parent",
        "_t0",
        "_token",
        "attrs",
        "name",
        "parent_id",
        "span_id",
        "status",
        "trace_id",
        "ts",
    )

    def __init__(self, log: SpanLog, name: str, attrs: dict[str, Any]) -> None:
        if not name:
            raise ValueError("span name: expected a non-empty string")
        self._log = log
        self.name = name
        self.attrs = {k: _scalar(v) for k, v in attrs.items()}
        self.span_id = ""
        self.trace_id = ""
        self.parent_id: str | None = None
        self.status = "ok"
        self.ts = 0.0
        self._t0 = 0.0
        self._token: Token[Span | None] | None = None
        self._parent: Span | None = None

    def set(self, key: str, value: object) -> None:
        self.attrs[key] = _scalar(value)

    def __enter__(self) -> Span:
        parent = self._parent = _current.get()
        self.span_id = secrets.token_hex(8)
        if parent is not None:
            self.trace_id, self.parent_id = parent.trace_id, parent.span_id
        else:
            self.trace_id, request_id = _trace_id_for_root()
            if request_id is not None and request_id != self.trace_id:
                self.attrs.setdefault("request_id", _scalar(request_id))
        self._token = _current.set(self)
        self.ts = time.time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        dur = max(0.0, time.perf_counter() - self._t0)
        if exc_type is not None:
            self.status = "error"
            # the exception's type only: messages can carry payloads, and spans never do
            self.attrs.setdefault("error", exc_type.__name__)
        try:
            if self._token is not None:
                _current.reset(self._token)
        except ValueError:  # exited in another context (e.g. an async generator): restore by hand
            _current.set(self._parent)
        self._log._write(self, dur)

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class _NoopSpan:
    """What a disabled SpanLog hands out: same surface, records nothing, costs almost nothing."""

    __slots__ = ()

    def set(self, key: str, value: object) -> None:
        pass

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    async def __aenter__(self) -> _NoopSpan:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


_NOOP = _NoopSpan()


class SpanLog:
    """Appends span records to `path`; `path=None` disables it (span() becomes a no-op)."""

    def __init__(self, path: str | os.PathLike[str] | None, service: str) -> None:
        self.service = service
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._fd: int | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def traced(self, name: str | None = None, **attrs: Any) -> Callable[[F], F]:
        """Decorator: each call of the (sync or async) function runs inside a span."""

        def decorate(fn: F) -> F:
            span_name = name or fn.__qualname__
            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    async with self.span(span_name, **attrs):
                        return await fn(*args, **kwargs)

                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with self.span(span_name, **attrs):
                    return fn(*args, **kwargs)

            return wrapper  # type: ignore[return-value]

        return decorate

    def span(self, name: str, **attrs: Any) -> Span | _NoopSpan:
        """A new span named `name` with scalar attributes; enter it to start timing."""
        if self._fd is None:
            return _NOOP
        return Span(self, name, attrs)

    def _write(self, s: Span, dur: float) -> None:
        record: dict[str, Any] = {
            "ts": s.ts,
            "dur": dur,
            "name": s.name,
            "trace_id": s.trace_id,
            "span_id": s.span_id,
            "parent_id": s.parent_id,
            "service": self.service,
            "thread": _worker_name(),
            "status": s.status,
        }
        if s.attrs:
            record["attrs"] = s.attrs
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = self._fd
            if fd is None:  # closed while the span ran: drop it rather than raise in user code
                return
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> SpanLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


_default = SpanLog(None, "unknown")


def configure_spans(path: str | os.PathLike[str] | None, service: str) -> SpanLog:
    """Make the process-wide span log that module-level `span()` writes to; returns it."""
    global _default
    old, _default = _default, SpanLog(path, service)
    old.close()
    return _default


def span(name: str, **attrs: Any) -> Span | _NoopSpan:
    """A span on the process-wide log (see configure_spans); a no-op until one is configured."""
    return _default.span(name, **attrs)


class SpanMiddleware:
    """Pure ASGI: one root span per HTTP request, named `<METHOD> <route template>`.

    Spans a handler opens nest under it, and its trace_id is the request id when the
    request-id middleware runs outside this one (create_app(..., spans=...) orders them so).
    """

    def __init__(self, app: ASGIApp, *, spans: SpanLog) -> None:
        self.app = app
        self.spans = spans

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.spans.enabled:
            await self.app(scope, receive, send)
            return
        root_path = scope.get("root_path", "")
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        s = self.spans.span("http", method=scope.get("method"))
        if not isinstance(s, Span):  # the log was closed meanwhile
            await self.app(scope, receive, send)
            return
        with s:
            try:
                await self.app(scope, receive, send_status)
            finally:
                route = asgi_route(scope, root_path)
                # the name is only written when the span ends, so it can carry the matched route
                s.name = f"{scope.get('method')} {route}"
                s.set("route", route)
                s.set("status", status)
                if status >= 500:
                    s.status = "error"
