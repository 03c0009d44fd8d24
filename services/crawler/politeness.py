"""Per-host politeness state: one small slot object per host (the Scrapy "slot" idea).

Invariant: a host's next request may start only at or after `slot.next_eligible` and only while
`slot.in_flight < max_in_flight`. The gap is measured from the END of the previous response, so a
server that logs requests on arrival or on completion sees at least `delay` seconds either way.

delay = min(max_delay, max(robots Crawl-delay, configured minimum, adaptive_factor * mean latency))
        * backoff multiplier (raised by 429/503, decays back to 1 on success)
A Retry-After on 429/503 additionally pushes next_eligible to at least now + Retry-After.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field

from services.crawler.settings import PolitenessConfig

_EWMA_ALPHA = 0.3
_MAX_BACKOFF_MULTIPLIER = 16.0


def parse_retry_after(value: str | None, now_wall: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now_wall = time.time() if now_wall is None else now_wall
    return max(0.0, when.timestamp() - now_wall)


@dataclass
class HostSlot:
    host: str
    config: PolitenessConfig
    crawl_delay: float | None = None
    next_eligible: float = 0.0
    in_flight: int = 0
    latency_ewma: float | None = None
    backoff_multiplier: float = 1.0
    requests: int = 0
    last_request_at: float | None = None  # wall clock, for the per-host view
    history: list[float] = field(default_factory=list)  # recent request starts (monotonic) for rates

    @property
    def delay(self) -> float:
        cfg = self.config
        base = cfg.min_delay
        if cfg.respect_crawl_delay and self.crawl_delay is not None:
            base = max(base, self.crawl_delay)
        if self.latency_ewma is not None:
            base = max(base, cfg.adaptive_factor * self.latency_ewma)
        return min(cfg.max_delay, base * self.backoff_multiplier) if cfg.max_delay else base

    def can_start(self, now: float) -> bool:
        return self.in_flight < self.config.max_in_flight_per_host and now >= self.next_eligible

    def on_start(self, now: float) -> None:
        self.in_flight += 1
        self.requests += 1
        self.last_request_at = time.time()
        self.history.append(now)
        if len(self.history) > 64:
            del self.history[:32]
        # While a request is in flight, a second one (max_in_flight > 1) still keeps the spacing.
        self.next_eligible = max(self.next_eligible, now + self.delay)

    def on_finish(
        self, now: float, latency: float | None, status: int | None, retry_after: float | None = None
    ) -> float:
        """Record a finished request; return the politeness delay applied before the next one."""
        self.in_flight = max(0, self.in_flight - 1)
        if latency is not None:
            self.latency_ewma = (
                latency
                if self.latency_ewma is None
                else _EWMA_ALPHA * latency + (1 - _EWMA_ALPHA) * self.latency_ewma
            )
        if status in (429, 503):
            self.backoff_multiplier = min(_MAX_BACKOFF_MULTIPLIER, self.backoff_multiplier * 2)
        elif status is not None and status < 500:
            self.backoff_multiplier = max(1.0, self.backoff_multiplier / 2)
        wait = self.delay
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.config.max_delay or retry_after))
        self.next_eligible = max(self.next_eligible, now + wait)
        return wait

    def request_rate(self, now: float, window: float = 60.0) -> float:
        recent = [t for t in self.history if now - t <= window]
        return len(recent) / window
