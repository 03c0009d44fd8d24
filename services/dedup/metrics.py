"""Prometheus metrics of the dedup worker (default registry, get-or-create so tests can build
several apps in one process). Names follow Prometheus conventions: _total, _seconds, _bytes."""

from __future__ import annotations

from libs.service.metrics import counter, gauge, histogram

PAGES_SEEN = counter("dedup_pages_seen_total", "page events received (HTTP or Redis), redeliveries included")
PAGES_REDELIVERED = counter("dedup_pages_redelivered_total", "page events for a URL already indexed")
PAGES_INVALID = counter("dedup_pages_invalid_total", "page events rejected as malformed", ["source"])
EXACT = counter("dedup_exact_duplicates_total", "pages whose body or normalised text was seen before")
NEAR = counter("dedup_near_duplicates_total", "pages with at least one near duplicate", ["method"])
INDEX_PAGES = gauge("dedup_index_pages", "pages held in the index")
CLUSTERS = gauge("dedup_clusters", "clusters of two or more pages")
PAGE_SECONDS = histogram(
    "dedup_page_process_seconds",
    "time to normalise, fingerprint and index one page",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
SCANS = counter("dedup_scans_total", "filesystem scan jobs finished", ["status"])
SCAN_BYTES = counter("dedup_scan_bytes_read_total", "bytes read by scan jobs")
SCAN_WASTED = gauge("dedup_scan_last_wasted_bytes", "wasted bytes found by the last finished scan job")
STREAM_ACKED = counter("dedup_stream_acked_total", "Redis stream entries processed and acknowledged")
STREAM_CONNECTED = gauge(
    "dedup_stream_connected", "1 while the Redis stream consumer is connected and its group exists, else 0"
)
STREAM_PENDING = gauge(
    "dedup_stream_pending", "entries delivered to the consumer group and not yet acknowledged (XPENDING)"
)
STREAM_LAG = gauge(
    "dedup_stream_lag", "entries in the stream not yet delivered to the consumer group (XINFO GROUPS lag)"
)
STREAM_ERRORS = counter(
    "dedup_stream_errors_total", "failed turns of the Redis stream consumer (each one retried)"
)
