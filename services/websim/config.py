"""SimConfig: every knob of the simulated web, validated once.

Two configs that compare equal generate byte-identical sites: the generator draws every random
choice from generators seeded by (seed, hosts, knobs), never from global state or wall time.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field

#: The crawler's product token; robots groups are generated for it, and the truth defaults to it.
DEFAULT_USER_AGENT = "ProvingGroundBot"

#: RFC 9309 section 2.5: crawlers must parse at least this much of a robots.txt.
ROBOTS_PARSE_LIMIT = 500 * 1024

#: Robots variants a host can have. "normal" serves generated rules; see robots.py for each one.
ROBOTS_KINDS = ("normal", "404", "500", "unreachable", "slow", "huge", "redirect")


def _default_robots_mix() -> dict[str, float]:
    # Shares of hosts per robots variant; "normal" takes what is left. Every variant gets at
    # least one host once there are 10 or more, so small test sites still see all of them.
    return {"404": 0.08, "500": 0.04, "unreachable": 0.03, "slow": 0.03, "huge": 0.02, "redirect": 0.03}


@dataclass(frozen=True)
class SimConfig:
    """Knobs of a generated web. Defaults: a polite crawl of 200 hosts (one request in flight per
    host, 0.05 s minimum delay) finishes in about 10-30 s on a small machine."""

    hosts: int = 200
    seed: int = 1
    # Pages per host follow a power law on [min_pages, max_pages]: P(k) ~ k ** -page_alpha.
    min_pages: int = 3
    max_pages: int = 15
    page_alpha: float = 1.2
    # Extra out-links per HTML page, power law on [1, max_out_links] with exponent link_alpha.
    max_out_links: int = 12
    link_alpha: float = 1.6
    cross_host_link_rate: float = 0.12  # share of extra links that point at another host
    nofollow_link_rate: float = 0.07  # rel=nofollow on a link
    robots_mix: dict[str, float] = field(default_factory=_default_robots_mix)
    crawl_delay_rate: float = 0.3  # share of normal-robots hosts with a Crawl-delay line
    crawl_delay_min: float = 0.05
    crawl_delay_max: float = 0.3
    robots_slow_s: float = 1.0  # "slow" robots: the truth assumes a robots timeout above this
    robots_huge_bytes: int = 600 * 1024  # "huge" robots: rules first, neutral padding after
    trap_rate: float = 0.03  # share of hosts with an infinite calendar (>= 1 host when hosts >= 10)
    slow_page_rate: float = 0.05
    slow_page_max_s: float = 0.5
    transient_rate: float = 0.03  # 429/503 with Retry-After for the first 1-2 attempts
    retry_after_s: int = 1
    huge_page_rate: float = 0.005
    huge_page_bytes: int = 3_000_000
    redirect_rate: float = 0.15  # redirect entries per page
    exotic_rate: float = 0.05  # malformed HTML, wrong charset, noindex, ... each about this often

    def __post_init__(self) -> None:
        _check(1 <= self.hosts <= 10_000, "hosts", f"must be 1..10000, got {self.hosts}")
        _check(1 <= self.min_pages <= self.max_pages, "min_pages", "need 1 <= min_pages <= max_pages")
        _check(self.max_pages <= 10_000, "max_pages", "must be <= 10000")
        _check(self.max_out_links >= 1, "max_out_links", "must be >= 1")
        _check(0 < self.crawl_delay_min <= self.crawl_delay_max, "crawl_delay_min", "need 0 < min <= max")
        for name in (
            "cross_host_link_rate",
            "nofollow_link_rate",
            "crawl_delay_rate",
            "trap_rate",
            "slow_page_rate",
            "transient_rate",
            "huge_page_rate",
            "redirect_rate",
            "exotic_rate",
        ):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, name, f"must be within [0, 1], got {value}")
        unknown = set(self.robots_mix) - set(ROBOTS_KINDS)
        _check(not unknown, "robots_mix", f"unknown robots kinds {sorted(unknown)}")
        _check("normal" not in self.robots_mix, "robots_mix", "'normal' takes the remainder; omit it")
        _check(all(v >= 0 for v in self.robots_mix.values()), "robots_mix", "shares must be >= 0")
        _check(sum(self.robots_mix.values()) <= 0.9, "robots_mix", "shares must leave >= 10% normal hosts")
        _check(self.robots_huge_bytes > ROBOTS_PARSE_LIMIT, "robots_huge_bytes", "must exceed 500 KiB")
        _check(self.retry_after_s >= 0, "retry_after_s", "must be >= 0")

    @functools.cached_property
    def _fingerprint(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def fingerprint(self) -> str:
        """Stable digest of every knob: part of every random seed, so any knob change reshapes the web."""
        return self._fingerprint


class ConfigError(ValueError):
    """A knob is out of range; `field` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _check(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise ConfigError(field_name, message)
