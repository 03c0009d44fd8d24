"""Figures for docs/explore.md, drawn from a running stack (`make run` first).

    python -m deploy.figures [--websim URL] [--out docs/img]

politeness.png: every request the crawler sent to the 12 busiest hosts of the last crawl, as
websim logged them (one row per host, one tick per request): the even spacing is the per-host
delay, the overlap across rows is the crawler's parallelism across hosts.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

from deploy.topology import ROOT


def websim_log(websim: str) -> list[dict]:
    with urllib.request.urlopen(f"{websim}/log", timeout=30) as resp:
        return [json.loads(line) for line in resp.read().decode().splitlines() if line]


def politeness_figure(entries: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_host: dict[str, list[float]] = defaultdict(list)
    for e in entries:
        if (e.get("user_agent") or "").startswith("ProvingGroundBot"):
            by_host[e["host"]].append(e["ts"])
    if not by_host:
        raise SystemExit("error: websim logged no ProvingGroundBot requests; start a crawl first")
    busiest = sorted(by_host, key=lambda h: -len(by_host[h]))[:12]
    t0 = min(min(ts) for ts in by_host.values())
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for row, host in enumerate(busiest):
        xs = [t - t0 for t in sorted(by_host[host])]
        ax.eventplot(xs, lineoffsets=row, linelengths=0.7)
    ax.set_yticks(range(len(busiest)), busiest, fontsize=8)
    ax.set_xlabel("seconds since the crawl's first request (websim's clock)")
    total = sum(len(v) for v in by_host.values())
    ax.set_title(f"Requests per host, as websim logged them ({total} requests, {len(by_host)} hosts)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.figures", description=__doc__.split("\n")[0])
    parser.add_argument("--websim", default="http://127.0.0.1:8090", help="websim's admin address")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args(argv)
    try:
        entries = websim_log(args.websim)
    except OSError as exc:
        print(f"error: --websim: cannot read {args.websim}/log: {exc}", file=sys.stderr)
        return 2
    politeness_figure(entries, args.out / "politeness.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
