"""Hosts that asked us to wait: never request sooner than asked; park, or drop past a limit.

A server asks for a pause with Retry-After (on 429/5xx) or robots.txt Crawl-delay. The crawler
never comes back sooner than asked (politeness.py no longer caps what a server asks):
- a wait within `limit` seconds (politeness.max_delay, CLI --max-host-delay, default 120 s) parks
  the host until then: visible in the host view (`parked_until`, `parked_reason`) and in the
  gauge crawler_hosts_parked;
- a longer wait drops the host from the crawl: no further request; its URLs end FAILED with the
  reason, the crawl's status lists it under `hosts_dropped`, and crawler_hosts_dropped_total
  counts it. Coming back after `limit` seconds would be sooner than the server asked.
"""

from __future__ import annotations

import asyncio
import logging
import time

from services.crawler import metrics

log = logging.getLogger("services.crawler.parking")


class HostParking:
    def __init__(self, limit: float) -> None:
        self.limit = limit  # 0: no limit, every wait is honoured by parking
        self.parked: dict[str, tuple[float, str]] = {}  # host -> (wall clock until, reason)
        self.dropped: dict[str, str] = {}  # host -> reason

    def over_limit(self, seconds: float) -> bool:
        return bool(self.limit) and seconds > self.limit

    def asked(self, host: str, seconds: float, what: str) -> bool:
        """The server asked `host` to be left alone `seconds` (what: "Retry-After", ...): park it,
        or drop it past the limit. Returns whether the host stays in the crawl."""
        if self.over_limit(seconds):
            self.drop(host, f"{what} {seconds:g} s exceeds the max host delay {self.limit:g} s")
            return False
        self.park(host, seconds, f"{what} {seconds:g} s")
        return True

    def allow_delay(self, host: str, crawl_delay: float) -> bool:
        """robots.txt asks for `crawl_delay` seconds between requests: honoured in full (no
        parking: that is the host's gap), or past the limit the host is dropped (False)."""
        if self.over_limit(crawl_delay):
            self.drop(host, f"Crawl-delay {crawl_delay:g} s exceeds the max host delay {self.limit:g} s")
            return False
        return True

    def park(self, host: str, seconds: float, reason: str) -> None:
        until = time.time() + seconds
        previous = self.parked.get(host)
        if previous is None:
            metrics.HOSTS_PARKED.inc()
        elif previous[0] > until:
            return
        self.parked[host] = (until, reason)
        try:
            asyncio.get_running_loop().call_later(seconds, self._expire, host, until)
        except RuntimeError:  # no event loop (a unit test): refresh() unparks
            pass

    def drop(self, host: str, reason: str) -> None:
        if host in self.dropped:
            return
        self.dropped[host] = reason
        metrics.HOSTS_DROPPED.inc()
        self._unpark(host)
        log.warning("host %s dropped from the crawl: %s", host, reason)

    def _expire(self, host: str, until: float) -> None:
        entry = self.parked.get(host)
        if entry is not None and entry[0] == until:  # not extended by a later ask meanwhile
            self._unpark(host)

    def refresh(self, now: float | None = None) -> None:
        """Unpark the hosts whose wait is over."""
        now = time.time() if now is None else now
        for host in [h for h, (until, _) in self.parked.items() if until <= now]:
            self._unpark(host)

    def _unpark(self, host: str) -> None:
        if self.parked.pop(host, None) is not None:
            metrics.HOSTS_PARKED.dec()

    def count(self) -> int:
        return len(self.parked)

    def view(self, host: str) -> dict[str, object]:
        until, reason = self.parked.get(host, (None, None))
        return {"parked_until": until, "parked_reason": reason, "dropped": self.dropped.get(host)}

    def close(self) -> None:
        """The crawl ended: its parked hosts leave the gauge."""
        for host in list(self.parked):
            self._unpark(host)
