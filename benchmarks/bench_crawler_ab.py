"""Two crawler checkouts at the same time, each against a websim of its own: an A/B on a busy box.

    .venv/bin/python benchmarks/bench_crawler_ab.py --baseline ROOT [--scenario wide] [--rounds 3]

bench_crawler.py --baseline runs the two one after the other, and on a box whose load moves by
the minute a pair of runs minutes apart does not share its conditions. Here both crawls run at
once (this checkout's crawler against websim 1, ROOT's against websim 2: same web, same seeds,
the same command line), so both meet the same load; the order in which they are started
alternates by round. Reported per round: pages/s, CPU ms a page (wait4), violations and each
turn's slack (the gap from the host's previous response's end, past the delay, p50/p90), and
the ratios A/B. The two crawls compete with each other for the CPU too: read the ratios, not
the absolute figures (those are bench_crawler.py's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_crawler as bc  # noqa: E402

from libs.testkit.net import free_port, wait_for_port  # noqa: E402
from services.websim import SimConfig, WebSim  # noqa: E402


def crawl_cmd(seeds: list[str], port: int, store: str, depth: int, delay: float) -> list[str]:
    return [sys.executable, "-m", "services.crawler", "crawl", *seeds, "--scope", "*.sim.test",
            "--resolve", f"*.sim.test=127.0.0.1:{port}", "--store", store, "--max-depth", str(depth),
            "--min-delay", str(delay), "--no-progress", "--retry-base", "0.2", "--retry-cap", "2",
            "--max-pages", "1000000"]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, metavar="ROOT", help="the other checkout (B)")
    ap.add_argument("--scenario", choices=list(bc.SCENARIOS), default="wide")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    base = Path(args.baseline).resolve()
    if not (base / "services" / "crawler").is_dir():
        ap.error(f"--baseline: no services/crawler under {base}")
    spec = bc.SCENARIOS[args.scenario]
    hosts, delay = spec["hosts"], spec["delay"]
    config = SimConfig(hosts=hosts, seed=1, **spec["knobs"])
    sim = WebSim(config)
    seeds = sim.seeds(hosts)
    knobs = json.dumps({"hosts": hosts, "seed": 1, **spec["knobs"]})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ports = {"A": free_port(), "B": free_port()}
    servers = [
        subprocess.Popen([sys.executable, "-c", bc.WEBSIM, knobs, str(p)], env=env, stdout=subprocess.DEVNULL)
        for p in ports.values()
    ]
    roots = {"A": ROOT, "B": base}
    rows: list[dict[str, dict[str, Any]]] = []
    try:
        for p in ports.values():
            wait_for_port(p, timeout=60)
        with tempfile.TemporaryDirectory() as tmp:
            for rnd in range(args.rounds + 1):  # round 0: a warm-up, not counted
                order = ["A", "B"] if rnd % 2 else ["B", "A"]
                out: dict[str, Any] = {}
                for who in order:
                    bc.admin(ports[who], "/reset", "POST")

                def one(who: str, rnd: int = rnd, out: dict[str, Any] = out) -> None:
                    cmd = crawl_cmd(seeds, ports[who], f"{tmp}/{who}{rnd}.sqlite", args.depth, delay)
                    out[who] = bc.run_measured(cmd, roots[who])

                threads = [threading.Thread(target=one, args=(who,)) for who in order]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                row: dict[str, dict[str, Any]] = {}
                for who in ("A", "B"):
                    wall, rss, rc, cpu = out[who]
                    entries = [json.loads(x) for x in bc.admin(ports[who], "/log").splitlines() if x.strip()]
                    j = bc.judge(sim, entries, delay)
                    row[who] = {"wall_s": wall, "exit": rc, "cpu_s": cpu, "peak_rss_mib": rss, **j,
                                "pages_per_s": j["pages"] / wall,
                                "cpu_ms_per_page": 1000 * cpu / max(1, j["pages"]),
                                "loadavg_1m": os.getloadavg()[0]}  # fmt: skip
                a, b = row["A"], row["B"]
                print(
                    f"round {rnd}{' (warm-up)' if rnd == 0 else ''}, load {a['loadavg_1m']:.1f}: "
                    + "; ".join(
                        f"{w} {r['pages']} pages {r['pages_per_s']:.1f}/s,"
                        f" {r['cpu_ms_per_page']:.2f} CPU ms/page,"
                        f" {r['politeness_violations']}+{r['robots_violations']} violations,"
                        f" slack p50 {r['slack_p50_s']:.3f} p90 {r['slack_p90_s']:.3f} s"
                        for w, r in (("A", a), ("B", b))
                    )
                    + f"; A/B pages/s {a['pages_per_s'] / b['pages_per_s']:.2f},"
                    f" CPU/page {a['cpu_ms_per_page'] / b['cpu_ms_per_page']:.2f}",
                    flush=True,
                )
                if rnd:
                    rows.append(row)
    finally:
        for s in servers:
            s.terminate()
            s.wait(10)
    ratios = {
        k: [r["A"][k] / r["B"][k] for r in rows] for k in ("pages_per_s", "cpu_ms_per_page", "slack_p50_s")
    }
    print(
        f"A = {ROOT}, B = {base}; {args.rounds} rounds; A/B median [min-max]: "
        + ", ".join(f"{k} {statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]" for k, v in ratios.items())
    )
    if args.out:
        Path(args.out).write_text(json.dumps({"rounds": rows, "ratios": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
