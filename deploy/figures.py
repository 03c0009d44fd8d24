"""Figures for docs/explore.md, drawn from a running stack (`make run` first).

    python -m deploy.figures [--crawl ID | --all] [-o PATH] [--force] [--websim URL] [--crawler URL]

politeness.png: the requests of one crawl (default: the last one the crawler started) to its 12
busiest hosts, as websim logged them (one row per host, one tick per request): the even spacing
is the per-host delay, the overlap across rows is the crawler's parallelism across hosts.

The crawl's window (its started_at..finished_at, from the crawler's API) selects websim's log
entries; both stamp with the same host clock. `--all` draws every request since websim started.
The figure goes to reports/figures/politeness.png unless -o names another file or directory; a
file git tracks (docs/img/politeness.png) is replaced only with --force.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.topology import ROOT
from libs.service.cli import EXIT_USAGE, ArgumentParser, UsageError

DEFAULT_OUT = ROOT / "reports" / "figures" / "politeness.png"
BOT = "ProvingGroundBot"


@dataclass(frozen=True)
class Window:
    """The requests to draw: websim log entries with start <= ts <= end."""

    label: str
    start: float = -math.inf
    end: float = math.inf

    def select(self, entries: list[dict]) -> list[dict]:
        return [e for e in entries if self.start <= e["ts"] <= self.end]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def websim_log(websim: str) -> list[dict]:
    try:
        with urllib.request.urlopen(f"{websim}/log", timeout=30) as resp:
            return [json.loads(line) for line in resp.read().decode().splitlines() if line]
    except OSError as exc:
        raise UsageError(f"--websim: cannot read {websim}/log: {exc}") from None


def crawl_window(crawler: str, crawl_id: str | None) -> Window:
    """The window of crawl `crawl_id`, or of the last crawl the crawler started."""
    try:
        if crawl_id is None:
            crawls = get_json(f"{crawler}/v1/crawls")
            if not crawls:
                raise UsageError(f"the crawler at {crawler} lists no crawl: start one, or pass --all")
            crawl_id = str(crawls[-1]["crawl_id"])
        status = get_json(f"{crawler}/v1/crawls/{urllib.parse.quote(crawl_id, safe='')}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404 and crawl_id is not None:
            raise UsageError(
                f"--crawl: the crawler has no crawl {crawl_id!r} (it lists the crawls of its "
                "current process only); pass --all to draw every request websim logged"
            ) from None
        raise UsageError(f"--crawler: {crawler} answered {exc.code} {exc.reason}") from None
    except OSError as exc:
        raise UsageError(f"--crawler: cannot reach {crawler}: {exc} (or pass --all)") from None
    stats = status.get("stats") or {}
    started, finished = stats.get("started_at"), stats.get("finished_at")
    if started is None:
        raise UsageError(f"--crawl: crawl {crawl_id!r} has not started yet")
    state = status.get("state", "?")
    return Window(
        f"crawl {crawl_id} ({state})", float(started), math.inf if finished is None else float(finished)
    )


def is_tracked(path: Path) -> bool:
    """Whether git tracks `path` in this repository (False without git or outside the repo)."""
    try:
        result = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "--error-unmatch", "--", str(path.resolve())],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def output_path(out: Path | None, force: bool) -> Path:
    path = DEFAULT_OUT if out is None else out / DEFAULT_OUT.name if out.is_dir() else out
    if path.suffix.lower() != ".png":
        raise UsageError(f"-o: expected a .png file or a directory, got {str(path)!r}")
    if path.exists() and not force and is_tracked(path):
        raise UsageError(f"-o: {path} is tracked by git (a figure of the docs); add --force to replace it")
    return path


def politeness_figure(entries: list[dict], out: Path, label: str) -> int:
    """Draw the figure; returns how many requests it shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_host: dict[str, list[float]] = defaultdict(list)
    for e in entries:
        if (e.get("user_agent") or "").startswith(BOT):
            by_host[e["host"]].append(e["ts"])
    if not by_host:
        raise UsageError(f"websim logged no {BOT} requests in {label}; start a crawl first")
    busiest = sorted(by_host, key=lambda h: (-len(by_host[h]), h))[:12]
    t0 = min(min(ts) for ts in by_host.values())
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for row, host in enumerate(busiest):
        xs = [t - t0 for t in sorted(by_host[host])]
        ax.eventplot(xs, lineoffsets=row, linelengths=0.7)
    ax.set_yticks(range(len(busiest)), busiest, fontsize=8)
    ax.set_xlabel("seconds since the crawl's first request (websim's clock)")
    total = sum(len(v) for v in by_host.values())
    ax.set_title(f"Requests per host, as websim logged them: {label}, {total} requests, {len(by_host)} hosts")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m deploy.figures", description=__doc__.split("\n")[0])
    parser.add_argument("--websim", default="http://127.0.0.1:8090", help="websim's admin address")
    parser.add_argument("--crawler", default="http://127.0.0.1:8081", help="the crawler's API address")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--crawl", metavar="ID", help="draw this crawl (default: the crawler's last)")
    which.add_argument("--all", action="store_true", help="draw every request since websim started")
    default = DEFAULT_OUT.relative_to(ROOT)
    parser.add_argument("-o", "--out", type=Path, help=f"a .png file or a directory (default: {default})")
    parser.add_argument("--force", action="store_true", help="replace a file git tracks (docs/img/...)")
    try:
        args = parser.parse_args(argv)
        out = output_path(args.out, args.force)
        window = Window("every request since websim started") if args.all else None
        if window is None:
            window = crawl_window(args.crawler.rstrip("/"), args.crawl)
        entries = window.select(websim_log(args.websim.rstrip("/")))
        total = politeness_figure(entries, out, window.label)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {out} ({window.label}: {total} requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
