"""Crawler vs Scrapy on the same websim, judged from websim's own request log.

    .venv/bin/python benchmarks/bench_crawler.py [--scenario mixed|binding|all] [--repeats 3] [--depth 8]

Scenarios: "mixed" (websim's default web of 100 hosts: robots variety, Crawl-delays, redirects,
traps, transient 429/503, slow pages; delay 0.1 s) and "binding" (50 hosts of 30 plain pages each,
delay 0.2 s: the configured delay is the only limit, so requests/s should approach hosts/delay).

websim runs in its own process; each crawler runs in its own process (peak RSS from wait4) against
it, one after the other, after one warm-up round; websim's log and transient-page counters are reset
before every run. Scrapy: ROBOTSTXT_OBEY=True, DOWNLOAD_DELAY=delay, RANDOMIZE_DOWNLOAD_DELAY=False,
CONCURRENT_REQUESTS_PER_DOMAIN=1, DEPTH_LIMIT=depth, same User-Agent; it reaches websim by using
it as its HTTP proxy (the Scrapy analogue of our --resolve map). Ours: --min-delay delay,
--max-depth depth, one request in flight per host.

Reported per crawler (median and min-max over repeats): wall seconds, unique pages (websim page ids
answered 200), pages/s, requests, requests/s, politeness violations (per-host gaps below
max(delay, robots Crawl-delay) - 5 ms), robots violations (requests websim's own RFC 9309 matcher
disallows), duplicate fetches (same canonical URL answered non-retryably more than once), peak RSS,
requests/s as a fraction of the politeness bound hosts/delay, and "critical path": the busiest
host's (requests - 1) * required delay over wall time (1.0 = as fast as politeness allows).
JSON goes to reports/bench_crawler.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libs.testkit.net import free_port, wait_for_port  # noqa: E402
from services.websim import SimConfig, WebSim  # noqa: E402
from services.websim import truth as websim_truth  # noqa: E402
from services.websim.web import canonical_target  # noqa: E402

UA = "ProvingGroundBot/0.1 (+http://127.0.0.1/bot)"
RETRYABLE = {0, 429, 500, 502, 503, 504}

WEBSIM = """
import asyncio, json, sys
from services.websim import SimConfig, WebSim, serve
sim = WebSim(SimConfig(**json.loads(sys.argv[1])))
async def main():
    async with serve(sim, "127.0.0.1", int(sys.argv[2])):
        await asyncio.Event().wait()
asyncio.run(main())
"""

SCRAPY = """
import json, sys
import scrapy
from scrapy.crawler import CrawlerProcess
from scrapy.linkextractors import LinkExtractor
port, delay, depth = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
seeds = json.loads(sys.argv[4])

class SimResolver:
    # Scrapy's stand-in for `--resolve *.sim.test=127.0.0.1:PORT`: websim as the HTTP proxy.
    def process_request(self, request, spider):
        request.meta["proxy"] = f"http://127.0.0.1:{port}"

class Sim(scrapy.Spider):
    name = "sim"
    start_urls = seeds
    links = LinkExtractor(deny_extensions=[], allow_domains=["sim.test"])
    def parse(self, response):
        if not hasattr(response, "text"):
            return
        for link in self.links.extract_links(response):
            if not link.nofollow:
                yield scrapy.Request(link.url, callback=self.parse)

process = CrawlerProcess(settings={
    "ROBOTSTXT_OBEY": True, "ROBOTSTXT_USER_AGENT": "ProvingGroundBot", "USER_AGENT": %(ua)r,
    "DOWNLOAD_DELAY": delay, "RANDOMIZE_DOWNLOAD_DELAY": False, "DOWNLOAD_DELAY_JITTER": 0,
    "CONCURRENT_REQUESTS": 64,
    "CONCURRENT_REQUESTS_PER_DOMAIN": 1, "DEPTH_LIMIT": depth, "LOG_LEVEL": "ERROR",
    "RETRY_TIMES": 3, "RETRY_HTTP_CODES": [429, 500, 502, 503, 504], "TELNETCONSOLE_ENABLED": False,
    "DOWNLOADER_MIDDLEWARES": {"__main__.SimResolver": 1}, "DOWNLOAD_TIMEOUT": 30,
    "REQUEST_FINGERPRINTER_IMPLEMENTATION": "2.7",
})
process.crawl(Sim)
process.start()
""".replace("%(ua)r", repr(UA))


def admin(port: int, path: str, method: str = "GET") -> bytes:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, data=b"" if method == "POST" else None
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def run_measured(cmd: list[str], root: Path = ROOT) -> tuple[float, float, int, float]:
    """Run a command (in `root`, on its code); return (wall seconds, peak RSS MiB, exit status,
    CPU seconds) from wait4."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child must never block
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=root)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            sys.stderr.write(err.read().decode(errors="replace")[-2000:])
    return wall, usage.ru_maxrss / 1024, proc.returncode, usage.ru_utime + usage.ru_stime


