"""Faults switched on at runtime: error rate, added latency, dropped connections; per host or all.

An injected error answers `status` (429, 500, 502, 503 or 504; 500 by default); a 429 or 503 may
carry `retry_after` seconds, sent as a Retry-After header.

A request on host H takes the fault settings for H when set, else those for "*". Draws come
from a Random seeded once, so a given sequence of requests sees the same faults in every run.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Fault:
    host: str = "*"
    error_rate: float = 0.0  # share of requests answered `status`
    latency_ms: float = 0.0  # added before answering
    drop_rate: float = 0.0  # share of connections closed without a response
    status: int = 500  # the injected error's HTTP status (ERROR_STATUSES)
    retry_after: int | None = None  # Retry-After seconds on an injected 429/503

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


ERROR_STATUSES = (429, 500, 502, 503, 504)
RETRY_AFTER_STATUSES = (429, 503)
MAX_RETRY_AFTER_S = 3600


class FaultError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def fault_from_json(body: Any) -> Fault:
    """Validate an admin request body; FaultError names the offending field."""
    if not isinstance(body, dict):
        raise FaultError("body", "expected a JSON object")
    unknown = set(body) - {"host", "error_rate", "latency_ms", "drop_rate", "status", "retry_after"}
    if unknown:
        raise FaultError(sorted(unknown)[0], "unknown field")
    host = body.get("host", "*")
    if not isinstance(host, str) or not host:
        raise FaultError("host", "expected a host name or '*'")
    values: dict[str, float] = {}
    for name, upper in (("error_rate", 1.0), ("drop_rate", 1.0), ("latency_ms", 60_000.0)):
        value = body.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= upper:
            raise FaultError(name, f"expected a number in [0, {upper:g}], got {value!r}")
        values[name] = float(value)
    status = body.get("status", 500)
    if isinstance(status, bool) or not isinstance(status, int) or status not in ERROR_STATUSES:
        allowed = ", ".join(map(str, ERROR_STATUSES))
        raise FaultError("status", f"expected one of {allowed}, got {status!r}")
    retry_after = body.get("retry_after")
    if retry_after is not None:
        if status not in RETRY_AFTER_STATUSES:
            raise FaultError("retry_after", f"only with status 429 or 503, not {status}")
        if (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, int)
            or not 0 <= retry_after <= MAX_RETRY_AFTER_S
        ):
            raise FaultError(
                "retry_after", f"expected whole seconds in [0, {MAX_RETRY_AFTER_S}], got {retry_after!r}"
            )
    return Fault(host=host.lower(), status=status, retry_after=retry_after, **values)


class Faults:
    def __init__(self, seed: int = 0) -> None:
        self._by_host: dict[str, Fault] = {}
        self._rng = random.Random(f"faults:{seed}")
        self._lock = threading.Lock()

    def set(self, fault: Fault) -> None:
        with self._lock:
            if fault.error_rate == fault.latency_ms == fault.drop_rate == 0:
                self._by_host.pop(fault.host, None)
            else:
                self._by_host[fault.host] = fault

    def clear(self) -> None:
        with self._lock:
            self._by_host.clear()

    def all(self) -> list[Fault]:
        with self._lock:
            return list(self._by_host.values())

    def for_host(self, host: str) -> Fault | None:
        with self._lock:
            return self._by_host.get(host) or self._by_host.get("*")

    def draw(self, host: str) -> tuple[float, bool, Fault | None]:
        """(latency seconds, drop?, the fault whose error to answer or None) for one request on `host`."""
        fault = self.for_host(host)
        if fault is None:
            return 0.0, False, None
        with self._lock:
            drop = fault.drop_rate > 0 and self._rng.random() < fault.drop_rate
            error = not drop and fault.error_rate > 0 and self._rng.random() < fault.error_rate
        return fault.latency_ms / 1000.0, drop, fault if error else None
