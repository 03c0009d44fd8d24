"""Per-host politeness state: one small slot object per host (the Scrapy "slot" idea).

Invariant: a host's next request may start only at or after `slot.next_eligible` and only while
`slot.in_flight < max_in_flight`. The gap is measured from the END of the previous response, so a
server that logs requests on arrival or on completion sees at least `delay` seconds either way.

delay = max(robots Crawl-delay,
            min(max_delay, max(robots Crawl-delay, configured minimum, adaptive_factor * mean latency)
                * backoff multiplier))
After a 429 or 5xx the server either says when to come back or it does not:
- with Retry-After, the wait before the host's next request is exactly max(Retry-After, delay):
  the server's word, never less than the host's own gap, and no backoff of ours on top of it (the
  multiplier is left as it was);
- without it, our own exponential backoff: the multiplier doubles (up to 16) on each such answer.
A success halves the multiplier back towards 1. What a server asks (Crawl-delay, Retry-After) is
never cut: a host asking for more than max_delay is dropped from the crawl (parking.py) rather
than asked again sooner.

Politeness belongs to the host, not to a crawl: one slot per host per process, shared by every
crawl of that process (`turns` counts host turns of all crawls, so two crawls never ask one host
at once), and on a shared store one record per host (see FrontierStore.gate_host) that every
worker's request passes through, so a new owner after failover respects every gap.
Each crawl's delay uses its own PolitenessConfig (`delay_for`), so the strictest crawl's gap
holds for its own requests.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from typing import Any

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
    turns: int = 0  # host turns in progress (every crawl of the process): the frontier's reservation
    retry_until: float | None = None  # wall clock: the last Retry-After's end (for the shared record)
    waiters: set[Any] = field(default_factory=set)  # frontiers to wake when a turn ends

    @property
    def delay(self) -> float:
        return self.delay_for(self.config)

    def delay_for(self, cfg: PolitenessConfig) -> float:
        base = cfg.min_delay
        if cfg.respect_crawl_delay and self.crawl_delay is not None:
            base = max(base, self.crawl_delay)
        if self.latency_ewma is not None:
            base = max(base, cfg.adaptive_factor * self.latency_ewma)
        delay = min(cfg.max_delay, base * self.backoff_multiplier) if cfg.max_delay else base
        # max_delay caps our own choices (minimum, latency, backoff), never the server's Crawl-delay:
        # a host asking for more than max_delay is dropped from the crawl instead (parking.py).
        if cfg.respect_crawl_delay and self.crawl_delay is not None:
            delay = max(delay, self.crawl_delay)
        return delay

    def can_start(self, now: float) -> bool:
        return self.in_flight < self.config.max_in_flight_per_host and now >= self.next_eligible

    def on_start(self, now: float, config: PolitenessConfig | None = None) -> None:
        self.in_flight += 1
        self.requests += 1
        self.last_request_at = time.time()
        self.history.append(now)
        if len(self.history) > 64:
            del self.history[:32]
        # While a request is in flight, a second one (max_in_flight > 1) still keeps the spacing.
        self.next_eligible = max(self.next_eligible, now + self.delay_for(config or self.config))

    def on_finish(
        self,
        now: float,
        latency: float | None,
        status: int | None,
        retry_after: float | None = None,
        config: PolitenessConfig | None = None,
    ) -> float:
        """Record a finished request; return the politeness delay applied before the next one."""
        self.in_flight = max(0, self.in_flight - 1)
        if latency is not None:
            self.latency_ewma = (
                latency
                if self.latency_ewma is None
                else _EWMA_ALPHA * latency + (1 - _EWMA_ALPHA) * self.latency_ewma
            )
        transient = status is not None and (status == 429 or status >= 500)
        if transient and retry_after is None:  # the server did not say: our own backoff
            self.backoff_multiplier = min(_MAX_BACKOFF_MULTIPLIER, self.backoff_multiplier * 2)
        elif status is not None and not transient:
            self.backoff_multiplier = max(1.0, self.backoff_multiplier / 2)
        cfg = config or self.config
        wait = self.delay_for(cfg)
        if retry_after is not None:
            # Exactly what was asked, never less than the host's gap (the engine drops a host
            # asking past the limit); no backoff multiplied on top of the server's word.
            wait = max(wait, retry_after)
            self.retry_until = time.time() + wait
        self.next_eligible = max(self.next_eligible, now + wait)
        return wait

    def record(self, next_wall: float) -> dict[str, float | None]:
        """The shared per-host record (FrontierStore.save_host) with `next_wall` as next eligible."""
        return {
            "next": next_wall,
            "crawl_delay": self.crawl_delay,
            "backoff": self.backoff_multiplier,
            "retry_until": self.retry_until,
        }

    def end_turn(self) -> None:
        """A host turn ended: every frontier that found the host busy competes for it again."""
        self.turns = max(0, self.turns - 1)
        waiters, self.waiters = self.waiters, set()
        for frontier in waiters:
            frontier.schedule(self.host)

    def request_rate(self, now: float, window: float = 60.0) -> float:
        recent = [t for t in self.history if now - t <= window]
        return len(recent) / window
