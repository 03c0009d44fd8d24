"""One stats recorder per crawl: every count goes in once and feeds both the crawl's status view
(`as_dict`, /v1/crawls/{id} "stats") and the process's Prometheus counters (metrics.py).

The Prometheus counters add up every crawl of the process; the fields are this crawl's own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter as PromCounter

from services.crawler import metrics

# field -> the unlabelled Prometheus counter that moves with it (fields not named here are the
# crawl's own: pages_emitted is counted by the sink, which every crawl of a process shares)
_PROMETHEUS: dict[str, PromCounter] = {
    "robots_denied": metrics.ROBOTS_DENIALS,
    "leases_expired": metrics.LEASES_EXPIRED,
    "leases_reclaimed": metrics.LEASES_RECLAIMED,
    "discovered": metrics.DISCOVERED,
    "duplicate_content": metrics.DUPLICATE_CONTENT,
}


@dataclass
class CrawlStats:
    requests: int = 0
    fetched: int = 0
    failed: int = 0
    robots_denied: int = 0
    robots_fetches: int = 0
    retries: int = 0
    bytes: int = 0
    leases_expired: int = 0
    leases_reclaimed: int = 0  # held by this owner in a run that died: handed back at start
    discovered: int = 0
    duplicate_content: int = 0
    pages_emitted: int = 0
    fenced: int = 0  # host turns ended by a write refused for a stale partition epoch
    politeness_waits: int = 0  # requests held back by the host's shared record
    statuses: Counter[str] = field(default_factory=Counter)  # page responses by status or error class
    started_at: float | None = None
    finished_at: float | None = None

    def count(self, name: str, n: int = 1) -> None:
        """Add `n` to the field `name` and to its Prometheus counter, if it has one."""
        setattr(self, name, getattr(self, name) + n)
        counter = _PROMETHEUS.get(name)
        if counter is not None and n:
            counter.inc(n)

    def request(self, host: str) -> None:
        """A request leaves for `host` (robots.txt included)."""
        self.requests += 1
        metrics.child(metrics.HOST_REQUESTS, host).inc()

    def response(self, outcome: str, body_bytes: int = 0, *, page: bool = True) -> None:
        """A request ended: `outcome` is the HTTP status or the error class. `page`: a page, not
        robots.txt (only pages count in `statuses`)."""
        metrics.child(metrics.FETCHES, outcome).inc()
        if body_bytes:
            self.bytes += body_bytes
            metrics.BYTES.inc(body_bytes)
        if page:
            self.statuses[outcome] += 1

    def retry(self, reason: str) -> None:
        """A URL is scheduled for another attempt (reason: status or error class)."""
        self.retries += 1
        metrics.child(metrics.RETRIES, reason).inc()

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "statuses"}
        d["statuses"] = dict(self.statuses)
        return d
