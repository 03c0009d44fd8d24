"""Retry policy: which outcomes are transient, and how long to wait (exponential backoff, full jitter).

Only 429, 500, 502, 503, 504, timeouts and connection errors are retried. 404, 410 and every other
4xx are permanent: asking again would only load the server for the same answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from services.crawler.settings import RetryConfig

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES


@dataclass
class RetryPolicy:
    config: RetryConfig
    rng: random.Random

    def should_retry(self, attempts_made: int) -> bool:
        return attempts_made < self.config.max_attempts

    def backoff(self, attempts_made: int, retry_after: float | None = None) -> float:
        """With Retry-After, exactly what the server asked: no backoff of ours on top, and the cap
        does not cut it (a host asking for more than the max host delay is dropped instead, see
        parking.py; the host's own gap still applies, politeness.py). Without it, full jitter
        (AWS architecture blog): uniform(0, min(cap, base * 2**n))."""
        if retry_after is not None:
            return retry_after
        ceiling = min(self.config.max_delay, self.config.base_delay * (2 ** max(0, attempts_made - 1)))
        return self.rng.uniform(0.0, ceiling)
