"""Crawler against its politeness bound, workers on Redis, and Redis memory per URL.

    .venv/bin/python benchmarks/bench_crawler_scale.py [--part PART|all] [--repeats 3]

bound    One process (`python -m services.crawler crawl`, SQLite) on websim webs, judged from
         websim's own request log. Per host the log gives the least time politeness allows for
         the requests it saw: the sum over consecutive requests of the gap the host requires,
         max(delay, robots Crawl-delay), or, after a 429/503 with Retry-After, the time until the
         server said to come back (from its response, so the response time counts). The bound of
         the crawl is the busiest host's ("critical path"); reported as bound / crawl span (first
         request to last response in the log) and bound / wall (process start to exit). Also the
         request-rate view: requests/s over the span / sum over hosts of 1/required gap.
         Webs: "binding" (50 hosts x 40 plain pages, delay 0.25 s), "retry_after" (the same with
         10% of pages answering 429/503 + Retry-After 1 s first), "mixed" (websim's default web).
workers  N = 1, 2, 4 worker processes (`python -m services.crawler worker --redis`) on one crawl in
         a redis-server of its own, on a web of 400 hosts of 2 pages (delay 0.25 s per host, pages
         answering in 50-150 ms, no redirects, robots plain). Each worker has a fixed capacity (4
         requests in flight): one worker is capacity-bound, four stay under the web's politeness
         bound (1600 requests/s; the busiest host's own chain of requests is a few seconds).
         Wall = crawl registered to crawl finished (workers started and holding their partitions
         before); scaling efficiency = pages/s at N / (N x pages/s at 1), printed beside the
         efficiency the politeness bound allows (no N workers beat the busiest host's own chain nor
         1/N of one worker's wall) and the workers' time runnable but waiting for a CPU
         (/proc/PID/task/*/schedstat: whether the run was CPU-bound on this box).
         Plot: reports/bench_crawler_scale.png.
bloom    The Redis store's optional Bloom filter in front of its exact seen-set: time to add N new
         URLs then the same N again, with and without it; its memory and counted false positives.
store-ops The SQLite store's work per page of a wide crawl (claim, start, content hash, finish
         with links), CPU and wall, the store of `--store-baseline` against this one.
sqlite   The SQLite store's crawl-wide questions (URLs per state, hosts with ready URLs) at 1M
         URLs: counters and an indexed lookup, against the full-table queries they replaced.
memory   Redis used_memory per URL for a smaller count, extrapolated linearly to 1M URLs:
         DISCOVERED URLs (seen-set entry, URL record, host queue entry, counters) added in
         batches, and URLs taken through claim/start/finish to FETCHED with a content hash;
         100 URLs per host (per-host keys are shared by a host's URLs).

Warm-up: one unmeasured round before the first measured one of each part. Median [min-max] over
`--repeats`. JSON: reports/bench_crawler_scale.json.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_crawler import WEBSIM, admin, run_measured  # noqa: E402

from libs.testkit.net import free_port, wait_for_port  # noqa: E402
from services.crawler.partitions import PartitionManager, cluster_view  # noqa: E402
from services.crawler.settings import CrawlConfig  # noqa: E402
from services.crawler.store import Finish, NewURL, Outcome, URLState  # noqa: E402
from services.crawler.store_redis import (  # noqa: E402
    RedisStore,
    configure_bloom,
    connect,
    crawl_state,
    register_crawl,
)
from services.crawler.urlnorm import host_of, normalize  # noqa: E402
from services.websim import SimConfig, WebSim  # noqa: E402
from services.websim import truth as websim_truth  # noqa: E402

PLAIN = {  # a web where politeness is the only limit: no robots variety, traps, transients, slow pages
    "transient_rate": 0.0,
    "slow_page_rate": 0.0,
    "crawl_delay_rate": 0.0,
    "huge_page_rate": 0.0,
    "trap_rate": 0.0,
    "robots_mix": {},
}
BOUND_WEBS: dict[str, dict[str, Any]] = {
    "binding": {"knobs": {**PLAIN, "min_pages": 40, "max_pages": 40}, "hosts": 50, "delay": 0.25},
    "retry_after": {
        "knobs": {**PLAIN, "min_pages": 25, "max_pages": 25, "transient_rate": 0.1, "retry_after_s": 1},
        "hosts": 50,
        "delay": 0.25,
    },
    "mixed": {"knobs": {}, "hosts": 100, "delay": 0.1},
}
DEPTH = 8
WORKER_WEB = {
    **PLAIN,
    "min_pages": 2,
    "max_pages": 2,
    "redirect_rate": 0.0,  # redirect hops are requests: with them a host needed ~17 requests
    "slow_page_rate": 1.0,
    "slow_page_max_s": 0.15,
}
WORKER_HOSTS, WORKER_DELAY, WORKER_CONCURRENCY = 400, 0.25, 4
WORKER_COUNTS = (1, 2, 4)


def median_spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def cell(d: dict[str, float], fmt: str = ".3g") -> str:
    return f"{d['median']:{fmt}} [{d['min']:{fmt}}-{d['max']:{fmt}}]"


def start_websim(knobs: dict[str, Any]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WEBSIM, json.dumps(knobs), str(port)], env=env, stdout=subprocess.DEVNULL
    )
    wait_for_port(port, timeout=60)
    return proc, port


def fetched_pages(entries: list[dict[str, Any]]) -> set[str]:
    return {e["page_id"] for e in entries if e["status"] == 200 and e["kind"] in ("page", "calendar")}


def log_entries(port: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in admin(port, "/log").splitlines() if line.strip()]


# -- (a) one process against the politeness bound ----------------------------------------------


def asked_until(e: dict[str, Any]) -> float | None:
    """When an answer's Retry-After said to come back (the log's clock): websim sends seconds on
    429 and an HTTP date (whole seconds, now + Retry-After + 1) on 503, both counted from its
    response, and logs the time either names (`retry_until`)."""
    until = e.get("retry_until")
    return None if until is None else float(until)


def politeness_bound(sim: WebSim, entries: list[dict[str, Any]], delay: float) -> dict[str, Any]:
    by_host: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        by_host[e["host"]].append(e)
    critical = 0.0
    rate_bound = 0.0
    violations = 0
    busiest: dict[str, Any] = {}
    first_ts = min(e["ts"] for e in entries)
    last_end = max(e["ts"] + e["duration_s"] for e in entries)
    for host, items in by_host.items():
        items.sort(key=lambda e: e["ts"])
        required = max(delay, websim_truth.required_delay(sim.web, host) or 0.0)
        rate_bound += 1.0 / required
        least = 0.0
        over_response = over_other = 0.0  # time past each required gap: in the response, after it
        for a, b in itertools.pairwise(items):
            until = asked_until(a)
            gap = required if until is None else max(required, until - a["ts"])
            least += gap
            violations += b["ts"] - a["ts"] < gap - 0.005
            over = max(0.0, (b["ts"] - a["ts"]) - gap)
            in_response = min(over, a["duration_s"]) if until is None else 0.0
            over_response += in_response
            over_other += over - in_response
        if least > critical:
            critical = least
            # Where the span goes, for the host that sets the bound: its first request's start
            # after the crawl's, the time its gaps ran past politeness (the previous response's
            # own duration, else anything else: scheduling, store, discovery), and the crawl's
            # tail after its last response.
            busiest = {
                "host": host,
                "requests": len(items),
                "required_gap_s": required,
                "start_offset_s": items[0]["ts"] - first_ts,
                "over_in_response_s": over_response,
                "over_other_s": over_other,
                "tail_s": last_end - (items[-1]["ts"] + items[-1]["duration_s"]),
                "last_duration_s": items[-1]["duration_s"],
            }
    return {
        "bound_s": critical,
        "span_s": last_end - first_ts,
        "rate_bound": rate_bound,
        "violations_incl_retry_after": violations,
        "busiest": busiest,
    }


def part_bound(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    first = True
    for name, spec in BOUND_WEBS.items():
        if args.webs and name not in args.webs:
            continue
        hosts, delay = spec["hosts"], spec["delay"]
        knobs = {"hosts": hosts, "seed": args.seed, **spec["knobs"]}
        sim = WebSim(SimConfig(**knobs))
        seeds = sim.seeds(hosts)
        truth = sim.ground_truth(seeds, max_depth=DEPTH)
        server, port = start_websim(knobs)
        rows = []
        try:
            with tempfile.TemporaryDirectory() as tmp:
                rounds = (["warmup"] if first else []) + ["measure"] * args.repeats
                first = False
                for i, phase in enumerate(rounds):
                    admin(port, "/reset", "POST")
                    cmd = [
                        sys.executable, "-m", "services.crawler", "crawl", *seeds,
                        "--scope", "*.sim.test", "--resolve", f"*.sim.test=127.0.0.1:{port}",
                        "--store", f"{tmp}/run{i}.sqlite", "--max-depth", str(DEPTH),
                        "--min-delay", str(delay), "--no-progress",
                        "--retry-base", "0.2", "--retry-cap", "2",
                    ]  # fmt: skip
                    wall, rss, rc, _cpu = run_measured(cmd)
                    entries = log_entries(port)
                    b = politeness_bound(sim, entries, delay)
                    pages = fetched_pages(entries)
                    row = {
                        "wall_s": wall,
                        "exit": rc,
                        "pages": len(pages),
                        "coverage": len(pages) / len(truth),
                        "requests": len(entries),
                        **b,
                        "bound_over_span": b["bound_s"] / b["span_s"],
                        "bound_over_wall": b["bound_s"] / wall,
                        "rate_fraction": len(entries) / b["span_s"] / b["rate_bound"],
                        "peak_rss_mib": rss,
                    }
                    print(
                        f"bound {name} {phase}: {row['pages']} pages, {row['requests']} requests,"
                        f" wall {wall:.1f}s, bound {b['bound_s']:.1f}s, span {b['span_s']:.1f}s;"
                        f" busiest host: {json.dumps(b['busiest'])}",
                        file=sys.stderr,
                    )
                    if phase == "measure":
                        rows.append(row)
        finally:
            server.terminate()
            server.wait(10)
        keys = ["wall_s", "span_s", "bound_s", "bound_over_span", "bound_over_wall", "rate_fraction",
                "pages", "coverage", "requests", "violations_incl_retry_after"]  # fmt: skip
        summary = {k: median_spread([r[k] for r in rows]) for k in keys}
        out[name] = {"hosts": hosts, "delay": delay, "knobs": spec["knobs"], "truth_pages": len(truth),
                     "runs": rows, "summary": summary}  # fmt: skip
    print(f"\n[bound] one crawler process, {args.repeats} repeats, median [min-max]")
    print(f"{'metric':<30}" + "".join(f"{n:>26}" for n in out))
    for k in next(iter(out.values()))["summary"]:
        print(f"{k:<30}" + "".join(f"{cell(out[n]['summary'][k]):>26}" for n in out))
    return out


# -- (b) workers on Redis ---------------------------------------------------------------------


def start_redis(port: int, tmp: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", tmp],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_port(port, timeout=30)
    return proc


def wait_until(what: str, cond: Any, timeout: float, procs: list[subprocess.Popen[bytes]] = ()) -> None:  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a worker exited ({p.returncode}) while waiting for {what}")
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sched_s(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of a running process, all its
    threads, from /proc/PID/task/*/schedstat: the wait is the time the box's CPUs were busy
    with something else while the process had work (threads that ended are not counted)."""
    run = wait = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            on_cpu, queued, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        run += int(on_cpu)
        wait += int(queued)
    return run / 1e9, wait / 1e9


