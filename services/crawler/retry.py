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
        """Full jitter (AWS architecture blog): uniform(0, min(cap, base * 2**n)), never below
        Retry-After: the cap bounds our own backoff, not what the server asked (a host asking for
        more than the max host delay is dropped instead, see parking.py)."""
        ceiling = min(self.config.max_delay, self.config.base_delay * (2 ** max(0, attempts_made - 1)))
        wait = self.rng.uniform(0.0, ceiling)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait
