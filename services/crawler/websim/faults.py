"""Faults switched on at runtime: error rate, added latency, dropped connections; per host or all.

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
    error_rate: float = 0.0  # share of requests answered 500
    latency_ms: float = 0.0  # added before answering
    drop_rate: float = 0.0  # share of connections closed without a response

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class FaultError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def fault_from_json(body: Any) -> Fault:
    """Validate an admin request body; FaultError names the offending field."""
    if not isinstance(body, dict):
        raise FaultError("body", "expected a JSON object")
    unknown = set(body) - {"host", "error_rate", "latency_ms", "drop_rate"}
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
    return Fault(host=host.lower(), **values)


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

    def draw(self, host: str) -> tuple[float, bool, bool]:
        """(latency seconds, drop?, error?) for one request on `host`."""
        fault = self.for_host(host)
        if fault is None:
            return 0.0, False, False
        with self._lock:
            drop = fault.drop_rate > 0 and self._rng.random() < fault.drop_rate
            error = not drop and fault.error_rate > 0 and self._rng.random() < fault.error_rate
        return fault.latency_ms / 1000.0, drop, error
