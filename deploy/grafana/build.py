"""Grafana dashboards as code: `python -m deploy.grafana.build` writes deploy/grafana/dashboards/*.json.

The JSON files are what Grafana provisions (committed, so `docker compose up` needs no build
step); tests/deploy/test_grafana.py checks that they equal this module's output and that every
metric a panel queries is one the services really export.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"


def http_panels(job: str) -> list[Panel]:
    sel = f'job="{job}"'
    return [
        Panel(
            "HTTP requests/s by route and status",
            ((f"sum by (route, status) (rate(http_requests_total{{{sel}}}[1m]))", "{{route}} {{status}}"),),
            "reqps",
        ),
        Panel("HTTP latency p50 / p95 / p99", quantiles("http_request_duration_seconds", sel), "s"),
        Panel(
            "5xx ratio",
            (
                (
                    f'sum(rate(http_requests_total{{{sel},status=~"5.."}}[5m])) '
                    f"/ sum(rate(http_requests_total{{{sel}}}[5m]))",
                    "5xx",
                ),
            ),
            "percentunit",
        ),
    ]


def quantiles(metric: str, selector: str = "", by: str = "") -> tuple[tuple[str, str], ...]:
    """p50/p95/p99 of a histogram, optionally per label `by`."""
    group = f"sum by (le{', ' + by if by else ''})"
    legend = f"{{{{{by}}}}} " if by else ""
    return tuple(
        (
            f"histogram_quantile({q}, {group} (rate({metric}_bucket{{{selector}}}[1m])))",
            f"{legend}p{int(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    )


# Service panels: metric names are the services' own (see their metrics.py).
DASHBOARDS: dict[str, tuple[str, list[Panel]]] = {
    "overview": (
        "Proving Ground: overview",
        [
            Panel("Targets up", (("up", "{{job}}"),)),
            Panel(
                "Requests/s by service",
                (("sum by (job) (rate(http_requests_total[1m]))", "{{job}}"),),
                "reqps",
            ),
            Panel("Latency by service", quantiles("http_request_duration_seconds", by="job"), "s"),
            Panel(
                "5xx ratio by service", (("job:http_request_errors:ratio_rate5m", "{{job}}"),), "percentunit"
            ),
        ],
    ),
}


def dashboard(uid: str, title: str, panels: list[Panel]) -> dict:
    grid = []
    for i, p in enumerate(panels):
        grid.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": p.title,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {"refId": chr(65 + j), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                    for j, (expr, legend) in enumerate(p.exprs)
                ],
            }
        )
    return {
        "uid": f"pg-{uid}",
        "title": title,
        "tags": ["proving-ground"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "panels": grid,
    }


def render() -> dict[str, str]:
    return {
        f"{uid}.json": json.dumps(dashboard(uid, title, panels), indent=2) + "\n"
        for uid, (title, panels) in DASHBOARDS.items()
    }


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