# Round trips to Redis, counted inside each worker process (any checkout: nothing in the crawler
# changes): a sitecustomize on the workers' PYTHONPATH wraps redis-py's Connection so that every
# send_packed_command (one per command, one per pipeline; each is followed by a read) is counted,
# and send_command records the command's name (EVALSHA with its script's SHA1); written as JSON
# at the process's exit. The count spans the worker's life: the crawl plus the second or two
# before (partitions balancing) and after it (until SIGTERM).
_RT_SITECUSTOMIZE = """
import atexit, collections, json, os
import redis.connection as _rc
_calls = collections.Counter()
_sent = [0]
_spc, _sc = _rc.AbstractConnection.send_packed_command, _rc.AbstractConnection.send_command
def _send_packed_command(self, command, check_health=True):
    _sent[0] += 1
    return _spc(self, command, check_health)
def _send_command(self, *args, **kwargs):
    name = str(args[0]).upper() if args else "?"
    if name == "EVALSHA":
        name += ":" + str(args[1])
    _calls[name] += 1
    return _sc(self, *args, **kwargs)
_rc.AbstractConnection.send_packed_command = _send_packed_command
_rc.AbstractConnection.send_command = _send_command
@atexit.register
def _dump():
    out = os.environ.get("PG_BENCH_RT_OUT")
    if out:
        calls = dict(_calls)
        calls["(pipelines)"] = _sent[0] - sum(_calls.values())
        with open(f"{out}.{os.getpid()}.json", "w") as f:
            json.dump({"round_trips": _sent[0], "calls": calls}, f)
"""

