"""Chaos Toolkit probes: read-only looks at the stack through its public HTTP APIs.

Each is a plain function an experiment names (`"provider": {"type": "python", "module":
"loadtests.drills.probes", "func": ...}`); Chaos Toolkit passes the experiment's
`configuration` (port offset, ...) to any function that takes one. A probe that waits for
something raises ActivityFailed when it does not happen in time: the run records the failure
and the drill's verdict is FAIL, with the probe's message as the evidence.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections import Counter
from typing import Any

import httpx
from chaoslib.exceptions import ActivityFailed

from loadtests.drills import stack
from loadtests.drills.record import RECORD, figure, mark, since

Configuration = dict[str, Any]
TIMEOUT = httpx.Timeout(5.0)
POLL_S = 1.0


def _get(service: str, path: str, configuration: Configuration | None, **params: Any) -> Any:
    r = httpx.get(f"{stack.url(service, configuration)}{path}", params=params or None, timeout=TIMEOUT)
    r.raise_for_status()
    return r.json()


# -- the stack is up ---------------------------------------------------------------------------


def service_healthy(service: str, configuration: Configuration | None = None) -> bool:
    """The service answers its health check (Redis: PING)."""
    try:
        if service == "redis":
            import redis

            client = redis.Redis.from_url(stack.url("redis", configuration), socket_timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()
        path = "/-/ready" if service == "prometheus" else "/healthz"
        r = httpx.get(f"{stack.url(service, configuration)}{path}", timeout=TIMEOUT)
        return r.status_code == 200
    except Exception:
        return False


def services_healthy(services: list[str], configuration: Configuration | None = None) -> bool:
    return all(service_healthy(s, configuration) for s in services)


def wait_healthy(service: str, timeout_s: float = 120.0, configuration: Configuration | None = None) -> dict:
    """Wait until the service answers again; marks `recovered`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service_healthy(service, configuration):
            at = mark("recovered")
            figure(
                "time_to_recover_s", since("fault_end" if "fault_end" in RECORD.marks else "fault_start", at)
            )
            return {"service": service, "recovered_after_s": RECORD.figures["time_to_recover_s"]}
        time.sleep(0.5)
    raise ActivityFailed(f"{service} not healthy {timeout_s:.0f}s after the fault")


# -- Prometheus --------------------------------------------------------------------------------


def prom_query(query: str, configuration: Configuration | None = None) -> float | None:
    """The first sample of an instant query, None when it has no result."""
    data = _get("prometheus", "/api/v1/query", configuration, query=query)["data"]["result"]
    return float(data[0]["value"][1]) if data else None


def _names(alertname: str) -> set[str]:
    """`"ServiceDown|WorkerHeartbeatMissing"`: any of these alerts will do."""
    return {n.strip() for n in alertname.split("|") if n.strip()}


def alert_states(alertname: str, configuration: Configuration | None = None) -> list[str]:
    return [state for _, state in _alerts(alertname, configuration)]


def _alerts(alertname: str, configuration: Configuration | None) -> list[tuple[str, str]]:
    names = _names(alertname)
    alerts = _get("prometheus", "/api/v1/alerts", configuration)["data"]["alerts"]
    return [(a["labels"]["alertname"], a["state"]) for a in alerts if a["labels"].get("alertname") in names]


def alert_inactive(alertname: str, wait_s: float = 0.0, configuration: Configuration | None = None) -> bool:
    """No instance of the alert is pending or firing (steady state). With wait_s, give an alert
    left over from an earlier drill that long to resolve (alerts over 5m windows outlive a fault)."""
    deadline = time.monotonic() + wait_s
    while alert_states(alertname, configuration):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def alert_rules(configuration: Configuration | None = None) -> dict[str, dict[str, Any]]:
    groups = _get("prometheus", "/api/v1/rules", configuration)["data"]["groups"]
    return {r["name"]: r for g in groups for r in g["rules"] if r.get("type") == "alerting"}


