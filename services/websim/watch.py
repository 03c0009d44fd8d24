"""Live robots and politeness judgement of each request, for the violation counters.

Arrival-to-arrival gaps are compared with the robots Crawl-delay less TOLERANCE_S: the server
stamps arrivals, so scheduling jitter on a loaded machine shortens a gap the crawler meant to
leave by a few milliseconds (see judge.py for the whole-crawl judgement the tests use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.websim import truth
from services.websim.metrics import POLITENESS_VIOLATIONS, ROBOTS_VIOLATIONS
from services.websim.robots import product_token
from services.websim.web import canonical_target, is_sim_host, origin_form

if TYPE_CHECKING:
    from services.websim.web import Web

TOLERANCE_S = 0.010


class ViolationWatch:
    def __init__(self, web: Web) -> None:
        self.web = web
        self.last_arrival: dict[tuple[str, str], float] = {}  # (host, agent token) -> ts

    def observe(self, host: str, raw_path: str, user_agent: str | None, ts: float, kind: str) -> None:
        if not user_agent or not is_sim_host(host) or self.web.host(host) is None:
            return
        agent = product_token(user_agent)
        # robots.txt and the hops of its redirects are always allowed (RFC 9309 2.3.1.2)
        if kind != "robots" and not truth.allowed(
            self.web, host, canonical_target(origin_form(raw_path)), user_agent
        ):
            ROBOTS_VIOLATIONS.labels(agent).inc()
        previous = self.last_arrival.get((host, agent))
        self.last_arrival[(host, agent)] = ts
        delay = truth.required_delay(self.web, host, user_agent)
        if previous is not None and delay and ts - previous < delay - TOLERANCE_S:
            POLITENESS_VIOLATIONS.labels(agent).inc()

    def clear(self) -> None:
        self.last_arrival.clear()