# The names of the Lua scripts of a checkout, by SHA1 (to name EVALSHA in the counts).
_SCRIPT_NAMES = """
import hashlib, json
from services.crawler import partitions, store_redis
out = {}
for mod in (partitions, store_redis):
    for name, v in vars(mod).items():
        if isinstance(v, str) and "redis.call" in v:
            out[hashlib.sha1(v.encode()).hexdigest()] = name
print(json.dumps(out))
"""


def script_names(code_root: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    raw = subprocess.run(
        [sys.executable, "-c", _SCRIPT_NAMES], env=env, cwd=code_root, capture_output=True, check=True
    ).stdout
    return json.loads(raw)


def read_round_trips(prefix: str, names: dict[str, str]) -> dict[str, Any]:
    total = 0
    calls: dict[str, int] = defaultdict(int)
    for f in sorted(Path(prefix).parent.glob(Path(prefix).name + ".*.json")):
        d = json.loads(f.read_text())
        total += d["round_trips"]
        for k, v in d["calls"].items():
            if k.startswith("EVALSHA:"):
                k = "EVALSHA " + names.get(k.split(":", 1)[1], k.split(":", 1)[1][:8])
            calls[k] += v
        f.unlink()
    return {"round_trips": total, "calls": dict(sorted(calls.items(), key=lambda kv: -kv[1]))}


def workers_run(
    n: int,
    seeds: list[str],
    web_port: int,
    redis_url: str,
    tmp: str,
    tag: str,
    *,
    sim: WebSim | None = None,
    others: dict[str, int] | None = None,
    py_spy: str | None = None,
    code_root: Path = ROOT,
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`others`: name -> pid of the bench's other processes (websim, redis) whose CPU is counted.
    `code_root`: the checkout the workers run from (a baseline beside this one)."""
    client = connect(redis_url)
    client.flushall()
    others = others or {}
    other0 = {name: proc_cpu_s(pid) for name, pid in others.items()}
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    admin(web_port, "/reset", "POST")
    site = Path(tmp) / "rtcount"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_RT_SITECUSTOMIZE)
    rt_prefix = str(site / f"rt-{tag}")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{code_root}", "PG_BENCH_RT_OUT": rt_prefix}
    procs = []
    for k in range(n):
        cmd = [
            sys.executable, "-m", "services.crawler", "worker", "--redis", redis_url,
            "--worker-id", f"w{k}", "--partitions", "16", "--partition-lease", "2",
            "--resolve", f"*.sim.test=127.0.0.1:{web_port}", "--data-dir", f"{tmp}/{tag}-w{k}",
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd, env=env, cwd=code_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
    spy: subprocess.Popen[bytes] | None = None
    try:
        share = math.ceil(16 / n)

        def balanced() -> bool:
            view = cluster_view(client)
            owners: dict[str, int] = defaultdict(int)
            for p in view["partition_owners"]:
                if p["owner"]:
                    owners[p["owner"]] += 1
            alive = sum(1 for w in view["workers"] if w["alive"])
            return alive == n and sum(owners.values()) == 16 and max(owners.values()) <= share

        wait_until(f"{n} workers holding 16 partitions fairly", balanced, 60, procs)
        if py_spy:  # sample worker 0 (100 Hz, raw folded stacks) until it exits
            spy = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(procs[0].pid),
                 "-r", "100", "--nonblocking", "-f", "raw", "-o", f"{py_spy}.{tag}.txt"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        config = CrawlConfig.model_validate(
            {
                "seeds": seeds,
                "scope": ["*.sim.test"],
                "max_depth": DEPTH,
                "concurrency": WORKER_CONCURRENCY,
                "politeness": {"min_delay": WORKER_DELAY},
                "retry": {"base_delay": 0.2, "max_delay": 2.0},
            }
        )
        urls = [NewURL(u, host_of(u), 0) for u in (normalize(s) for s in seeds)]
        watched = {**{f"w{k}": p.pid for k, p in enumerate(procs)}, **others}
        sched0 = {name: sched_s(pid) for name, pid in watched.items()}
        t0 = time.perf_counter()
        register_crawl(client, "bench", config.model_dump_json(), urls, config.max_depth)
        wait_until("the crawl to finish", lambda: crawl_state(client, "bench") == "finished", 300, procs)
        wall = time.perf_counter() - t0
        sched1 = {name: sched_s(pid) for name, pid in watched.items()}
        other_cpu = {name: proc_cpu_s(pid) - other0[name] for name, pid in others.items()}
        used = int(client.info("memory")["used_memory"])
        counts = RedisStore(client, "bench").counts()
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if spy is not None:
            spy.wait(30)
        client.close()
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, reaped above
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    rts = read_round_trips(rt_prefix, names or {})
    entries = log_entries(web_port)
    pages = fetched_pages(entries)
    # Is the crawl bound by a host's own chain of requests (each waits the host's gap)? The
    # busiest host's least time by politeness, against the crawl's span in websim's log.
    chain = politeness_bound(sim, entries, WORKER_DELAY) if sim is not None else {}
    busy = cpu + sum(other_cpu.values())
    ran = {name: sched1[name][0] - sched0[name][0] for name in watched}
    waited = {name: sched1[name][1] - sched0[name][1] for name in watched}
    w_ran = sum(v for k, v in ran.items() if k not in others)
    w_waited = sum(v for k, v in waited.items() if k not in others)
    return {
        # Waiting for a CPU while runnable (schedstat), over the crawl: the workers' share of
        # their runnable time spent waiting says whether the run was CPU-bound (the box's 2
        # cores busy) rather than bound by politeness or by the workers' 4 requests in flight.
        "workers_on_cpu_s": w_ran,
        "workers_cpu_wait_s": w_waited,
        "workers_cpu_wait_fraction": w_waited / (w_ran + w_waited) if w_ran + w_waited else 0.0,
        **{f"{name}_cpu_wait_s": waited[name] for name in others},
        "workers": n,
        "workers_cpu_s": cpu,
        **{f"{name}_cpu_s": v for name, v in other_cpu.items()},
        # CPU of workers + websim + redis over the crawl, in cores (the box has os.cpu_count())
        "bench_cores_used": busy / wall,
        "cpu_count": os.cpu_count(),
        "chain_bound_s": chain.get("bound_s"),
        "span_s": chain.get("span_s"),
        "chain_over_wall": chain["bound_s"] / wall if chain else None,
        "busiest_host_requests": chain.get("busiest", {}).get("requests"),
        "loadavg_1m": os.getloadavg()[0],
        "wall_s": wall,
        "pages": len(pages),
        "fetched": counts["FETCHED"],
        "requests": len(entries),
        "pages_per_s": len(pages) / wall,
        "redis_used_memory": used,
        "workers_cpu_ms_per_page": 1000 * cpu / max(1, len(pages)),
        "round_trips": rts["round_trips"],
        "round_trips_per_page": rts["round_trips"] / max(1, len(pages)),
        "redis_calls": rts["calls"],
    }


def part_workers(args: argparse.Namespace) -> dict[str, Any]:
    knobs = {"hosts": WORKER_HOSTS, "seed": args.seed, **WORKER_WEB}
    if args.worker_pages:  # a web deeper per host (pages per host), the rest alike
        knobs.update(min_pages=args.worker_pages, max_pages=args.worker_pages)
    sim = WebSim(SimConfig(**knobs))
    seeds = sim.seeds(WORKER_HOSTS)
    truth = sim.ground_truth(seeds, max_depth=DEPTH)
    web, web_port = start_websim(knobs)
    redis_port = free_port()
    # variant name -> checkout: this one, and any --worker-code NAME=DIR run side by side with it
    variants = {"this": ROOT, **{v.split("=", 1)[0]: Path(v.split("=", 1)[1]) for v in args.worker_code}}
    names = {v: script_names(root) for v, root in variants.items()}
    by_variant: dict[str, dict[int, list[dict[str, Any]]]] = {
        v: {n: [] for n in WORKER_COUNTS} for v in variants
    }
    results = by_variant["this"]
    counts = [int(c) for c in args.worker_counts.split(",")] if args.worker_counts else list(WORKER_COUNTS)
    with tempfile.TemporaryDirectory() as tmp:
        redis = start_redis(redis_port, tmp)
        url = f"redis://127.0.0.1:{redis_port}/0"
        try:
            workers_run(2, seeds, web_port, url, tmp, "warmup")
            for r in range(args.repeats):  # interleaved: a slow patch of the box hits every N alike
                for n, (variant, root) in itertools.product(counts, variants.items()):
                    row = workers_run(
                        n, seeds, web_port, url, tmp, f"r{r}n{n}{variant}", sim=sim,
                        others={"websim": web.pid, "redis": redis.pid}, py_spy=args.py_spy,
                        code_root=root, names=names[variant],
                    )  # fmt: skip
                    row["coverage"] = row["pages"] / len(truth)
                    row["variant"] = variant
                    by_variant[variant][n].append(row)
                    top = ", ".join(
                        f"{k} {v / max(1, row['pages']):.2f}" for k, v in list(row["redis_calls"].items())[:8]
                    )
                    print(
                        f"[{variant}] workers {n} repeat {r}: {row['pages']} pages in {row['wall_s']:.1f}s"
                        f" = {row['pages_per_s']:.1f} pages/s;"
                        f" Redis round trips {row['round_trips_per_page']:.2f}"
                        f" a page ({top}); workers' CPU {row['workers_cpu_ms_per_page']:.2f} ms a page;"
                        f" workers' CPU {row['workers_cpu_s']:.1f}s,"
                        f" websim {row['websim_cpu_s']:.1f}s, redis {row['redis_cpu_s']:.1f}s"
                        f" ({row['bench_cores_used']:.2f} of {row['cpu_count']} cores),"
                        f" busiest host's chain {row['chain_bound_s']:.1f}s"
                        f" ({row['busiest_host_requests']} requests)"
                        f" = {row['chain_over_wall']:.2f} of the wall,"
                        f" workers waited for a CPU {row['workers_cpu_wait_s']:.1f}s"
                        f" ({row['workers_cpu_wait_fraction']:.0%} of their runnable time),"
                        f" websim {row['websim_cpu_wait_s']:.1f}s, redis {row['redis_cpu_wait_s']:.1f}s,"
                        f" box load {row['loadavg_1m']:.1f}",
                        file=sys.stderr,
                    )
        finally:
            redis.terminate()
            redis.wait(10)
            web.terminate()
            web.wait(10)
    summaries = {v: summarize_workers(res) for v, res in by_variant.items()}
    summary = summaries["this"]
    print(
        f"\n[workers] websim {WORKER_HOSTS} hosts, truth {len(truth)} pages, delay {WORKER_DELAY}s"
        f" (politeness bound {WORKER_HOSTS / WORKER_DELAY:.0f} requests/s), {WORKER_CONCURRENCY} in flight"
        f" per worker; {args.repeats} repeats, median [min-max]"
    )
    for v, summ in summaries.items():
        print(f"\n-- workers from {variants[v]} ({v})")
        print_workers(summ)
    print(
        "bound eff.: the efficiency the politeness bound allows, wall(1) / (N x max(busiest host's"
        " chain, wall(1)/N)); CPU wait: the workers' runnable time spent waiting for a CPU;"
        " RT/page: Redis round trips a page (all workers); CPU ms/page: the workers' CPU a page"
    )
    return {"hosts": WORKER_HOSTS, "delay": WORKER_DELAY, "concurrency": WORKER_CONCURRENCY,
            "truth_pages": len(truth), "runs": results, "summary": summary,
            "variants": {v: str(root) for v, root in variants.items()},
            "by_variant": {v: {"runs": by_variant[v], "summary": summaries[v]}
                           for v in variants}}  # fmt: skip


def summarize_workers(results: dict[int, list[dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    results = {n: rows for n, rows in results.items() if rows}
    base = statistics.median(r["pages_per_s"] for r in results[1])
    summary = {}
    for n, rows in results.items():
        summary[n] = {
            "round_trips_per_page": median_spread([r["round_trips_per_page"] for r in rows]),
            "workers_cpu_ms_per_page": median_spread([r["workers_cpu_ms_per_page"] for r in rows]),
            "pages_per_s": median_spread([r["pages_per_s"] for r in rows]),
            "wall_s": median_spread([r["wall_s"] for r in rows]),
            "coverage": median_spread([r["coverage"] for r in rows]),
            "efficiency": median_spread([r["pages_per_s"] / (n * base) for r in rows]),
            "workers_cpu_s": median_spread([r["workers_cpu_s"] for r in rows]),
            "websim_cpu_s": median_spread([r["websim_cpu_s"] for r in rows]),
            "redis_cpu_s": median_spread([r["redis_cpu_s"] for r in rows]),
            "bench_cores_used": median_spread([r["bench_cores_used"] for r in rows]),
            "chain_over_wall": median_spread([r["chain_over_wall"] for r in rows]),
            "loadavg_1m": median_spread([r["loadavg_1m"] for r in rows]),
            "workers_cpu_wait_fraction": median_spread([r["workers_cpu_wait_fraction"] for r in rows]),
            "chain_bound_s": median_spread([r["chain_bound_s"] for r in rows]),
            # The bound the efficiency is compared to: no N workers can beat the busiest host's
            # own chain (politeness) nor 1/N of one worker's wall; its efficiency is 1 unless the
            # chain binds (each repeat against its own 1-worker run).
            "bound_efficiency": median_spread(
                [
                    r1["wall_s"] / (n * max(r["chain_bound_s"], r1["wall_s"] / n))
                    for r, r1 in zip(rows, results[1], strict=True)
                ]
            ),
        }
    return summary


def print_workers(summary: dict[int, dict[str, Any]]) -> None:
    print(f"{'workers':<10}{'pages/s':>22}{'wall s':>22}{'coverage':>14}{'efficiency':>22}{'CPU s':>20}"
          f"{'cores used':>20}{'chain/wall':>20}{'bound eff.':>20}{'CPU wait':>20}{'RT/page':>20}"
          f"{'CPU ms/page':>20}{'load':>16}")  # fmt: skip
    for n, s in summary.items():
        print(f"{n:<10}{cell(s['pages_per_s']):>22}{cell(s['wall_s']):>22}{cell(s['coverage']):>14}"
              f"{cell(s['efficiency']):>22}{cell(s['workers_cpu_s']):>20}{cell(s['bench_cores_used']):>20}"
              f"{cell(s['chain_over_wall']):>20}{cell(s['bound_efficiency']):>20}"
              f"{cell(s['workers_cpu_wait_fraction']):>20}{cell(s['round_trips_per_page']):>20}"
              f"{cell(s['workers_cpu_ms_per_page']):>20}{cell(s['loadavg_1m'], '.2g'):>16}")  # fmt: skip


# -- (c) Redis memory per URL -----------------------------------------------------------------


def part_bloom(args: argparse.Namespace) -> dict[str, Any]:
    """The Redis store's optional Bloom filter (configure_bloom) against the exact seen-set alone:
    time to add N new URLs and then the same N again (500 a call, 500 hosts, 16 partitions), the
    filter's memory, and its false-positive rate as it counts it (at N / capacity full)."""
    n, capacity = args.bloom_urls, args.bloom_capacity
    port = free_port()
    hosts = [f"h{i}.sim.test" for i in range(500)]
    urls = [NewURL(f"http://{hosts[i % 500]}/p/{i}", hosts[i % 500], 1) for i in range(n)]
    times: dict[str, list[float]] = {"exact": [], "bloom": []}
    stats: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        redis = start_redis(port, tmp)
        client = connect(f"redis://127.0.0.1:{port}/0")
        try:
            mgr = PartitionManager(client, "bench", partitions=16, lease_seconds=600)
            mgr.tick()
            for rep, phase in enumerate(["warmup"] + ["measure"] * args.repeats):
                for name in ("exact", "bloom"):
                    crawl = f"{name}{rep}"
                    if name == "bloom":
                        configure_bloom(client, crawl, capacity)
                    store = RedisStore(client, crawl, mgr)
                    t0 = time.perf_counter()
                    for _ in range(2):  # new, then every URL seen again
                        for b in range(0, n, 500):
                            store.add(urls[b : b + 500], now=0)
                    if phase == "measure":
                        times[name].append(time.perf_counter() - t0)
                    if name == "bloom":
                        stats = store.bloom_stats() or {}
        finally:
            client.close()
            redis.terminate()
            redis.wait(10)
    out = {
        "urls": n,
        "capacity": capacity,
        "exact_s": median_spread(times["exact"]),
        "bloom_s": median_spread(times["bloom"]),
        "bloom": stats,
    }
    print(f"\n[bloom] {n} new URLs then the same again, {args.repeats} repeats, median [min-max]")
    print(f"exact seen-set only  {cell(out['exact_s'])} s")
    print(f"with Bloom filter    {cell(out['bloom_s'])} s   {stats}")
    return out


def part_sqlite(args: argparse.Namespace) -> dict[str, Any]:
    """The SQLite store's crawl-wide questions at a large table: URLs per state and the hosts with
    ready URLs, as they are answered now (counters kept by triggers; host_ready + a partial index)
    and as they were (COUNT(*) over the table; GROUP BY over urls_host_queue), on the same file.
    N URLs over N/100 hosts, 80% FETCHED, 20% DISCOVERED; median [min-max] of `--repeats` x 5."""
    import sqlite3

    from services.crawler.store_sqlite import SQLiteStore

    n = args.sqlite_urls
    hosts = max(1, n // 100)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.sqlite"
        store = SQLiteStore(path)
        store.close()
        raw = sqlite3.connect(path, isolation_level=None)
        t0 = time.perf_counter()
        raw.execute("BEGIN")
        raw.executemany(
            "INSERT INTO urls (url_key, url, host, depth, state, discovered_at) VALUES (?,?,?,?,?,0)",
            (
                (
                    hashlib.blake2b(f"http://h{i % hosts}.sim.test/p/{i}".encode(), digest_size=16).digest(),
                    f"http://h{i % hosts}.sim.test/p/{i}",
                    f"h{i % hosts}.sim.test",
                    1,
                    3 if i % 5 else 0,
                )
                for i in range(n)
            ),
        )
        raw.execute("COMMIT")
        raw.close()
        build_s = time.perf_counter() - t0
        store = SQLiteStore(path)
        db = store._db
        # the index the old question read (the store keeps an index by host alone since session 8)
        store._call(lambda: db.execute("CREATE INDEX urls_host_queue ON urls (host, state, depth, id)"))
        old_counts = "SELECT state, COUNT(*) FROM urls GROUP BY state"
        old_pending = (
            "SELECT host, MIN(not_before) FROM urls INDEXED BY urls_host_queue"
            " WHERE state IN (0,5) GROUP BY host"
        )
        plans = {
            q: [r[-1] for r in store._call(lambda q=q: list(db.execute("EXPLAIN QUERY PLAN " + q)))]
            for q in (old_counts, old_pending)
        }
        times: dict[str, list[float]] = {
            k: [] for k in ("counts_old", "counts_new", "pending_old", "pending_new")
        }
        answers: dict[str, Any] = {}
        try:
            for rep in range(args.repeats * 5 + 1):
                for name, fn in (
                    ("counts_old", lambda: store._call(lambda: list(db.execute(old_counts)))),
                    ("counts_new", store.counts),
                    ("pending_old", lambda: store._call(lambda: list(db.execute(old_pending)))),
                    ("pending_new", store.pending_hosts),
                ):
                    t = time.perf_counter()
                    answers[name] = fn()
                    if rep:  # the first round warms the page cache
                        times[name].append(time.perf_counter() - t)
        finally:
            store.close()
    same_counts = {URLState(s).name: c for s, c in answers["counts_old"]} == {
        k: v for k, v in answers["counts_new"].items() if v
    }
    same_pending = sorted(answers["pending_old"]) == sorted(answers["pending_new"])
    out = {
        "urls": n,
        "hosts": hosts,
        "build_s": build_s,
        "plans_old": plans,
        "same_answers": same_counts and same_pending,
        **{k: median_spread([v * 1000 for v in vs]) for k, vs in times.items()},
    }
    print(
        f"\n[sqlite] {n} URLs over {hosts} hosts (80% FETCHED), built in {build_s:.1f} s;"
        " ms, median [min-max]"
    )
    print(f"counts: COUNT(*) GROUP BY state {cell(out['counts_old'])}   counters {cell(out['counts_new'])}")
    print(
        f"pending hosts: GROUP BY host {cell(out['pending_old'])}"
        f"   host_ready + index {cell(out['pending_new'])}"
    )
    print(f"same answers: {out['same_answers']}")
    return out


def _store_pages(store: Any, pages: int, hosts: int, concurrent: bool, one_step: bool = False) -> None:
    """The store's share of a wide crawl: per page claim, start, first_with_content and finish
    with 4 links (2 new); one host turn at a time per host, 64 pages in flight when concurrent
    (the engine's path: the a* methods), else one after the other (the sync methods).
    `one_step`: the same work in two store steps a page, as the engine does it on SQLite since
    session 7 (aclaim_start with a starting rule; afinish_page with the content hash)."""
    import asyncio

    def links(url_id: int, host: str) -> list[NewURL]:
        return [NewURL(f"http://{host}/p/{url_id}/{k}", host, 1) for k in range(2)] + [
            NewURL(f"http://{host}/", host, 1),
            NewURL(f"http://{host}/p/{url_id}/0", host, 1),
        ]

    hostnames = [f"h{i}.sim.test" for i in range(hosts)]
    store.add([NewURL(f"http://{h}/", h, 0) for h in hostnames], now=0)

    def outcome(url_id: int) -> Outcome:
        return Outcome(URLState.FETCHED, status=200, content_sha256=f"{url_id:064x}", fetched_at=1.0)

    if not concurrent:
        done = 0
        for i in itertools.count():
            host = hostnames[i % hosts]
            rec = store.claim(host, "w", 60, now=1)
            if rec is None:
                continue
            store.start(rec.id, "w", 60, now=1)
            store.first_with_content(f"{rec.id:064x}", rec.id)
            store.finish(Finish(rec.id, outcome(rec.id), links(rec.id, host), now=1))
            done += 1
            if done >= pages:
                return

    async def worker(k: int) -> int:
        done = 0
        for i in itertools.count(k, 64):
            if done >= pages // 64:
                return done
            host = hostnames[i % hosts]
            if one_step:
                claimed = await store.aclaim_start(host, "w", 60, 1, lambda rec: True)
                rec = claimed.rec
                if rec is None:
                    continue
                await store.afinish_page(Finish(rec.id, outcome(rec.id), links(rec.id, host), now=1))
                done += 1
                continue
            rec = await store.aclaim(host, "w", 60, now=1)
            if rec is None:
                continue
            await store.astart(rec.id, "w", 60, now=1)
            await store.afirst_with_content(f"{rec.id:064x}", rec.id)
            await store.afinish(Finish(rec.id, outcome(rec.id), links(rec.id, host), now=1))
            done += 1
        return done

    async def main() -> None:
        await asyncio.gather(*(worker(k) for k in range(64)))

    asyncio.run(main())


def part_store_ops(args: argparse.Namespace) -> dict[str, Any]:
    """CPU and wall time of the store's work per page, the SQLite store of `--store-baseline`
    (a commit, default the one before the store moved to its thread) against this one."""
    import importlib.util
    import resource

    rev = args.store_baseline
    source = subprocess.run(
        ["git", "show", f"{rev}:services/crawler/store_sqlite.py"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    pages = args.store_pages
    names = ("before", "now", "now-2-steps")
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        old_path = Path(tmp) / "store_sqlite_before.py"
        old_path.write_bytes(source)
        spec = importlib.util.spec_from_file_location("store_sqlite_before", old_path)
        assert spec is not None and spec.loader is not None
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        from services.crawler.store_sqlite import SQLiteStore

        for rep in range(args.repeats + 1):
            for name in names:
                path = Path(tmp) / f"{name}{rep}.sqlite"
                store = old.SQLiteStore(path) if name == "before" else SQLiteStore(path)

                def cpu() -> float:
                    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
                    return r.ru_utime + r.ru_stime

                c0, t0 = cpu(), time.perf_counter()
                _store_pages(store, pages, 2000, concurrent=name != "before", one_step=name == "now-2-steps")
                store.close()
                if rep:
                    times[name].append((cpu() - c0, time.perf_counter() - t0))
    out: dict[str, Any] = {"pages": pages, "baseline": rev}
    for name, rows in times.items():
        out[name] = {
            "cpu_ms_per_page": median_spread([1000 * c / pages for c, _ in rows]),
            "pages_per_s": median_spread([pages / w for _, w in rows]),
        }
    print(
        f"\n[store-ops] {pages} pages (claim, start, first_with_content, finish + 4 links), median [min-max];"
        " now-2-steps: the same in two store steps a page (aclaim_start, afinish_page)"
    )
    for name in names:
        print(
            f"{name:<12} CPU ms/page {cell(out[name]['cpu_ms_per_page'])}"
            f"   store pages/s {cell(out[name]['pages_per_s'])}"
        )
    return out


def part_memory(args: argparse.Namespace) -> dict[str, Any]:
    n_new, n_fetched = args.memory_urls, args.memory_fetched
    port = free_port()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        redis = start_redis(port, tmp)
        client = connect(f"redis://127.0.0.1:{port}/0")
        try:

            def url(i: int, count: int) -> NewURL:  # 100 URLs per host, as on a real crawl's hosts
                host = f"h{i % max(1, count // 100)}.sim.test"
                return NewURL(f"http://{host}/section-{i % 37}/page-{i}.html", host, 3)

            rows = []
            for phase in ["warmup"] + ["measure"] * args.repeats:
                client.flushall()
                store = RedisStore(client, "mem")
                before = int(client.info("memory")["used_memory"])
                count = 2_000 if phase == "warmup" else n_new
                for start in range(0, count, 1000):
                    store.add(
                        [url(i, count) for i in range(start, min(count, start + 1000))], now=time.time()
                    )
                after = int(client.info("memory")["used_memory"])
                if phase == "measure":
                    rows.append((after - before) / count)
            out["discovered_bytes_per_url"] = median_spread(rows)
            out["discovered_urls"] = n_new

            # FETCHED: one worker owning every partition takes URLs through claim/start/finish
            client.flushall()
            mgr = PartitionManager(client, "bench", partitions=16, lease_seconds=60)
            mgr.tick()
            store = RedisStore(client, "mem", mgr)
            before = int(client.info("memory")["used_memory"])
            urls = [url(i, n_fetched) for i in range(n_fetched)]
            for start in range(0, n_fetched, 1000):
                store.add(urls[start : start + 1000], now=time.time())
            done = 0
            for host in sorted({u.host for u in urls}):
                while (rec := store.claim(host, "bench", 60, time.time())) is not None:
                    store.start(rec.id, "bench", 60, time.time())
                    sha = hashlib.sha256(rec.url.encode()).hexdigest()
                    store.first_with_content(sha, rec.id)
                    outcome = Outcome(
                        URLState.FETCHED, status=200, content_sha256=sha, fetched_at=time.time()
                    )
                    store.finish(Finish(rec.id, outcome, [], now=time.time()))
                    done += 1
            after = int(client.info("memory")["used_memory"])
            assert done == n_fetched, (done, n_fetched)
            out["fetched_bytes_per_url"] = (after - before) / n_fetched
            out["fetched_urls"] = n_fetched
            mgr.leave()
        finally:
            client.close()
            redis.terminate()
            redis.wait(10)
    d, f = out["discovered_bytes_per_url"], out["fetched_bytes_per_url"]
    print(f"\n[memory] redis used_memory per URL, at {n_new:,} / {n_fetched:,} URLs, extrapolated to 1M")
    print(f"  DISCOVERED: {cell(d, '.0f')} B/URL -> {d['median'] * 1e6 / 2**20:.0f} MiB per 1M URLs")
    print(f"  FETCHED (with content hash key): {f:.0f} B/URL -> {f * 1e6 / 2**20:.0f} MiB per 1M URLs")
    return out


def plot(workers: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    s = workers["summary"]
    ns = sorted(s)
    pps = [s[n]["pages_per_s"] for n in ns]
    base = pps[0]["median"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    err = [[p["median"] - p["min"] for p in pps], [p["max"] - p["median"] for p in pps]]
    a.errorbar(ns, [p["median"] for p in pps], yerr=err, marker="o", capsize=3, label="measured")
    a.plot(ns, [n * base for n in ns], "--", color="grey", label="linear (N x 1 worker)")
    a.set_xlabel("workers")
    a.set_ylabel("pages/s")
    a.set_xticks(ns)
    a.legend()
    eff = [s[n]["efficiency"]["median"] for n in ns]
    b.bar([str(n) for n in ns], eff)
    b.axhline(0.8, color="red", linestyle=":", label="aim 0.8")
    b.set_ylim(0, 1.1)
    b.set_xlabel("workers")
    b.set_ylabel("scaling efficiency")
    b.legend()
    fig.suptitle(f"crawler workers on Redis, websim {workers['hosts']} hosts (median, min-max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--part", choices=["bound", "workers", "memory", "bloom", "sqlite", "store-ops", "all"], default="all"
    )
    ap.add_argument(
        "--webs", nargs="+", choices=list(BOUND_WEBS), default=None, help="bound part: these webs"
    )
    ap.add_argument("--worker-pages", type=int, default=None, help="workers part: pages per host (default 2)")
    ap.add_argument(
        "--worker-code",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="workers part: also run the workers from checkout DIR (e.g. `git archive` of a baseline),"
        " alternated with this one's in every repeat",
    )
    ap.add_argument("--worker-counts", default=None, help="workers part: e.g. 1,4 (default 1,2,4)")
    ap.add_argument("--store-pages", type=int, default=20_000, help="pages in the store-ops part")
    ap.add_argument("--store-baseline", default="462cb98~1", help="the commit store-ops compares with")
    ap.add_argument("--sqlite-urls", type=int, default=1_000_000, help="URLs in the sqlite part's table")
    ap.add_argument("--bloom-urls", type=int, default=40_000, help="URLs added in the bloom part")
    ap.add_argument("--bloom-capacity", type=int, default=50_000, help="the Bloom filter's capacity")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--py-spy",
        default=None,
        metavar="PREFIX",
        help="workers part: profile worker 0 (diagnostic: py-spy's own CPU counts in the workers' CPU)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-urls", type=int, default=100_000, help="DISCOVERED URLs measured")
    ap.add_argument("--memory-fetched", type=int, default=10_000, help="URLs taken to FETCHED")
    ap.add_argument("--out", default="reports/bench_crawler_scale.json")
    args = ap.parse_args()
    parts = ["bound", "workers", "memory", "bloom"] if args.part == "all" else [args.part]
    run = {
        "bound": part_bound,
        "workers": part_workers,
        "memory": part_memory,
        "bloom": part_bloom,
        "sqlite": part_sqlite,
        "store-ops": part_store_ops,
    }
    report = {p: run[p](args) for p in parts}
    out = (ROOT / args.out).resolve()
    if args.part != "all":
        out = out.with_name(f"{out.stem}-{args.part}{out.suffix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), **report}, indent=2, default=str))
    print(f"\nJSON: {out}")
    if "workers" in report:
        png = plot(report["workers"], out.with_suffix(".png"))
        if png is not None:
            print(f"PNG:  {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
