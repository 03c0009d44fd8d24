"""websim's Prometheus metrics (default registry, via libs.service.metrics helpers).

http_requests_total / http_request_duration_seconds / http_requests_in_flight {service="websim"}
    from the shared aiohttp middleware (route is always the catch-all template)
websim_requests_total{kind,status}     requests to simulated hosts by what the path resolved to
websim_faults_injected_total{fault}    requests answered by an injected fault (drop, error)
"""

from __future__ import annotations

from libs.service.metrics import aiohttp_metrics_middleware, counter, metrics_handler

REQUESTS = counter(
    "websim_requests_total", "Requests to simulated hosts, by what the path resolved to", ("kind", "status")
)
FAULTS = counter("websim_faults_injected_total", "Requests answered by an injected fault", ("fault",))


def middlewares() -> list:
    return [aiohttp_metrics_middleware("websim")]


__all__ = ["FAULTS", "REQUESTS", "metrics_handler", "middlewares"]
