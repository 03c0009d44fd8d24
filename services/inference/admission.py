"""Admission control: the front door every generation, embedding and scoring request passes.

Checks, in order, each with its own rejection reason (metric label):
  kill_switch / draining (503) -> size limits (400/413, naming the field) -> larger than the
  tenant's token burst, so never admissible (400 request_too_large) -> tenant in-flight
  cap (429) -> tenant request bucket (429) -> tenant token bucket (429) -> deadline: the
  estimated queue wait (token backlog ahead of this class / measured tokens per second) would
  miss the request's deadline (503) -> overload: that estimate exceeds the class's max queue
  wait, or too many requests are waiting (503).
Every 429/503 carries Retry-After. Nothing is charged to a bucket unless the request is admitted.

API keys are stored as SHA-256 digests and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.inference import metrics as m
from services.inference.errors import InvalidRequest, Overloaded, RateLimited, Unauthenticated


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TenantConfig:
    name: str
    key_sha256: str
    weight: float = 1.0
    requests_per_s: float = 50.0
    burst_requests: float = 100.0
    tokens_per_s: float = 50_000.0
    burst_tokens: float = 100_000.0
    max_in_flight: int = 256


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int = 768
    max_output_tokens: int = 256
    max_total_tokens: int = 1024  # model context and KV budget, whichever is smaller
    max_waiting: int = 2048
    max_queue_wait_s: dict[str, float] | None = None  # by class

    def queue_wait_limit(self, klass: str) -> float:
        limits = self.max_queue_wait_s or {"interactive": 10.0, "batch": 120.0}
        return limits.get(klass, 10.0)


class TokenBucket:
    """`rate` per second up to `capacity`; not thread-safe on its own (Admission locks)."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` is available (0 if now)."""
        self._refill(now)
        if amount <= self.level:
            return 0.0
        if amount > self.capacity:
            return float("inf")
        return (amount - self.level) / self.rate

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level -= amount


class Ticket:
    """Held while a request is in flight; release() exactly once (idempotent)."""

    def __init__(self, admission: Admission, tenant: str) -> None:
        self._admission = admission
        self.tenant = tenant
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release(self.tenant)