def judge(sim: WebSim, entries: list[dict[str, Any]], delay: float) -> dict[str, Any]:
    by_host: dict[str, list[float]] = defaultdict(list)
    ends: dict[str, list[float]] = defaultdict(list)  # each request's end (ts + duration)
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    politeness = robots = 0
    for e in entries:
        path = e["path"]
        if path.startswith("http"):
            path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
        target = canonical_target(path)
        by_host[e["host"]].append(e["ts"])
        ends[e["host"]].append(e["ts"] + e.get("duration_s", 0.0))
        groups[(e["host"], target)].append(e["status"])
        if e["kind"] != "robots" and not websim_truth.allowed(sim.web, e["host"], target):
            robots += 1
    critical = 0.0
    slack: list[float] = []  # per host turn: the gap from the previous response's end, past the delay
    for host, stamps in by_host.items():
        required = max(delay, websim_truth.required_delay(sim.web, host) or 0.0)
        politeness += sum(1 for a, b in itertools.pairwise(stamps) if b - a < required - 0.005)
        critical = max(critical, (len(stamps) - 1) * required)
        slack.extend(b - a - required for a, b in zip(ends[host], stamps[1:], strict=False))
    slack.sort()
    pick = lambda q: slack[int(q * (len(slack) - 1))] if slack else float("nan")  # noqa: E731
    duplicates = sum(max(0, sum(1 for s in st if s not in RETRYABLE) - 1) for st in groups.values())
    pages = {e["page_id"] for e in entries if e["status"] == 200 and e["kind"] in ("page", "calendar")}
    return {
        "pages": len(pages),
        "requests": len(entries),
        "politeness_violations": politeness,
        "robots_violations": robots,
        "duplicate_fetches": duplicates,
        "critical_path_s": critical,
        "hosts_contacted": len(by_host),
        # how long a host, once eligible, waited for its next request (its turn's slack)
        "slack_p50_s": pick(0.5),
        "slack_p90_s": pick(0.9),
    }


SCENARIOS: dict[str, dict[str, Any]] = {
    # websim's default mix: robots variety, Crawl-delays, redirects, traps, transient 429/503, slow pages
    "mixed": {"knobs": {}, "hosts": 100, "delay": 0.1},
    # politeness binds: every host has 30 pages, no Crawl-delay/transients/slow pages, so the
    # configured delay is the only limit and requests/s should approach hosts/delay
    "binding": {
        "knobs": {
            "min_pages": 30,
            "max_pages": 30,
            "transient_rate": 0.0,
            "slow_page_rate": 0.0,
            "crawl_delay_rate": 0.0,
            "huge_page_rate": 0.0,
            "trap_rate": 0.0,
            "robots_mix": {},
        },
        "hosts": 50,
        "delay": 0.2,
    },
    # wide: 2,000 hosts of a few plain pages each, so politeness per host is not the limit and
    # the crawler's own work per page (parse, store, scheduling) is: pages/s is its throughput
    "wide": {
        "knobs": {
            "min_pages": 2,
            "max_pages": 8,
            "transient_rate": 0.0,
            "slow_page_rate": 0.0,
            "crawl_delay_rate": 0.0,
            "huge_page_rate": 0.0,
            "trap_rate": 0.0,
            "robots_mix": {},
        },
        "hosts": 2000,
        "delay": 0.5,
    },
}
KEYS = [
    "slack_p50_s",
    "slack_p90_s",
    "wall_s",
    "pages",
    "pages_per_s",
    "requests",
    "requests_per_s",
    "politeness_violations",
    "robots_violations",
    "duplicate_fetches",
    "peak_rss_mib",
    "cpu_s",
    "cpu_ms_per_page",
    "bound_fraction",
    "critical_path_fraction",
    "coverage_of_truth",
]


