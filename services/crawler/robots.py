"""robots.txt policy per host (RFC 9309), parsed by protego, cached with a TTL in libs.lru.

Outcome of fetching /robots.txt -> policy (RFC 9309 section 2.3.1):
- 2xx: parse the first 500 KiB (section 2.5 lets a crawler stop there), a leading UTF-8 BOM
  dropped; most specific rule wins, Allow wins ties (protego implements the matching);
- 4xx ("unavailable"): allow everything - except 429, which says "slow down", so it is treated
  like 5xx here, as Google does;
- 5xx, timeouts, connection errors ("unreachable"): disallow everything *for now* (section
  2.3.1.4): no page of the host is requested, but its URLs are not failed either; robots.txt is
  asked again (with backoff) and the URLs are crawled once it is had. Only a host still failing
  after ROBOTS_ATTEMPTS tries (when it timed out: ROBOTS_TIMEOUT_ATTEMPTS tries and ROBOTS_PATIENCE
  seconds) gets the final
  disallow-all answer (kept `robots_error_ttl` seconds), and then its URLs end FAILED: a host
  that stays away must not keep the crawl from ending, a moment of overload (ours or its own:
  a timeout) must not cost its pages;
- redirects are followed: up to 5 hops, to other authorities too (RFC 9309 section 2.3.1.2);
  the file found applies to the host first asked.

`RobotsFetch` is the fetch protocol per host (which URL next, hops, transient retries) as plain
state and decisions; the engine makes the requests it asks for, each through the host's
politeness gate like any other request. `policy_from_shared` reads back the answer a worker
shared through the store (Redis), so every worker of a crawl applies the same file.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from protego import Protego

from libs.lru import LRUCache
from services.crawler.urlnorm import InvalidURL, normalize

MAX_ROBOTS_BYTES = 500 * 1024
MAX_ROBOTS_REDIRECTS = 5
ROBOTS_ATTEMPTS = 3  # transient robots.txt failures (5xx, 429, timeouts): tries before disallow-all,
ROBOTS_PATIENCE = 30.0  # and seconds timeouts must span from the first one (a timeout may be ours),
ROBOTS_TIMEOUT_ATTEMPTS = 8  # and tries in all: a starved crawler's own loop spaced 3 tries 34 s apart
ROBOTS_MAX_ATTEMPTS = 30  # the bound on tries however fast they fail


class RobotsMode(StrEnum):
    RULES = "rules"
    ALLOW_ALL = "allow_all"
    DISALLOW_ALL = "disallow_all"


@dataclass(frozen=True)
class RobotsPolicy:
    mode: RobotsMode
    token: str
    status: int | None = None
    crawl_delay: float | None = None
    parser: Protego | None = None
    fetched_at: float = 0.0
    reason: str = ""

    def allows(self, url: str) -> bool:
        if self.mode is RobotsMode.ALLOW_ALL:
            return True
        if self.mode is RobotsMode.DISALLOW_ALL:
            return False
        assert self.parser is not None
        return bool(self.parser.can_fetch(url, self.token))

    @property
    def is_error(self) -> bool:
        """Disallow-all because the file could not be had (5xx, unreachable): kept a short while."""
        return self.mode is RobotsMode.DISALLOW_ALL and self.parser is None

    def summary(self) -> dict[str, object]:
        return {
            "mode": self.mode.value,
            "status": self.status,
            "crawl_delay": self.crawl_delay,
            "fetched_at": self.fetched_at,
            "reason": self.reason,
        }


def policy_from_response(status: int | None, body: bytes, token: str, *, error: str = "") -> RobotsPolicy:
    now = time.time()
    if status is None:
        return RobotsPolicy(
            RobotsMode.DISALLOW_ALL, token, None, fetched_at=now, reason=f"unreachable: {error}"
        )
    if 200 <= status < 300:
        # A UTF-8 byte order mark would glue itself to the first "User-agent" line, which protego
        # then ignores: the file would read as allow-all. RFC 9309 2.2: the file is UTF-8.
        text = body[:MAX_ROBOTS_BYTES].removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace")
        parser = Protego.parse(text)
        delay = parser.crawl_delay(token)
        return RobotsPolicy(
            RobotsMode.RULES,
            token,
            status,
            crawl_delay=float(delay) if delay else None,
            parser=parser,
            fetched_at=now,
        )
    if status == 429 or status >= 500:
        return RobotsPolicy(
            RobotsMode.DISALLOW_ALL, token, status, fetched_at=now, reason=f"robots.txt answered {status}"
        )
    if 400 <= status < 500:
        return RobotsPolicy(
            RobotsMode.ALLOW_ALL, token, status, fetched_at=now, reason=f"robots.txt answered {status}"
        )
    # 1xx or a 3xx whose redirect could not be followed: the file is unreachable.
    return RobotsPolicy(
        RobotsMode.DISALLOW_ALL,
        token,
        status,
        fetched_at=now,
        reason=f"robots.txt answered {status} without a usable redirect",
    )


def policy_from_shared(shared: dict[str, Any], token: str) -> RobotsPolicy:
    """The policy from the answer another worker (or an earlier run) stored: `RobotsStep.shared`."""
    status = int(shared["status"]) if shared.get("status") else None
    return policy_from_response(
        status, shared.get("body") or b"", token, error=str(shared.get("error") or "")
    )


@dataclass(frozen=True)
class RobotsStep:
    """What one robots.txt request led to. Exactly one of:
    - `retry_attempt`: a transient failure; wait `backoff(retry_attempt, Retry-After)`, ask again;
    - `redirect`: a hop to follow on the host's next turn; wait at least a conservative gap;
    - `policy`: the final answer for the host, and `shared`, the record other workers read back."""

    retry_attempt: int | None = None
    redirect: bool = False
    policy: RobotsPolicy | None = None
    shared: dict[str, Any] | None = None


class RobotsFetch:
    """The robots.txt fetch protocol of a crawl, per host (RFC 9309 2.3.1): the first request is
    /robots.txt; a 3xx with a usable Location is followed on the host's next turn (up to
    MAX_ROBOTS_REDIRECTS hops, other authorities too); a 429, 5xx or connection error is asked
    again (the same hop) until `attempts` tries were made, a timeout until `timeout_attempts` tries
    spanning at least `patience` seconds from the first failure (`max_attempts` at most); then
    the answer is final.

    Until the answer is final the host has no policy: the engine requests none of its pages and
    leaves its URLs in the frontier (it claims one, finds no policy, hands it back and asks for
    robots.txt again after the backoff of the retry step).

    Invariant: a host is in `_next` only while a hop or a retry of a hop is owed, and in
    `_attempts` (and `_since`) only between a transient failure and its final answer."""

    def __init__(
        self,
        token: str,
        *,
        attempts: int = ROBOTS_ATTEMPTS,
        timeout_attempts: int = ROBOTS_TIMEOUT_ATTEMPTS,
        patience: float = ROBOTS_PATIENCE,
        max_attempts: int = ROBOTS_MAX_ATTEMPTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token = token
        self.attempts = attempts
        self.timeout_attempts = max(attempts, timeout_attempts)
        self.patience = patience
        self.max_attempts = max(self.timeout_attempts, max_attempts)
        self.clock = clock
        self._next: dict[str, tuple[str, int]] = {}  # host -> (URL to ask, hops made to reach it)
        self._attempts: Counter[str] = Counter()
        self._since: dict[str, float] = {}  # host -> clock() at its first transient failure

    def _again(self, host: str, *, patient: bool) -> bool:
        """One more transient failure of the host: ask again (True) or give up (False)? An
        answered 429/5xx or a refused or dropped connection is the server's own doing: `attempts`
        tries. A timeout may be a moment of overload on either side (a loaded crawler's own event
        loop too: the answer came, the crawler did not read it in time): `timeout_attempts` tries
        and `patience` seconds from the first failure, whichever is longer."""
        self._attempts[host] += 1
        first = self._since.setdefault(host, self.clock())
        n = self._attempts[host]
        if n >= self.max_attempts:
            return False
        if not patient:
            return n < self.attempts
        return n < self.timeout_attempts or self.clock() - first < self.patience

    def owed(self, host: str) -> tuple[str, int] | None:
        """The hop (URL, hops) the host's next turn must ask, if one is owed."""
        return self._next.get(host)

    def taken(self, host: str) -> None:
        """The owed hop is being asked now."""
        self._next.pop(host, None)

    def forget(self, host: str) -> None:
        """No more robots.txt requests to this host (it was dropped from the crawl)."""
        self._next.pop(host, None)
        self._attempts.pop(host, None)
        self._since.pop(host, None)

    def _retry(self, host: str, url: str, hops: int) -> RobotsStep:
        if hops > 0:  # a redirect target is asked again as such, not from /robots.txt once more
            self._next[host] = (url, hops)
        return RobotsStep(retry_attempt=self._attempts[host])

    def _final(self, host: str, policy: RobotsPolicy, shared: dict[str, Any]) -> RobotsStep:
        self._attempts.pop(host, None)
        self._since.pop(host, None)
        shared["fetched_at"] = time.time()
        return RobotsStep(policy=policy, shared=shared)

    def failed(
        self, host: str, url: str, hops: int, error: str, *, retryable: bool, timeout: bool | None = None
    ) -> RobotsStep:
        """The request got no response (timeout, connection error, refused by the SSRF guard).
        `timeout`: it timed out (fetcher.TimeoutException); None: told by `error`, which the
        fetcher starts with the exception's class name."""
        if timeout is None:
            timeout = "Timeout" in error.split(":", 1)[0]
        if retryable and self._again(host, patient=timeout):
            return self._retry(host, url, hops)
        policy = policy_from_response(None, b"", self.token, error=error)
        return self._final(host, policy, {"status": "", "body": b"", "error": error})

    def answered(
        self, host: str, url: str, hops: int, status: int, location: str | None, body: bytes
    ) -> RobotsStep:
        """The request got a response."""
        if 300 <= status < 400 and location and hops < MAX_ROBOTS_REDIRECTS:
            try:
                target = normalize(location, url)
            except InvalidURL:
                target = ""
            if target:  # across authorities too (RFC 9309 2.3.1.2); the rules apply to `host`
                self._next[host] = (target, hops + 1)
                return RobotsStep(redirect=True)
        if (status == 429 or status >= 500) and self._again(host, patient=False):
            return self._retry(host, url, hops)
        policy = policy_from_response(status, body, self.token)
        return self._final(host, policy, {"status": status, "body": body[:MAX_ROBOTS_BYTES], "error": ""})


class RobotsCache:
    """Per-host policies; an error policy expires sooner so the host gets a second chance."""

    def __init__(self, *, ttl: float, error_ttl: float, capacity: int = 100_000) -> None:
        self.ttl = ttl
        self.error_ttl = error_ttl
        self._cache: LRUCache[str, RobotsPolicy] = LRUCache(capacity, ttl=ttl)

    def get(self, host: str) -> RobotsPolicy | None:
        return self._cache.get(host)

    def put(self, host: str, policy: RobotsPolicy) -> None:
        ttl = self.error_ttl if policy.is_error else self.ttl
        self._cache.put(host, policy, ttl=ttl)

    def __len__(self) -> int:
        return len(self._cache)
