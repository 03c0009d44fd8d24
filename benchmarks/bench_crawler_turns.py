"""Where a fetch slot's time goes on the wide web: one crawl, its host turns timed part by part.

    .venv/bin/python benchmarks/bench_crawler_turns.py [--scenario wide] [--extra ARG ...]

Runs websim (bench_crawler's scenario, its own process) and our crawler once, the crawler in a
child process of this script that wraps the engine's awaited steps with a monotonic timer (the
store round trips aclaim/astart/afirst_with_content/afinish, the fetch, the parse, the whole host
turn and the page's recording) and samples the event loop's lag every 10 ms. Printed: each step's
count, mean and p50/p90/p99; from websim's log, requests per second, how long each host's gap ran
past its delay (the time a host waited for a fetch slot), and the deepest hosts' gaps one by one
(how late their chains ran). Diagnostic, one run: the box's load moves every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

STEPS = ("aclaim", "astart", "afirst_with_content", "afinish", "arelease", "anext_ready_at")


def child(argv: list[str], out: str) -> int:
    """The crawler's CLI with its steps timed; the timings go to `out` (JSON) at exit."""
    from services.crawler import engine, fetcher, store_sqlite
    from services.crawler.__main__ import main

    times: dict[str, list[float]] = collections.defaultdict(list)

    def timed(cls: Any, name: str) -> None:
        orig = getattr(cls, name)

        @functools.wraps(orig)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic()
            try:
                return await orig(*args, **kwargs)
            finally:
                times[name].append(time.monotonic() - t0)

        setattr(cls, name, wrapper)

    for name in STEPS:
        timed(store_sqlite.SQLiteStore, name)
    timed(fetcher.Fetcher, "fetch")
    timed(engine.Crawl, "_work")  # a whole host turn, recording included
    timed(engine.Crawl, "_parse")
    timed(engine.Crawl, "_handle_response")  # a page's recording (WARC, hash, parse, finish)

    # Depth re-derivations (a page reached later by a shorter path) and URL inserts, on the
    # store thread: how many and how long (the crawl's order among hosts changes both).
    def counted(cls: Any, name: str) -> None:
        orig = getattr(cls, name)

        @functools.wraps(orig)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic()
            try:
                return orig(*args, **kwargs)
            finally:
                times["store:" + name].append(time.monotonic() - t0)

        setattr(cls, name, wrapper)

    for name in ("_lower_depth", "_claim", "_start", "_finish", "_first_with_content"):
        counted(store_sqlite.SQLiteStore, name)

    async def lag() -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            times["event_loop_lag"].append(time.monotonic() - t0 - 0.01)

    series: list[list[float]] = []  # every 0.2 s: t, heap, tasks, recording, store queue, fetching

    async def sample(crawl: Any) -> None:
        t_start = time.time()
        while True:
            await asyncio.sleep(0.2)
            fr = crawl.frontier
            series.append([
                round(time.time() - t_start, 1), len(fr), len(fr._waiting), len(crawl._tasks),
                crawl.config.concurrency - crawl._recorders._value, crawl.store._queue.qsize(),
                crawl._fetches_in_flight,
            ])  # fmt: skip

    run = engine.Crawl.run

    async def run_with_lag(self: Any) -> Any:
        task = asyncio.create_task(lag())
        sampler = asyncio.create_task(sample(self))
        try:
            return await run(self)
        finally:
            task.cancel()
            sampler.cancel()

    engine.Crawl.run = run_with_lag  # type: ignore[method-assign]
    try:
        return main(argv)
    finally:
        Path(out).write_text(json.dumps({**times, "series": series}))


def summary(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    pick = lambda q: 1000 * v[min(len(v) - 1, int(q * len(v)))]  # noqa: E731
    return {"n": len(v), "mean_ms": 1000 * sum(v) / len(v), "p50_ms": pick(0.5), "p90_ms": pick(0.9),
            "p99_ms": pick(0.99)}  # fmt: skip


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[3:], sys.argv[2])
    import bench_crawler as bc

    from libs.testkit.net import free_port, wait_for_port
    from services.websim import SimConfig, WebSim

    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", choices=list(bc.SCENARIOS), default="wide")
    ap.add_argument("--extra", nargs="*", default=[], help="more crawler CLI arguments")
    args = ap.parse_args()
    spec = bc.SCENARIOS[args.scenario]
    hosts, delay = spec["hosts"], spec["delay"]
    sim = WebSim(SimConfig(hosts=hosts, seed=1, **spec["knobs"]))
    seeds = sim.seeds(hosts)
    port = free_port()
    knobs = json.dumps({"hosts": hosts, "seed": 1, **spec["knobs"]})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-c", bc.WEBSIM, knobs, str(port)], env=env,
                              stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port, timeout=60)
        with tempfile.TemporaryDirectory() as tmp:
            out = f"{tmp}/times.json"
            cmd = [sys.executable, __file__, "--child", out, "crawl", *seeds, "--scope", "*.sim.test",
                   "--resolve", f"*.sim.test=127.0.0.1:{port}", "--store", f"{tmp}/run.sqlite",
                   "--max-depth", "8", "--min-delay", str(delay), "--no-progress", "--retry-base", "0.2",
                   "--retry-cap", "2", "--max-pages", "1000000", *args.extra]  # fmt: skip
            bc.admin(port, "/reset", "POST")
            t0 = time.time()
            wall, _rss, rc, cpu = bc.run_measured(cmd)
            times = json.loads(Path(out).read_text())
            series = times.pop("series", [])
        entries = [json.loads(line) for line in bc.admin(port, "/log").splitlines() if line.strip()]
    finally:
        server.terminate()
        server.wait(10)
    judged = bc.judge(sim, entries, delay)
    print(f"exit {rc}, wall {wall:.1f} s, CPU {cpu:.1f} s, load {os.getloadavg()[0]:.1f}; {judged}")
    for name, values in sorted(times.items()):
        s = summary(values)
        print(f"{name:22s} n={s['n']:6d} mean {s['mean_ms']:7.1f} ms  p50 {s['p50_ms']:7.1f}"
              f"  p90 {s['p90_ms']:7.1f}  p99 {s['p99_ms']:7.1f}")  # fmt: skip
    print("every 1 s: t, hosts queued, hosts waiting, turn tasks, recording, store queue, in flight")
    for row in series[4::5]:
        print("  ", row)
    per_s = collections.Counter(int(e["ts"] - t0) for e in entries)
    print("requests per second:", [per_s[i] for i in range(int(max(per_s)) + 1)])
    by_host: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in entries:
        by_host[e["host"]].append(e)
    late = sorted(
        b["ts"] - (a["ts"] + a["duration_s"]) - delay
        for es in by_host.values()
        for a, b in itertools.pairwise(es)
    )
    q = {p: late[int(p * (len(late) - 1))] for p in (0.1, 0.5, 0.9, 0.99)}
    print("gap past the delay, s: " + ", ".join(f"p{int(100 * p)} {v:.3f}" for p, v in q.items()))
    for host, es in sorted(by_host.items(), key=lambda kv: -len(kv[1]))[:3]:
        gaps = [round(b["ts"] - (a["ts"] + a["duration_s"]) - delay, 2) for a, b in itertools.pairwise(es)]
        print(f"{host}: {len(es)} requests, +{es[0]['ts'] - t0:.1f} to +{es[-1]['ts'] - t0:.1f} s;"
              f" gaps past the delay {gaps}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