def wait_for_alert(
    alertname: str, timeout_s: float = 180.0, configuration: Configuration | None = None
) -> dict[str, Any]:
    """Wait until the alert fires; marks `detected` and the figure time_to_detect_s."""
    rules = alert_rules(configuration)
    names = _names(alertname)
    if not names & set(rules):
        figure("alert", f"{alertname}: no such rule")
        raise ActivityFailed(f"Prometheus has no alerting rule named {alertname} loaded")
    holds = {n: rules[n].get("duration", 0) for n in names if n in rules}
    deadline = time.monotonic() + timeout_s
    seen_pending = False
    while time.monotonic() < deadline:
        active = _alerts(alertname, configuration)
        if any(state == "pending" for _, state in active) and not seen_pending:
            seen_pending = True
            mark("alert pending")
        if firing := sorted({name for name, state in active if state == "firing"}):
            at = mark("detected")
            figure("alert", ",".join(firing))
            figure("time_to_detect_s", since("fault_start", at))
            return {
                "alert": alertname,
                "state": "firing",
                "after_fault_s": RECORD.figures["time_to_detect_s"],
            }
        time.sleep(POLL_S)
    figure("alert", f"{alertname} never fired" + (" (pending only)" if seen_pending else ""))
    raise ActivityFailed(
        f"alert {alertname} did not fire within {timeout_s:.0f}s"
        + (" (it was pending)" if seen_pending else " (never even pending)")
        + f"; its rule holds for {holds} s before firing"
    )


def wait_for_alert_resolved(
    alertname: str, timeout_s: float = 300.0, configuration: Configuration | None = None
) -> dict[str, Any]:
    """Wait until no instance of the alert is pending or firing; marks `alert resolved`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alert_states(alertname, configuration):
            at = mark("alert resolved")
            figure("alert_resolved_after_fault_end_s", since("fault_end", at))
            return {"alert": alertname, "state": "resolved", "after_fault_end_s": since("fault_end", at)}
        time.sleep(POLL_S)
    raise ActivityFailed(f"alert {alertname} still active {timeout_s:.0f}s later")


def wait_for_mark(event: str, timeout_s: float = 300.0) -> dict[str, Any]:
    """Wait until an activity running in the background marks `event` (e.g. fault_end)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if event in RECORD.marks:
            return {"event": event, "at": RECORD.marks[event]}
        time.sleep(0.2)
    raise ActivityFailed(f"{event} not reached within {timeout_s:.0f}s")


# -- websim's judge ----------------------------------------------------------------------------


def judge(configuration: Configuration | None = None) -> dict[str, Any]:
    return _get("websim", "/judge", configuration)


# -- the crawler -------------------------------------------------------------------------------


def crawl_status(configuration: Configuration | None = None) -> dict[str, Any]:
    crawl_id = RECORD.state["crawl_id"]
    return _get("crawler", f"/v1/crawls/{crawl_id}", configuration)


