"""JSON log lines on stderr, one object per line, carrying the current request id.

    {"ts": "2026-11-25T10:21:19.123456Z", "level": "INFO", "service": "crawler",
     "logger": "services.crawler.frontier", "msg": "lease expired", "request_id": "9f..", "host": "h1"}

`extra={...}` fields become top-level keys. `request_id_var` is set by the request-id middleware
(libs.service.request_id) for the life of one request, so every line a handler logs carries it.
Never log bodies or prompts: only ids, sizes, counts and durations.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

__all__ = ["JsonFormatter", "configure_logging", "get_logger", "request_id_var"]

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is emitted.
_RESERVED = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message", "taskName"}
)


def _json_default(value: object) -> str:
    return str(value)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (no newlines inside: tracebacks are escaped)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="microseconds")
        line: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id is not None:
            line["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in line and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=_json_default, ensure_ascii=False)


class _ServiceHandler(logging.StreamHandler):
    """Marks the handler configure_logging installed, so a second call replaces it."""


def configure_logging(service: str, level: str | int = "INFO", *, stream: IO[str] | None = None) -> None:
    """Send every logger's records (ours, uvicorn's, aiohttp's) as JSON lines to stderr.

    Idempotent: calling it again (tests, a subcommand) replaces the handler instead of adding one.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ServiceHandler):
            root.removeHandler(handler)
    handler = _ServiceHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # uvicorn configures its own plain-text handlers only when given a log_config; serve() passes
    # none, so make its loggers flow to ours. Its access log is replaced by the request-id
    # middleware's structured line, which knows the route and the request id.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "aiohttp.access", "aiohttp.server"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # httpcore logs every socket step at DEBUG; a --log-level debug run would drown in them.
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    """A standard logger; pass structured fields with `extra={"key": value}`."""
    return logging.getLogger(name)