class Admission:
    def __init__(
        self,
        tenants: list[TenantConfig],
        limits: Limits,
        *,
        wait_estimate: Callable[[str], float] = lambda klass: 0.0,
        waiting_count: Callable[[], int] = lambda: 0,
        admin_key_sha256: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.tenants = {t.name: t for t in tenants}
        self._by_digest = [(t.key_sha256.lower(), t) for t in tenants]
        self._admin = admin_key_sha256
        self._clock = clock
        self._wait_estimate = wait_estimate
        self._waiting_count = waiting_count
        self._lock = threading.Lock()
        now = clock()
        self._req = {t.name: TokenBucket(t.requests_per_s, t.burst_requests, now) for t in tenants}
        self._tok = {t.name: TokenBucket(t.tokens_per_s, t.burst_tokens, now) for t in tenants}
        self._in_flight = dict.fromkeys(self.tenants, 0)
        self.draining = False
        self.killed = False

    # -- identity ----------------------------------------------------------------------------
    def authenticate(self, key: str | None) -> TenantConfig:
        if not key:
            raise Unauthenticated("missing API key (Authorization: Bearer <key>)")
        digest = hash_key(key)
        found = None
        for stored, tenant in self._by_digest:  # no early exit: time does not depend on position
            if hmac.compare_digest(stored, digest):
                found = tenant
        if found is None:
            m.REJECTIONS.labels("unknown", "unauthenticated").inc()
            raise Unauthenticated("unknown API key")
        return found

    def is_admin(self, key: str | None) -> bool:
        if not key or self._admin is None:
            return False
        return hmac.compare_digest(self._admin, hash_key(key))

    def in_flight(self, tenant: str) -> int:
        return self._in_flight.get(tenant, 0)

    # -- the checks ----------------------------------------------------------------------------
    def check_sizes(self, prompt_tokens: int, max_tokens: int) -> None:
        lim = self.limits
        if prompt_tokens > lim.max_prompt_tokens:
            raise InvalidRequest(
                f"prompt is {prompt_tokens} tokens, the limit is {lim.max_prompt_tokens}",
                "body.prompt",
                status=413,
                reason="prompt_too_long",
            )
        if max_tokens > lim.max_output_tokens:
            raise InvalidRequest(
                f"max_tokens {max_tokens} exceeds the limit {lim.max_output_tokens}",
                "body.max_tokens",
                reason="max_tokens_too_large",
            )
        if prompt_tokens + max_tokens > lim.max_total_tokens:
            raise InvalidRequest(
                f"prompt ({prompt_tokens}) + max_tokens ({max_tokens}) exceeds {lim.max_total_tokens} tokens",
                "body.max_tokens",
                reason="context_too_long",
            )

    def admit(
        self,
        tenant: TenantConfig,
        *,
        klass: str = "interactive",
        prompt_tokens: int = 0,
        max_tokens: int = 0,
        deadline_s: float | None = None,
        queued: bool = True,
    ) -> Ticket:
        """Admit or raise; `queued` requests (generation) are checked against the queue."""
        try:
            ticket = self._admit(tenant, klass, prompt_tokens, max_tokens, deadline_s, queued)
        except (RateLimited, Overloaded, InvalidRequest) as exc:
            m.REJECTIONS.labels(tenant.name, exc.reason).inc()
            raise
        m.ADMISSIONS.labels(tenant.name, klass).inc()
        return ticket

    def _admit(
        self,
        tenant: TenantConfig,
        klass: str,
        prompt_tokens: int,
        max_tokens: int,
        deadline_s: float | None,
        queued: bool,
    ) -> Ticket:
        if self.killed:
            raise Overloaded("the kill switch is on: the service takes no work", "kill_switch", 60)
        if self.draining:
            raise Overloaded("the service is draining for a deploy", "draining", 5)
        self.check_sizes(prompt_tokens, max_tokens)
        cost = prompt_tokens + max_tokens
        if cost > tenant.burst_tokens:
            # Bigger than the tenant's whole token bucket: no wait would ever admit it, so a 429
            # with Retry-After would have the client retry forever. Say so at once.
            raise InvalidRequest(
                f"this request needs {cost} tokens (prompt {prompt_tokens} + max_tokens {max_tokens}),"
                f" more than tenant {tenant.name}'s token burst of {tenant.burst_tokens:g}:"
                " it can never be admitted; lower max_tokens or shorten the prompt",
                "body.max_tokens",
                reason="request_too_large",
            )
        with self._lock:
            now = self._clock()
            if self._in_flight[tenant.name] >= tenant.max_in_flight:
                raise RateLimited(
                    f"tenant {tenant.name} has {tenant.max_in_flight} requests in flight (its limit)",
                    "in_flight",
                    1,
                )
            wait = self._req[tenant.name].wait_for(1, now)
            if wait > 0:
                raise RateLimited(
                    f"tenant {tenant.name} is over {tenant.requests_per_s} requests/s", "rate_requests", wait
                )
            wait = self._tok[tenant.name].wait_for(cost, now)
            if wait > 0:
                raise RateLimited(
                    f"tenant {tenant.name} is over {tenant.tokens_per_s} tokens/s",
                    "rate_tokens",
                    wait if wait != float("inf") else 60,
                )
            if queued:
                est = self._wait_estimate(klass)
                if deadline_s is not None and est > deadline_s:
                    raise Overloaded(
                        f"estimated queue wait {est:.2f}s exceeds the request deadline {deadline_s:.2f}s",
                        "deadline",
                        est - deadline_s,
                    )
                if est > self.limits.queue_wait_limit(klass):
                    raise Overloaded(
                        f"estimated queue wait {est:.1f}s: overloaded",
                        "overloaded",
                        est - self.limits.queue_wait_limit(klass),
                    )
                if self._waiting_count() >= self.limits.max_waiting:
                    raise Overloaded("too many requests waiting", "queue_full", 1)
            self._req[tenant.name].take(1, now)
            self._tok[tenant.name].take(cost, now)
            self._in_flight[tenant.name] += 1
        return Ticket(self, tenant.name)

    def _release(self, tenant: str) -> None:
        with self._lock:
            self._in_flight[tenant] -= 1