def wait_crawl_finished(timeout_s: float = 300.0, configuration: Configuration | None = None) -> dict:
    """Wait for the drill's crawl to finish; its figures: pages fetched, emitted, duplicates."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            status = crawl_status(configuration)
        except (httpx.HTTPError, KeyError):
            time.sleep(POLL_S)
            continue
        if status["state"] not in ("pending", "running", "paused"):
            break
        time.sleep(POLL_S)
    else:
        raise ActivityFailed(f"crawl not finished after {timeout_s:.0f}s: {status.get('state')}")
    if status["state"] != "finished":
        raise ActivityFailed(f"crawl ended {status['state']}: {status.get('error')}")
    mark("crawl finished")
    figure("pages_fetched", status["stats"]["fetched"])
    figure("pages_emitted", status["stats"]["pages_emitted"])
    return {"state": status["state"], "stats": status["stats"]}


FINAL = frozenset(range(200, 500)) - {408, 425, 429}  # websim's judge: a final answer


def no_page_refetched(grace_s: float = 2.0, configuration: Configuration | None = None) -> dict[str, Any]:
    """websim counts every resource fetched again after a final answer. A restart may refetch
    what was in flight when the process died (its outcome never reached the store), nothing
    more: from websim's log, each refetched page's first final answer must have come at most
    `grace_s` before the kill (the response was on its way or being recorded). A count of
    requests in flight read before the kill cannot say that: new ones start in between (it
    read 0 and one page was refetched, once in a CI run)."""
    verdict = judge(configuration)
    killed_at = RECORD.marks.get("fault_start", float("inf"))
    r = httpx.get(f"{stack.url('websim', configuration)}/log", timeout=httpx.Timeout(30.0))
    r.raise_for_status()
    answered: dict[str, float] = {}  # page id -> time of its first final answer
    in_flight, late = 0, []
    entries = [json.loads(line) for line in r.text.splitlines() if line]
    for e in sorted(entries, key=lambda e: e["seq"]):
        pid = e.get("page_id")
        if pid is None:
            continue
        if pid in answered:
            if answered[pid] >= killed_at - grace_s:
                in_flight += 1
            else:
                late.append(f"{e.get('host')}{e.get('path')}")
        elif e["status"] in FINAL:
            answered[pid] = e["ts"]
    figure("refetched_pages", verdict["duplicate_fetches"])
    figure("refetched_in_flight_at_kill", in_flight)
    if late:
        raise ActivityFailed(
            f"{len(late)} pages fetched again though answered more than {grace_s:g}s before the"
            f" kill, e.g. {late[:3]}"
        )
    return verdict


def crawl_polite(configuration: Configuration | None = None) -> dict[str, Any]:
    """websim's judge over the drill's crawl: 0 robots and 0 politeness violations."""
    verdict = judge(configuration)
    figure("robots_violations", verdict["robots_violations"])
    figure("politeness_violations", verdict["politeness_violations"])
    if verdict["robots_violations"] or verdict["politeness_violations"]:
        raise ActivityFailed(
            f"websim judged {verdict['robots_violations']} robots and "
            f"{verdict['politeness_violations']} politeness violations"
        )
    return verdict


def crawl_stops_with_clear_error(
    timeout_s: float = 60.0, pause_only: bool = True, configuration: Configuration | None = None
) -> dict:
    """On a full disk the crawl stops taking new work and says why (not a silent stall): its
    state turns paused (or failed, unless pause_only) with an error naming the disk."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = crawl_status(configuration)
        # a paused crawl says why in paused_reason ("disk full: PATH"); a failed one in error
        error = str(status.get("paused_reason") or status.get("error") or "")
        if status["state"] in ("paused", "failed") or error:
            at = mark("detected")
            figure("time_to_detect_s", since("fault_start", at))
            figure("crawl_state_on_full_disk", status["state"])
            figure("crawl_error", error[:120] or "-")
            if not any(w in error.lower() for w in ("space", "disk", "full")):
                raise ActivityFailed(
                    f"the crawl stopped ({status['state']}) without naming the disk: {error!r}"
                )
            if pause_only and status["state"] != "paused":
                raise ActivityFailed(
                    f"the crawl ended {status['state']!r} on a full disk ({error[:80]}): a pause was "
                    "expected, one that resumes when space returns"
                )
            return {"state": status["state"], "error": error}
        if status["state"] == "finished":
            break
        time.sleep(POLL_S)
    figure("crawl_state_on_full_disk", status.get("state"))
    raise ActivityFailed(f"the crawl went on as {status.get('state')!r} with a full disk and no error")


def wait_crawl_resumes(timeout_s: float = 30.0, configuration: Configuration | None = None) -> dict:
    """After the space returns the crawl runs again by itself (no operator action)."""
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        state = crawl_status(configuration)["state"]
        if state in ("running", "finished"):
            at = mark("recovered")
            figure("time_to_recover_s", since("fault_end", at))
            return {"state": state}
        time.sleep(POLL_S)
    raise ActivityFailed(f"the crawl stayed {state!r} {timeout_s:.0f}s after space returned")


def store_intact(configuration: Configuration | None = None) -> dict[str, Any]:
    """The crawl's SQLite store passes `PRAGMA integrity_check` (read-only, from outside)."""
    import sqlite3

    from loadtests.drills.actions import crawler_data_dir

    path = crawler_data_dir(configuration) / f"{RECORD.state['crawl_id']}.sqlite"
    if not path.exists():
        raise ActivityFailed(f"no store at {path}")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        result = db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()
    figure("store_integrity", result)
    if result != "ok":
        raise ActivityFailed(f"store {path.name} corrupted: {result}")
    return {"store": str(path), "integrity_check": result}


