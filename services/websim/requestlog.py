"""The request log: one entry per request websim answered (or dropped), in arrival order.

Entry fields (all always present):
    seq         int, 0-based position since the last clear
    ts          float, Unix seconds at arrival; wall-clock anchored once, advanced by the
                monotonic clock, so gaps between entries are exact and never go backwards
    host        str, the Host header lower-cased without port or trailing dot
    path        str, the raw request target as received (not normalised)
    method      str
    status      int, the status sent; 0 = connection dropped without a response
    user_agent  str | None
    page_id     str | None, websim's id of the resource the path resolves to (pages, calendar
                months, redirects, gone entries); None for robots.txt, sitemaps, 404s, unknown hosts
    kind        str, what the path resolved to: page | calendar | redirect | gone | robots |
                sitemap | not_found | unknown_host | bad_method
    fault       str | None, "drop" or "error" when an admin-set fault decided the answer
    attempt     int, how many times this page_id has been requested (transient pages count it)
    duration_s  float, arrival to response start (includes injected and slow-page latency)
    retry_until float | None, when the answer carried Retry-After (429/5xx): the time (this log's
                clock) it asked the client to wait until (seconds counted from the response; an
                HTTP date converted to this clock), else None

Admin requests (Host admin.sim.test or any name outside .sim.test) are not logged: they are not
part of the simulated web, and reading the log must not change it.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any


class Clock:
    """Wall-clock time with monotonic precision: ts = anchor + monotonic()."""

    def __init__(self) -> None:
        self._anchor = time.time() - time.monotonic()

    def now(self) -> float:
        return self._anchor + time.monotonic()


class RequestLog:
    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self._entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # readers may be on another thread (run_in_thread)

    def record(self, **entry: Any) -> dict[str, Any]:
        with self._lock:
            entry = {"seq": len(self._entries), **entry}
            self._entries.append(entry)
        return entry

    def entries(self, since: int = 0, host: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            items = self._entries[since:]
        if host is not None:
            items = [e for e in items if e["host"] == host]
        return [dict(e) for e in items]

    def clear(self) -> None:
        with self._lock:
            self._entries = []

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def to_jsonl(entries: list[dict[str, Any]]) -> str:
        return "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries)
