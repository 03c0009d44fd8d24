"""`make loadtest SERVICE=inference USERS=20 DURATION=60s`: locust, headless, bounded in time.

Finds the service's address in the compose topology (as `make run` publishes it), runs
loadtests/<service>.py against it and writes reports/loadtest/<service>/{stats*.csv, report.html,
summary.json, rps_latency.png}. Exit code: locust's (1 when any request failed), 2 on bad input.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

from deploy.topology import ROOT, local_services
from libs.service.cli import EXIT_USAGE, ArgumentParser, UsageError

LOADTESTS = ROOT / "loadtests"


def available() -> list[str]:
    return sorted(p.stem for p in LOADTESTS.glob("*.py") if p.stem not in {"__init__", "run", "common"})


def parse_args(argv: list[str] | None) -> Namespace:
    parser = ArgumentParser(prog="python -m loadtests.run", description=__doc__.split("\n")[0])
    parser.add_argument("--service", required=True, help=f"one of: {', '.join(available())}")
    parser.add_argument("--users", type=int, default=10, help="concurrent simulated users")
    parser.add_argument("--spawn-rate", type=float, default=5.0, help="users started per second")
    parser.add_argument("--duration", default="30s", help="run time, e.g. 30s, 2m (max 30m)")
    parser.add_argument("--host", default=None, help="base URL (default: as `make run` starts it)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "loadtest")
    args = parser.parse_args(argv)
    if args.service not in available():
        raise UsageError(f"--service: expected one of {', '.join(available())}, got {args.service!r}")
    match = re.fullmatch(r"(\d+)(s|m)", args.duration)
    if not match or not 0 < int(match[1]) * (60 if match[2] == "m" else 1) <= 1800:
        raise UsageError(f"--duration: expected 1s..30m like '30s' or '2m', got {args.duration!r}")
    if args.users < 1:
        raise UsageError(f"--users: expected a positive integer, got {args.users}")
    return args


def service_url(name: str) -> str:
    service = next(s for s in local_services() if s.name == name)
    return f"http://127.0.0.1:{service.http_port}"


def plot(history_csv: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in csv.DictReader(history_csv.open()) if r["Name"] == "Aggregated"]
    if not rows:
        return
    t0 = int(rows[0]["Timestamp"])
    t = [int(r["Timestamp"]) - t0 for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(t, [float(r["Requests/s"]) for r in rows], label="requests/s")
    ax1.plot(t, [float(r["Failures/s"]) for r in rows], label="failures/s")
    ax1.legend()
    ax1.set_ylabel("rate")
    for pct in ("50%", "95%", "99%"):
        ax2.plot(t, [float(r[pct]) if r[pct] not in ("N/A", "") else 0 for r in rows], label=f"p{pct[:-1]}")
    ax2.set_ylabel("latency (ms)")
    ax2.set_xlabel("seconds")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(png)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = args.out / args.service
    out.mkdir(parents=True, exist_ok=True)
    host = args.host or service_url(args.service)
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOADTESTS / f"{args.service}.py"),
        "--headless",
        "--host",
        host,
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        args.duration,
        "--stop-timeout",
        "10",
        "--csv",
        str(out / "stats"),
        "--csv-full-history",
        "--html",
        str(out / "report.html"),
        "--only-summary",
    ]
    print(f"locust -> {host} ({args.users} users, {args.duration}); reports in {out}/", flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    stats = out / "stats_stats.csv"
    if stats.exists():
        rows = list(csv.DictReader(stats.open()))
        (out / "summary.json").write_text(json.dumps(rows, indent=2))
        plot(out / "stats_stats_history.csv", out / "rps_latency.png")
    return rc


if __name__ == "__main__":
    sys.exit(main())