# -- dedup -------------------------------------------------------------------------------------


def dedup_stats(configuration: Configuration | None = None) -> dict[str, Any]:
    return _get("dedup", "/v1/stats", configuration)


def _served_pages(configuration: Configuration | None) -> set[str]:
    """HTML pages websim answered 2xx during the drill (its log was cleared at the start): each
    is a page event the crawler must deliver (PDFs and images are fetched, never emitted)."""
    base = stack.url("websim", configuration)
    r = httpx.get(f"{base}/log", timeout=httpx.Timeout(30.0))
    r.raise_for_status()
    kinds: dict[str, dict[str, str]] = {}  # host -> page_id -> kind
    urls = set()
    for line in r.text.splitlines():
        entry = json.loads(line) if line else {}
        if not (200 <= entry.get("status", 0) < 300 and entry.get("kind") == "page" and entry.get("page_id")):
            continue
        host = entry["host"]
        if host not in kinds:
            pages = httpx.get(f"{base}/hosts/{host}", timeout=TIMEOUT).json()["pages"]
            kinds[host] = {p["page_id"]: p["kind"] for p in pages}
        if kinds[host].get(entry["page_id"]) == "html":
            urls.add(f"http://{host}{entry['path'].split('#')[0]}")
    return urls


def _indexed(urls: set[str], configuration: Configuration | None) -> tuple[set[str], set[str]]:
    """(URLs dedup's index knows, URLs it holds more than once: the same page counted twice)."""
    base = stack.url("dedup", configuration)
    found, twice = set(), set()
    with httpx.Client(timeout=TIMEOUT) as http:
        for u in urls:
            r = http.get(f"{base}/v1/clusters", params={"url": u})
            if r.status_code == 200:
                found.add(u)
                if sum(1 for m in r.json()["members"] if u in (m["url"], m.get("final_url"))) > 1:
                    twice.add(u)
    return found, twice


def wait_events_delivered(timeout_s: float = 120.0, configuration: Configuration | None = None) -> dict:
    """Every page the drill's crawl fetched and emitted is in dedup's index, exactly once.

    The crawl started on hosts dedup had never indexed, so each of its pages must be new there:
    lost = HTML pages websim served whose URL dedup does not know after waiting for stragglers;
    counted twice = a URL that dedup's index holds as two pages (its cluster lists it twice).
    """
    served = _served_pages(configuration)
    deadline = time.monotonic() + timeout_s
    found: set[str] = set()
    twice: set[str] = set()
    while time.monotonic() < deadline:
        more, more_twice = _indexed(served - found, configuration)
        found |= more
        twice |= more_twice
        if found >= served:
            break
        time.sleep(2 * POLL_S)
    emitted = crawl_status(configuration)["stats"]["pages_emitted"]
    lost = sorted(served - found)
    figure("events_emitted", emitted)
    figure("pages_served", len(served))
    figure("events_lost", len(lost))
    figure("events_twice", len(twice))
    at = mark("events delivered")
    if "fault_end" in RECORD.marks:
        figure("delivered_after_fault_end_s", since("fault_end", at))
        RECORD.figures.setdefault("time_to_recover_s", RECORD.figures["delivered_after_fault_end_s"])
    problems = []
    if lost:
        problems.append(f"{len(lost)} of {len(served)} pages never reached dedup's index, e.g. {lost[:3]}")
    if twice:
        problems.append(f"{len(twice)} pages indexed twice, e.g. {sorted(twice)[:3]}")
    if problems:
        raise ActivityFailed("; ".join(problems))
    return {"served": len(served), "indexed": len(found), "emitted": emitted}


def stays_healthy(services: list[str], configuration: Configuration | None = None) -> dict[str, Any]:
    """Poll the services' health checks from fault_start to fault_end: a fault elsewhere must
    not take them down (run it in the background beside the fault)."""
    wait_for_mark("fault_start", 120)
    checks = failures = 0
    failed: Counter[str] = Counter()
    while "fault_end" not in RECORD.marks:
        for s in services:
            checks += 1
            if not service_healthy(s, configuration):
                failures += 1
                failed[s] += 1
        time.sleep(POLL_S)
    figure("health_checks_failed", f"{failures}/{checks}")
    if failures:
        raise ActivityFailed(f"health checks failed during the fault: {dict(failed)} of {checks}")
    return {"checks": checks, "failed": 0}


