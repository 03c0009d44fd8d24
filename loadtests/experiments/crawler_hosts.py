"""Experiment 6: crawler pages/s against the number of hosts, under the politeness bound.

A polite crawler sends a host at most one request per max(min_delay, Crawl-delay) seconds, so
over a window W it cannot send more than sum over hosts of (floor(W / d_h) + 1) requests: the
politeness bound, a line the measurement must never cross whatever the crawler's speed. With few
hosts the bound is what limits the crawl (pages/s = N / d, linear in N); with many, the
crawler's own speed (one process, a shared CPU) may bend the curve below the line.

Hosts are websim's own (the running stack's), chosen from its /hosts listing: normal robots.txt,
no trap, the most pages, so a host does not run dry within the window. Each level starts one
crawl of N seeds (scope: their own hosts) through the control API, pauses and cancels it after the
window, and reads websim's request log for those hosts: requests per second over the window,
and politeness violations judged from websim's side (start-to-start gaps shorter than the
host's delay, less 5 ms).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from typing import Any

import httpx

from loadtests.experiments import report as rp
from loadtests.experiments.scrape import Snapshot

NAME = "crawler-hosts"
TITLE = "Crawler: pages/s against the number of hosts, under the politeness bound"
QUESTION = (
    "How does crawl throughput scale with the number of hosts, and does it ever cross the politeness bound?"
)
NEEDS = ("crawler", "websim")
TOLERANCE_S = 0.005


def candidate_hosts(websim: str) -> list[dict[str, Any]]:
    hosts = httpx.get(f"{websim}/hosts", timeout=30).json()["hosts"]
    ok = [
        h
        for h in hosts
        if h["robots"] == "normal"
        and h["robots_status"] == 200
        and not h["trap"]
        and not h.get("robots_slow_s")
    ]
    return sorted(ok, key=lambda h: (-h["page_count"], h["host"]))


def host_log(websim: str, host: str, since_ts: float) -> list[dict[str, Any]]:
    text = httpx.get(f"{websim}/log", params={"host": host}, timeout=30).text
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [e for e in entries if e["ts"] >= since_ts]


def violations(entries: list[dict[str, Any]], delay: float) -> int:
    times = sorted(e["ts"] for e in entries)
    return sum(1 for a, b in itertools.pairwise(times) if b - a < delay - TOLERANCE_S)


def run(ctx: Any) -> rp.Report:
    crawler, websim = ctx.target.url("crawler"), ctx.target.url("websim")
    report = rp.Report(NAME, TITLE, QUESTION)
    smoke = ctx.smoke
    min_delay = 0.2 if smoke else 0.5
    window = 2.0 if smoke else 4.0
    hosts = candidate_hosts(websim)
    levels = [n for n in ([1, 4] if smoke else [1, 2, 4, 8, 16, 32]) if n <= len(hosts)]
    if not smoke and len(hosts) not in levels and len(hosts) > levels[-1] // 2:
        levels = [n for n in levels if n < len(hosts)] + [len(hosts)]

    def delay_of(h: dict[str, Any]) -> float:
        return max(min_delay, h["crawl_delay"] or 0.0)

    def bound(chosen: list[dict[str, Any]]) -> float:
        return sum(math.floor(window / delay_of(h)) + 1 for h in chosen) / window

    report.predict(
        "A polite crawler is bound by sum(1 / delay) over its hosts: pages/s grows linearly with the "
        "number of hosts until the crawler's own speed limits it; it never crosses the bound.",
        f"min_delay {min_delay} s (or the host's Crawl-delay if longer), window {window} s. "
        "Bound on requests/s "
        + ", ".join(f"{n} hosts: {bound(hosts[:n]):.1f}" for n in levels)
        + ". Prediction: measured requests/s within 0.7-1.0x of the bound while the bound is below the "
        "crawler's own limit, never above it; 0 politeness violations at every level.",
        bound_requests_per_s={str(n): round(bound(hosts[:n]), 2) for n in levels},
        min_delay_s=min_delay,
        window_s=window,
    )
    total_violations = 0
    with httpx.Client(base_url=crawler, timeout=60) as api:
        for n in levels:
            chosen = hosts[:n]
            names = [h["host"] for h in chosen]
            time.sleep(max(delay_of(h) for h in chosen) + 0.1)  # no gap shorter than a delay across crawls
            before_crawler, before_websim = Snapshot.take(crawler), Snapshot.take(websim)
            t_start = time.time()
            body = {
                "seeds": [f"http://{h}/" for h in names],
                "max_pages": 100_000,
                "politeness": {"min_delay": min_delay},
            }
            created = api.post("/v1/crawls", json=body)
            created.raise_for_status()
            crawl_id = created.json()["crawl_id"]
            time.sleep(window + 0.5)
            # Pause first (no new requests; in-flight ones finish), so every request the crawler
            # counted has reached websim and been answered before the counts are compared.
            api.post(f"/v1/crawls/{crawl_id}/pause").raise_for_status()
            deadline = time.monotonic() + 30
            while api.get(f"/v1/crawls/{crawl_id}").json()["in_flight"] and time.monotonic() < deadline:
                time.sleep(0.05)
            api.post(f"/v1/crawls/{crawl_id}/cancel").raise_for_status()
            status = api.get(f"/v1/crawls/{crawl_id}").json()
            crawler_delta = Snapshot.take(crawler) - before_crawler
            websim_delta = Snapshot.take(websim) - before_websim
            logs = {h: host_log(websim, h, t_start) for h in names}
            entries = [e for es in logs.values() for e in es]
            t0 = min((e["ts"] for e in entries), default=t_start)
            in_window = sum(1 for e in entries if e["ts"] < t0 + window)
            viol = sum(violations(logs[h["host"]], delay_of(h)) for h in chosen)
            total_violations += viol
            measured = in_window / window
            row = {
                "hosts": n,
                "bound_req_s": round(bound(chosen), 2),
                "asymptote_req_s": round(sum(1 / delay_of(h) for h in chosen), 2),
                "measured_req_s": round(measured, 2),
                "of_bound": round(measured / bound(chosen), 3),
                # The bound again, capped per host by what it can serve at all in the window:
                # robots.txt, every page and every redirect once.
                "supply_req_s": round(
                    sum(
                        min(math.floor(window / delay_of(h)) + 1, 1 + h["page_count"] + h["redirects"])
                        for h in chosen
                    )
                    / window,
                    2,
                ),
                "pages_200": status["stats"]["statuses"].get("200", 0),
                "requests_total": len(entries),
                "violations": viol,
                "live_violation_counter": websim_delta.value("websim_politeness_violations_total"),
            }
            report.rows.append(row)
            report.check(
                f"requests to the {n} hosts: crawler counter vs websim log",
                sum(crawler_delta.value("crawler_host_requests_total", host=h) for h in names),
                len(entries),
            )
            report.check(
                f"pages fetched 200 ({n} hosts): crawl status vs websim log",
                status["stats"]["statuses"].get("200", 0),
                sum(1 for e in entries if e["status"] == 200 and e["kind"] != "robots"),
            )
            print(
                f"   {n:>3} hosts: {measured:6.1f} req/s (bound {row['bound_req_s']}), violations {viol}",
                flush=True,
            )
    _conclude(report, total_violations)
    _plot(report, ctx.out, min_delay)
    return report


def _conclude(report: rp.Report, total_violations: int) -> None:
    rows = report.rows
    crossed = [r for r in rows if r["measured_req_s"] > r["bound_req_s"] + 1e-9]
    near = [r for r in rows if r["of_bound"] >= 0.7]
    limited = [r["hosts"] for r in rows if r["of_bound"] < 0.7]
    peak = max(rows, key=lambda r: r["measured_req_s"])
    ok = not crossed and total_violations == 0 and bool(near)
    if limited:
        first = next(r for r in rows if r["hosts"] == limited[0])
        why = (
            f"many hosts ran out of pages: capped by what each host holds, the bound is "
            f"{first['supply_req_s']} requests/s, and the crawl reached "
            f"{first['measured_req_s'] / first['supply_req_s']:.0%} of that"
            if first["supply_req_s"] < 0.9 * first["bound_req_s"]
            else "the crawler's own limit on this machine"
        )
        tail = f"fell below 0.7x of it from {limited[0]} hosts on ({why})"
    else:
        tail = "stayed there at every level"
    report.conclude(
        ok,
        f"The measurement never crossed the politeness bound ({len(crossed)} levels above it), with "
        f"{total_violations} politeness violations in websim's log. It tracked the bound within 0.7-1.0x "
        f"{'up to ' + str(near[-1]['hosts']) + ' hosts' if near else 'nowhere'} and {tail}; "
        f"peak {peak['measured_req_s']} requests/s with {peak['hosts']} hosts.",
        "Politeness caps a crawl per host, so throughput comes from breadth: more hosts, not more "
        "speed per host. Past the point where the crawler itself saturates, more hosts only lengthen "
        "queues; that is where more crawler workers (host partitions) pay.",
    )


def _plot(report: rp.Report, out: Any, min_delay: float) -> None:
    rows = report.rows
    fig, axes = rp.figure(1, 1, size=(8, 5))
    ax = axes[0][0]
    x = [r["hosts"] for r in rows]
    ax.plot(x, [r["bound_req_s"] for r in rows], "--", color="red", label="politeness bound (window)")
    ax.plot(x, [r["asymptote_req_s"] for r in rows], ":", color="grey", label="sum 1/delay")
    ax.plot(x, [r["measured_req_s"] for r in rows], "o-", label="measured requests/s (websim log)")
    ax.plot(
        x, [r["supply_req_s"] for r in rows], "x:", color="green", label="bound capped by each host's pages"
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hosts crawled at once")
    ax.set_ylabel("requests/s")
    ax.set_title(f"min_delay {min_delay} s; violations: {sum(r['violations'] for r in rows)}")
    ax.legend()
    rp.save(fig, report, out, "crawler_hosts.png")
