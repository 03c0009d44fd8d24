"""robots.txt policy per host (RFC 9309), parsed by protego, cached with a TTL in libs.lru.

Outcome of fetching /robots.txt -> policy (RFC 9309 section 2.3.1):
- 2xx: parse the first 500 KiB (section 2.5 lets a crawler stop there), a leading UTF-8 BOM
  dropped; most specific rule wins, Allow wins ties (protego implements the matching);
- 4xx ("unavailable"): allow everything - except 429, which says "slow down", so it is treated
  like 5xx here, as Google does;
- 5xx, timeouts, connection errors ("unreachable"): disallow everything, for `robots_error_ttl`
  seconds, then fetch again;
- redirects are followed by the engine: up to 5 hops, to other authorities too (RFC 9309
  section 2.3.1.2); the file found applies to the host first asked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

from protego import Protego

from libs.lru import LRUCache

MAX_ROBOTS_BYTES = 500 * 1024
MAX_ROBOTS_REDIRECTS = 5


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


class RobotsCache:
    """Per-host policies; an error policy expires sooner so the host gets a second chance."""

    def __init__(self, *, ttl: float, error_ttl: float, capacity: int = 100_000) -> None:
        self.ttl = ttl
        self.error_ttl = error_ttl
        self._cache: LRUCache[str, RobotsPolicy] = LRUCache(capacity, ttl=ttl)

    def get(self, host: str) -> RobotsPolicy | None:
        return self._cache.get(host)

    def put(self, host: str, policy: RobotsPolicy) -> None:
        ttl = self.error_ttl if policy.mode is RobotsMode.DISALLOW_ALL and policy.parser is None else self.ttl
        self._cache.put(host, policy, ttl=ttl)

    def __len__(self) -> int:
        return len(self._cache)
