"""Worker heartbeats: the timestamp of the last turn of a service's work loop, as a gauge.

A process can answer /metrics while its work loop is stuck (a deadlock, a blocked event loop in
a worker thread); `up` does not see that, the heartbeat does. Prometheus alerts on
`time() - worker_heartbeat_timestamp_seconds > 30` (deploy/prometheus/rules/workers.yml).
"""

from __future__ import annotations

import time

from libs.service.metrics import gauge

HEARTBEAT = gauge(
    "worker_heartbeat_timestamp_seconds",
    "Unix time of the last turn of a work loop",
    ("service", "worker"),
)


class Heartbeat:
    """Call beat() once per turn of a work loop (cheap: one gauge set)."""

    def __init__(self, service: str, worker: str) -> None:
        self._labels = (service, worker)
        self._gauge = HEARTBEAT.labels(service, worker)
        self.beat()

    def beat(self) -> None:
        self._gauge.set(time.time())

    def stop(self) -> None:
        """A loop that ended on purpose removes its series, so no alert waits for it."""
        try:
            HEARTBEAT.remove(*self._labels)
        except KeyError:
            pass
