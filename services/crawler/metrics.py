"""Prometheus metrics of the crawler (default registry; every name starts with crawler_).

The per-host request counter carries a `host` label: fine for the hundreds of hosts of a websim
crawl; a crawl of the open web would aggregate it (top-k) instead.
"""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram

_M = TypeVar("_M", Counter, Gauge, Histogram)
_children: dict[tuple[int, str], object] = {}


def child(metric: _M, label: str) -> _M:
    """`metric.labels(label)` of a metric with one label, remembered: labels() builds and checks
    a key and takes a lock on every call, and the request path asks for the same few children
    (by status, by host) on every request. (A child removed with `metric.remove` is not seen
    here: the crawler never removes one.)"""
    key = (id(metric), label)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(label)
    return found  # type: ignore[return-value]


FETCHES = Counter("crawler_fetches_total", "Fetches by outcome: HTTP status code or error class", ["status"])
BYTES = Counter("crawler_fetched_bytes_total", "Response body bytes received (after decoding)")
HOST_REQUESTS = Counter(
    "crawler_host_requests_total", "Requests sent per host (robots.txt included)", ["host"]
)
ROBOTS_DENIALS = Counter("crawler_robots_denials_total", "URLs not fetched because robots.txt disallows them")
ROBOTS_FETCHES = Counter("crawler_robots_fetches_total", "robots.txt fetches by resulting policy", ["policy"])
FRONTIER_SIZE = Gauge("crawler_frontier_size", "URLs waiting to be fetched (DISCOVERED + RETRYABLE)")
FRONTIER_HOSTS = Gauge("crawler_frontier_hosts", "Hosts in the scheduling heap")
IN_FLIGHT = Gauge("crawler_in_flight_requests", "Requests in flight")
LEASES_EXPIRED = Counter(
    "crawler_leases_expired_total", "Claimed URLs handed back because their lease ran out"
)
TRAP_CUTS = Counter(
    "crawler_trap_cut_total",
    "Links kept out of the frontier by the trap guard, by reason (depth, pattern_budget)",
    ["reason"],
)
HOSTS_PARKED = Gauge(
    "crawler_hosts_parked", "Hosts waiting out a server's Retry-After (within the max host delay)"
)
HOSTS_DROPPED = Counter(
    "crawler_hosts_dropped_total",
    "Hosts dropped from a crawl: they asked for a wait (Retry-After, Crawl-delay) past the max host delay",
)
LEASES_RECLAIMED = Counter(
    "crawler_leases_reclaimed_total",
    "Leased URLs a restarted crawl took back at once from its own previous run (kill -9)",
)
RETRIES = Counter("crawler_retries_total", "Fetches scheduled for another attempt", ["reason"])
DISCOVERED = Counter("crawler_discovered_urls_total", "New unique URLs admitted to the frontier")
DUPLICATE_CONTENT = Counter("crawler_duplicate_content_total", "Bodies whose SHA-256 was already seen")
PAGES_EMITTED = Counter("crawler_pages_emitted_total", "Page events handed to the sink (outbox)")
SINK_ERRORS = Counter(
    "crawler_sink_errors_total",
    "Page events in a failed delivery attempt (each is kept in the outbox and retried; see events_lost)",
)
EVENTS_BUFFERED = Gauge("crawler_events_buffered", "Page events in the durable outbox, not yet acknowledged")
EVENTS_BUFFER_CAPACITY = Gauge(
    "crawler_events_buffer_capacity", "Most page events the outbox holds before the crawl waits for room"
)
EVENTS_DELIVERED = Counter(
    "crawler_events_delivered_total", "Page events the sink acknowledged (then removed from the outbox)"
)
EVENTS_LOST = Counter(
    "crawler_events_lost_total", "Page events dropped for good (the sink refused them as invalid)"
)
OUTBOX_WAITS = Counter(
    "crawler_outbox_full_waits_total", "Times a page event waited for room in a full outbox (backpressure)"
)
STORE_WRITE_LATENCY = Histogram(
    "crawler_store_write_duration_seconds",
    "Time of one durable store write (one SQLite transaction), by operation",
    ["op"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
FETCH_LATENCY = Histogram(
    "crawler_fetch_duration_seconds",
    "Time from request start to body read",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
POLITENESS_DELAY = Histogram(
    "crawler_politeness_delay_seconds",
    "Delay imposed before a host's next request",
    buckets=(0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0),
)
STORAGE_ERRORS = Counter(
    "crawler_storage_errors_total",
    "Writes to the crawler's own storage that failed and are retried (kind: disk_full)",
    ["kind"],
)
CRAWL_PAUSED = Gauge(
    "crawler_crawl_paused", "Crawls paused by the crawler itself (a full disk), until the write passes"
)
