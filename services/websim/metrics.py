"""websim's Prometheus metrics (default registry, via libs.service.metrics helpers).

http_requests_total / http_request_duration_seconds / http_requests_in_flight {service="websim"}
    from the shared aiohttp middleware (route is always the catch-all template)
websim_requests_total{kind,status}     requests to simulated hosts by what the path resolved to
websim_faults_injected_total{fault}    requests answered by an injected fault (drop, error)
websim_robots_violations_total{agent}      requests for a path the agent's robots group disallows
websim_politeness_violations_total{agent}  requests that arrived sooner after the agent's previous
                                           request to that host than its Crawl-delay (less a tolerance)
The two violation counters are judged live, per request, so Prometheus can alert on them; the
exact judgement of a whole crawl (with the crawler's own minimum delay) is judge.py's.
"""

from __future__ import annotations

from libs.service.metrics import aiohttp_metrics_middleware, counter, metrics_handler

REQUESTS = counter(
    "websim_requests_total", "Requests to simulated hosts, by what the path resolved to", ("kind", "status")
)
FAULTS = counter("websim_faults_injected_total", "Requests answered by an injected fault", ("fault",))
ROBOTS_VIOLATIONS = counter(
    "websim_robots_violations_total", "Requests for paths the agent's robots group disallows", ("agent",)
)
POLITENESS_VIOLATIONS = counter(
    "websim_politeness_violations_total",
    "Requests to a host sooner than the agent's Crawl-delay after its previous one",
    ("agent",),
)


def middlewares() -> list:
    return [aiohttp_metrics_middleware("websim")]


__all__ = [
    "FAULTS",
    "POLITENESS_VIOLATIONS",
    "REQUESTS",
    "ROBOTS_VIOLATIONS",
    "metrics_handler",
    "middlewares",
]