def retries_bounded(max_per_request: float = 0.5, configuration: Configuration | None = None) -> dict:
    """The crawl's retries stay within a share of its requests (a retry budget, no retry storm)."""
    stats = crawl_status(configuration)["stats"]
    figure("retries", stats["retries"])
    figure("requests", stats["requests"])
    figure("failed_urls", stats["failed"])
    if stats["retries"] > max_per_request * max(1, stats["requests"]):
        raise ActivityFailed(
            f"{stats['retries']} retries for {stats['requests']} requests: retries unbounded"
        )
    return {"retries": stats["retries"], "requests": stats["requests"]}


def delays_widened(min_ratio: float = 1.25, configuration: Configuration | None = None) -> dict[str, Any]:
    """The crawler backs off from a host that answers errors: the median gap before the next
    request after a 5xx on the hosts with faults is at least `min_ratio` times the median gap
    after a success on the hosts without (websim's log, per host; the latency toxic slows
    every host alike). Not merely longer: without any backoff the two differ by noise (1.29 vs
    1.31 s, 1.33 vs 1.34 s). The reference is the healthy hosts, not the faulty hosts' own gaps
    after a success: the backoff halves on a success, so those still carry it (1.38 s in one
    run, 2.00 s in another, with 2.34-2.38 s after a 5xx each time)."""
    r = httpx.get(f"{stack.url('websim', configuration)}/log", timeout=httpx.Timeout(30.0))
    r.raise_for_status()
    faulty = set(RECORD.state.get("faulty_hosts", []))
    by_host: dict[str, list[dict[str, Any]]] = {}
    for line in r.text.splitlines():
        entry = json.loads(line) if line else {}
        if entry.get("host") and entry.get("kind") != "robots":
            by_host.setdefault(entry["host"], []).append(entry)
    after_error: list[float] = []
    after_ok: list[float] = []  # faulty hosts, after a success (a figure, not the reference)
    healthy: list[float] = []  # hosts without faults, after a success
    for host, entries in by_host.items():
        entries.sort(key=lambda e: e["ts"])
        for a, b in itertools.pairwise(entries):
            gap = b["ts"] - a["ts"]
            if host not in faulty:
                if a["status"] < 400:
                    healthy.append(gap)
            elif a["status"] >= 500:
                after_error.append(gap)
            elif a["status"] < 400:
                after_ok.append(gap)
    if after_ok:
        figure("gap_after_2xx_faulty_s", round(statistics.median(after_ok), 2))
    return judge_backoff(after_error, healthy, min_ratio)


def judge_backoff(after_error: list[float], healthy: list[float], min_ratio: float) -> dict[str, Any]:
    """delays_widened's verdict on the gaps (seconds) after a 5xx and on the healthy hosts."""
    if not after_error or not healthy:
        raise ActivityFailed(
            f"too few requests to judge ({len(after_error)} gaps after a 5xx, {len(healthy)} on"
            " healthy hosts)"
        )
    err, ok = statistics.median(after_error), statistics.median(healthy)
    ratio = err / ok if ok > 0 else float("inf")
    figure("gap_after_5xx_s", round(err, 2))
    figure("gap_healthy_s", round(ok, 2))
    figure("gap_ratio", round(ratio, 2))
    if ratio < min_ratio:
        raise ActivityFailed(
            f"median gap after a 5xx {err:.2f} s is {ratio:.2f}x the gap on healthy hosts {ok:.2f} s "
            f"(< {min_ratio:g}x): the crawler did not back off"
        )
    return {"after_5xx_s": err, "healthy_s": ok, "ratio": ratio, "pairs": len(after_error) + len(healthy)}


# -- inference ---------------------------------------------------------------------------------

ADMIN = {"Authorization": "Bearer dev-admin-key"}