def run_scenario(name: str, spec: dict[str, Any], args: argparse.Namespace, warmup: bool) -> dict[str, Any]:
    hosts, delay = spec["hosts"], spec["delay"]
    config = SimConfig(hosts=hosts, seed=args.seed, **spec["knobs"])
    sim = WebSim(config)
    seeds = sim.seeds(hosts)
    truth = sim.ground_truth(seeds, max_depth=args.depth)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    knobs = json.dumps({"hosts": hosts, "seed": args.seed, **spec["knobs"]})
    server = subprocess.Popen(
        [sys.executable, "-c", WEBSIM, knobs, str(port)], env=env, stdout=subprocess.DEVNULL
    )
    results: dict[str, list[dict[str, Any]]] = {"crawler": [], "scrapy": []}
    if args.baseline:
        results["baseline"] = []
    try:
        wait_for_port(port, timeout=60)
        with tempfile.TemporaryDirectory() as tmp:

            def ours(i: int) -> list[str]:
                # --py-spy: sample our crawler (py-spy record, 100 Hz, raw folded stacks)
                spy = (
                    [
                        str(Path(sys.executable).with_name("py-spy")),
                        "record",
                        "-r",
                        "100",
                        "-f",
                        "raw",
                        "-o",
                        f"{args.py_spy}.{name}.{i}.txt",
                        "--",
                    ]
                    if args.py_spy and i >= 0
                    else []
                )
                return [
                    *spy,
                    sys.executable,
                    "-m",
                    "services.crawler",
                    "crawl",
                    *seeds,
                    "--scope",
                    "*.sim.test",
                    "--resolve",
                    f"*.sim.test=127.0.0.1:{port}",
                    "--store",
                    f"{tmp}/run{i}.sqlite",
                    "--max-depth",
                    str(args.depth),
                    "--min-delay",
                    str(delay),
                    "--no-progress",
                    "--retry-base",
                    "0.2",
                    "--retry-cap",
                    "2",
                    "--max-pages",
                    "1000000",
                ]

            # Scrapy inspects callback source (inspect.getsource), so the spider must live in a file.
            spider = Path(tmp) / "scrapy_sim.py"
            spider.write_text(SCRAPY)

            def scrapy() -> list[str]:
                return [
                    sys.executable,
                    str(spider),
                    str(port),
                    str(delay),
                    str(args.depth),
                    json.dumps(seeds),
                ]

            rounds = ([("warmup", -1)] if warmup else []) + [("measure", i) for i in range(args.repeats)]
            for phase, i in rounds:
                runs = [("crawler", ours(i + 1)), ("scrapy", scrapy())]
                if args.baseline:  # the same crawler command on another checkout's code
                    runs.insert(1, ("baseline", ours(i + 1001)))
                for who, cmd in runs:
                    if who not in [*args.who, "baseline"]:
                        continue
                    admin(port, "/reset", "POST")
                    root = Path(args.baseline).resolve() if who == "baseline" else ROOT
                    wall, rss, rc, cpu = run_measured(cmd, root)
                    entries = [json.loads(line) for line in admin(port, "/log").splitlines() if line.strip()]
                    row = {
                        "wall_s": wall,
                        "peak_rss_mib": rss,
                        "exit": rc,
                        "cpu_s": cpu,
                        **judge(sim, entries, delay),
                    }
                    row["cpu_ms_per_page"] = 1000 * cpu / max(1, row["pages"])
                    row["pages_per_s"] = row["pages"] / wall
                    row["requests_per_s"] = row["requests"] / wall
                    row["bound_fraction"] = row["requests_per_s"] / (hosts / delay)
                    row["critical_path_fraction"] = row["critical_path_s"] / wall
                    row["coverage_of_truth"] = row["pages"] / len(truth)
                    row["loadavg_1m"] = os.getloadavg()[0]  # the box's, at the run's end
                    print(
                        f"{name} {phase} {who}: {row['pages']} pages, {row['requests']} requests,"
                        f" {wall:.1f}s, {row['pages_per_s']:.1f} pages/s,"
                        f" {row['politeness_violations']} politeness violations, CPU {cpu:.1f}s,"
                        f" {row['cpu_ms_per_page']:.2f} CPU ms/page, slack p50 {row['slack_p50_s']:.3f}"
                        f" p90 {row['slack_p90_s']:.3f} s, load {row['loadavg_1m']:.1f}",
                        file=sys.stderr,
                    )
                    if phase == "measure":
                        results[who].append(row)
    finally:
        server.terminate()
        server.wait(10)

    summary: dict[str, dict[str, dict[str, float]]] = {}
    for who, rows in results.items():
        if not rows:
            rows = [dict.fromkeys(KEYS, float("nan"))]
        summary[who] = {
            k: {
                "median": statistics.median(r[k] for r in rows),
                "min": min(r[k] for r in rows),
                "max": max(r[k] for r in rows),
            }
            for k in KEYS
        }
    print(
        f"\n[{name}] websim: {hosts} hosts, seed {args.seed}, truth {len(truth)} pages"
        f" at depth <= {args.depth};"
        f" delay {delay}s; politeness bound hosts/delay = {hosts / delay:.0f} requests/s;"
        f" {args.repeats} repeats, median [min-max]"
    )

    def cell(d: dict[str, float]) -> str:
        return f"{d['median']:.3g} [{d['min']:.3g}-{d['max']:.3g}]"

    def ratio(a: dict[str, float], b: dict[str, float]) -> float:
        return a["median"] / b["median"] if b["median"] == b["median"] and b["median"] else float("nan")

    base = "baseline" in summary
    print(
        f"{'metric':<24}{'crawler':>26}{'scrapy':>26}{'ratio':>9}"
        + (f"{'baseline':>26}{'vs base':>9}" if base else "")
    )
    for k in KEYS:
        a, b = summary["crawler"][k], summary["scrapy"][k]
        line = f"{k:<24}{cell(a):>26}{cell(b):>26}{ratio(a, b):>9.2f}"
        if base:
            line += f"{cell(summary['baseline'][k]):>26}{ratio(a, summary['baseline'][k]):>9.2f}"
        print(line)
    # side by side: each measured round's ratios (the box's load moves every run; a pair shares it)
    for other in ("baseline", "scrapy"):
        pairs = list(zip(results["crawler"], results.get(other, []), strict=False))
        if pairs:
            print(
                f"per round, crawler / {other}: pages/s "
                + ", ".join(f"{a['pages_per_s'] / b['pages_per_s']:.2f}" for a, b in pairs)
                + "; CPU ms/page "
                + ", ".join(f"{a['cpu_ms_per_page'] / b['cpu_ms_per_page']:.2f}" for a, b in pairs)
            )
    return {
        "hosts": hosts,
        "delay": delay,
        "knobs": spec["knobs"],
        "truth_pages": len(truth),
        "runs": results,
        "summary": summary,
    }


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """Pages/s and violations per scenario, crawler vs Scrapy, medians with min-max whiskers."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    metrics = [
        ("pages_per_s", "pages/s"),
        ("politeness_violations", "politeness violations"),
        ("robots_violations", "robots violations"),
        ("duplicate_fetches", "duplicate fetches"),
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6))
    names = list(report)
    for ax, (key, label) in zip(axes, metrics, strict=True):
        for k, who in enumerate(("crawler", "scrapy")):
            cells = [report[n]["summary"][who][key] for n in names]
            xs = [i + (k - 0.5) * 0.38 for i in range(len(names))]
            med = [c["median"] for c in cells]
            err = [[c["median"] - c["min"] for c in cells], [c["max"] - c["median"] for c in cells]]
            ax.bar(xs, med, width=0.38, yerr=err, capsize=3, label=who)
        ax.set_xticks(range(len(names)), names)
        ax.set_title(label)
    axes[0].legend()
    fig.suptitle("crawler vs Scrapy on websim (judged from websim's request log)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="reports/bench_crawler.json")
    ap.add_argument(
        "--baseline",
        default=None,
        metavar="ROOT",
        help="also run the crawler of this checkout (side by side)",
    )
    ap.add_argument("--who", nargs="+", choices=["crawler", "scrapy"], default=["crawler", "scrapy"])
    ap.add_argument("--py-spy", default=None, metavar="PREFIX", help="profile our crawler to PREFIX.*.txt")
    args = ap.parse_args()
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    report = {
        name: run_scenario(name, SCENARIOS[name], args, warmup=(k == 0)) for k, name in enumerate(names)
    }
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "scenarios": report}, indent=2))
    print(f"\nJSON: {out}")
    png = plot(report, out.with_suffix(".png"))
    if png is not None:
        print(f"PNG:  {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