def inference_state(configuration: Configuration | None = None) -> dict[str, Any]:
    r = httpx.get(f"{stack.url('inference', configuration)}/v1/admin/state", headers=ADMIN, timeout=TIMEOUT)
    r.raise_for_status()
    return r.json()


def inference_admits(configuration: Configuration | None = None) -> bool:
    """A short interactive completion is answered 200 (the server takes work, not only health checks)."""
    r = httpx.post(
        f"{stack.url('inference', configuration)}/v1/completions",
        json={"prompt": "steady", "max_tokens": 4},
        headers={"Authorization": "Bearer dev-alice-key"},
        timeout=httpx.Timeout(30.0),
    )
    if r.status_code != 200:
        figure("fresh_request", f"{r.status_code} {r.json().get('error', {}).get('message', '')}"[:120])
    return r.status_code == 200


def inference_idle(configuration: Configuration | None = None) -> bool:
    """No sequence running or waiting, no KV block held, no work counted as queued (the baseline)."""
    return _idle(inference_state(configuration)["engine"])


def _idle(engine: dict[str, Any]) -> bool:
    backlog = sum(engine.get("backlog_tokens", {}).values())
    return (
        engine["running"] == 0 and engine["waiting"] == 0 and engine["kv_used_tokens"] == 0 and backlog == 0
    )


def wait_inference_idle(timeout_s: float = 30.0, configuration: Configuration | None = None) -> dict:
    """Wait for sequences and KV blocks back to baseline; figure time_to_recover_s."""
    deadline = time.monotonic() + timeout_s
    engine: dict[str, Any] = {}
    while time.monotonic() < deadline:
        engine = inference_state(configuration)["engine"]
        if _idle(engine):
            at = mark("recovered")
            figure("time_to_recover_s", since("fault_end", at))
            return {"engine": engine, "after_fault_end_s": RECORD.figures["time_to_recover_s"]}
        time.sleep(0.2)
    raise ActivityFailed(
        f"inference not back to baseline {timeout_s:.0f}s after the storm: running={engine.get('running')} "
        f"waiting={engine.get('waiting')} kv_used_tokens={engine.get('kv_used_tokens')} "
        f"backlog_tokens={engine.get('backlog_tokens')} (admission estimates queue wait from the backlog)"
    )


def overload_within_bounds(
    reject_p99_ms: float = 50.0,
    interactive_ttft_p95_s: float = 2.0,
    rss_growth_mb: float = 512.0,
) -> dict[str, Any]:
    """Under overload the server says no fast and keeps its promises to those it admits."""
    f = RECORD.figures
    problems = []
    if not f.get("rejected"):
        problems.append("nothing was rejected: the load did not overload the server")
    if f.get("reject_p99_ms", 0) > reject_p99_ms:
        problems.append(f"rejections p99 {f['reject_p99_ms']} ms > {reject_p99_ms} ms")
    if f.get("probe_rejected", 0) < 100:
        problems.append(f"the latency probe timed {f.get('probe_rejected', 0)} rejections: too few for a p99")
    if f.get("probe_doomed_admitted"):
        problems.append(f"{f['probe_doomed_admitted']} probe requests with a 1 ms deadline were admitted")
    if f.get("rejected_without_retry_after"):
        problems.append(f"{f['rejected_without_retry_after']} rejections without Retry-After")
    if f.get("server_errors_5xx"):
        problems.append(f"{f['server_errors_5xx']} answers were 5xx other than 503")
    if f.get("client_errors"):
        problems.append(f"transport errors: {f['client_errors']}")
    if (f.get("interactive_ttft_p95_s") or 0) > interactive_ttft_p95_s:
        problems.append(
            f"admitted interactive TTFT p95 {f['interactive_ttft_p95_s']} s > {interactive_ttft_p95_s} s"
        )
    growth = f.get("rss_max_mb", 0) - f.get("rss_before_mb", 0)
    if growth > rss_growth_mb:
        problems.append(f"RSS grew {growth:.0f} MiB > {rss_growth_mb:.0f} MiB")
    if problems:
        raise ActivityFailed("; ".join(problems))
    return {k: f.get(k) for k in ("reject_p99_ms", "interactive_ttft_p95_s", "rss_max_mb")}
