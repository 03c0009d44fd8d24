"""Watch mode against a warm first scan: how long after 1% of the files change is the report
up to date?

    .venv/bin/python benchmarks/bench_dedup_watch.py [--files 20000] [--bytes 1.5G] [--runs 7]
        [--compare OTHER_CHECKOUT] [--blocks 2]

A private deterministic tree (treegen, seed 1; changed by this benchmark, so not the shared
one under /tmp/pg-dedup-bench) is generated under --tree-dir once. Then:

* warm first scan: `python -m services.dedup scan TREE --no-cache --format json -o /dev/null`
  (one warm-up, then --runs), wall time of the process, and the same scan in-process
  (scanner.run_scan without start-up), both as medians with min-max; half of the runs before
  the watch rounds and half after, so a change of the box's load in between hits both sides;
* watch: `python -m services.dedup watch TREE --report R --step-ms S --cache C` started once
  and left to finish its first scan; then --runs rounds (after one warm-up round) each change
  `--change-fraction` of the files (default 1%: a third copies of existing files, which join
  groups; a third in-place one-byte edits of files in groups, which leave them; a third
  deletions of the copies of the round before, or more copies in the first round) as fast as
  Python writes them, and time from the last write to the report being replaced after the
  last batch those changes caused (the watcher logs a batch right after its report is
  replaced: the line's arrival on its stderr pipe is that moment or later, so the figure is
  an upper bound; a round ends once the watcher is quiet for --quiet seconds). The report is
  then read back: every copy of the round must be in a group and no deleted file anywhere,
  else the round counts as stale (the bench fails). The watcher's own per-batch time (apply +
  report, from its log) is listed too, wall and CPU (its thread's). The time to the report
  includes the watcher's wait for the changes to stop (--step-ms: the idle step and the
  longest quiet window; the CLI default is 50).
* --compare DIR: another checkout's watcher (e.g. `git archive OLD | tar -x -C DIR`) runs the
  same rounds in alternating blocks (this checkout, DIR, this, DIR... --blocks each), so the
  two are measured side by side in one run; each block starts a fresh watcher.

Each round's ratio is the warm first scan's median (CLI, in-process) over that round's time
to the report; the ratios are given as median [min-max] over the rounds. CPU (user + system;
the CLI's from getrusage of the child, in-process every thread's) is given beside wall: on a
loaded box the first scan's CPU against the watcher's own CPU per batch is the ratio the
load moves least.

Writes reports/bench_dedup_watch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.dedup.files.sizes import parse_size  # noqa: E402
from services.dedup.files.treegen import generate_tree  # noqa: E402

PY = sys.executable


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def warm_scan_cli(tree: Path, runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system of the process) seconds of each warm CLI scan."""
    cmd = [PY, "-m", "services.dedup", "scan", str(tree), "--no-cache", "--format", "json", "-o", os.devnull]
    out, cpu = [], []
    for i in range(runs + 1):
        c0, t0 = _children_cpu(), time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=False, capture_output=True)
        if i:  # the first run warms the page cache
            out.append(time.perf_counter() - t0)
            cpu.append(_children_cpu() - c0)
    return out, cpu


def warm_scan_inprocess(tree: Path, runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (every thread of this process; a forked copy's too) in-process."""
    import gc

    from services.dedup.files.scanner import ScanOptions, run_scan

    out, cpu = [], []
    for i in range(runs + 1):
        gc.disable()  # as cmd_scan does
        c0, k0, t0 = time.process_time(), _children_cpu(), time.perf_counter()
        run_scan([str(tree)], ScanOptions())
        dt = time.perf_counter() - t0
        dc = time.process_time() - c0 + _children_cpu() - k0
        gc.enable()
        if i:
            out.append(dt)
            cpu.append(dc)
    return out, cpu


class LogReader(threading.Thread):
    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[tuple[float, str]] = []

    def run(self) -> None:
        for raw in self.stream:
            self.lines.append((time.perf_counter(), raw.decode(errors="replace").rstrip()))


def _files(tree: Path) -> list[Path]:
    out = []
    for dirpath, _dirs, names in os.walk(tree):
        if "_watch_bench" in dirpath:
            continue
        for n in names:
            p = Path(dirpath) / n
            try:
                st = p.lstat()
            except OSError:
                continue
            if p.is_file() and not p.is_symlink() and 0 < st.st_size <= 256 << 10 and st.st_nlink == 1:
                out.append(p)
    return out


def _report_paths(report: Path) -> set[str] | None:
    """Every path in the report's groups (None: unreadable)."""
    try:
        data = json.loads(report.read_bytes())
    except (OSError, ValueError):
        return None
    return {f["path"] for g in data["groups"] for f in g["files"]}


def _py_spy_summary(raw: Path) -> dict[str, float]:
    """Share of the watcher's batch samples (py-spy's collapsed stacks) per step of a batch."""
    steps = ("apply", "result", "write_report", "flush_cache", "log")
    counts = dict.fromkeys(steps, 0)
    inner: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _sep, n = line.rpartition(" ")
        frames = stack.split(";")
        at = next((i for i, f in enumerate(frames) if f.startswith("run_watch ")), None)
        if at is None or at + 1 >= len(frames) or "full_scan" in stack:
            continue  # start-up, the first scan, a full re-scan
        step = frames[at + 1].split(" ")[0].rpartition(".")[2]
        if step not in counts:
            continue  # the wait in RustNotify.watch, the loop itself
        counts[step] += int(n)
        if step == "apply":  # one level down, through _verify
            below = [f.split(" ")[0] for f in frames[at + 2 :] if "watch.py" in f or "stages.py" in f]
            named = (f for f in below if f.endswith(("_stage", "_digests", "_look")) and f != "_run_stage")
            key = next(named, None)
            key = key or (below[1] if len(below) > 1 else below[0] if below else "?")
            inner[key] = inner.get(key, 0) + int(n)
    total = sum(counts.values()) or 1
    out = {k: v / total for k, v in counts.items()}
    out.update({f"apply/{k}": v / total for k, v in sorted(inner.items(), key=lambda kv: -kv[1])[:12]})
    out["samples"] = total
    return out


def watch_rounds(
    tree: Path,
    work: Path,
    runs: int,
    fraction: float,
    step_ms: int,
    quiet: float,
    repo: Path = REPO,
    py_spy: Path | None = None,
) -> dict[str, Any]:
    report = work / "report.json"
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    report.unlink(missing_ok=True)
    bench_dir = tree / "_watch_bench"
    shutil.rmtree(bench_dir, ignore_errors=True)
    bench_dir.mkdir()
    candidates = _files(tree)
    n_files = sum(len(f) for _d, _s, f in os.walk(tree))
    n_change = max(3, int(n_files * fraction))
    rng = random.Random(1)
    cmd = [PY, "-m", "services.dedup", "watch", str(tree), "--report", str(report), "--cache", str(cache)]
    cmd += ["--step-ms", str(step_ms)]
    t_start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = LogReader(proc.stderr)
    log.start()
    deadline = time.monotonic() + 600
    while not any("first scan" in line for _t, line in log.lines):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"watch did not start: {log.lines}")
        time.sleep(0.01)
    first_scan = time.perf_counter() - t_start
    spy = None
    if py_spy is not None:  # the batches' samples (py-spy from this venv, or on PATH)
        exe = shutil.which("py-spy", path=f"{Path(PY).parent}:{os.environ.get('PATH', '')}") or "py-spy"
        rec = [exe, "record", "-p", str(proc.pid), "-r", "1000", "-f", "raw", "-o", str(py_spy)]
        rec.append("--nonblocking")
        spy = subprocess.Popen(rec, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached before the first round
    first_line = next(line for _t, line in log.lines if "first scan" in line)
    prev_copies: list[Path] = []
    rounds: list[dict[str, Any]] = []
    try:
        for rnd in range(runs + 1):
            third = n_change // 3
            copies = [
                bench_dir / f"r{rnd}-{i}"
                for i in range(n_change - 2 * third if prev_copies else n_change - third)
            ]
            sources = rng.sample(candidates, len(copies))
            edits = rng.sample([c for c in candidates if c.stat().st_size > 1], third)
            datas = [s.read_bytes() for s in sources]
            log_before = len(log.lines)
            t0 = time.perf_counter()
            for dst, data in zip(copies, datas, strict=True):
                with open(dst, "wb") as f:
                    f.write(data)
            for p in edits:
                with open(p, "r+b") as g:
                    g.seek(p.stat().st_size // 2)
                    b = g.read(1)
                    g.seek(-1, os.SEEK_CUR)
                    g.write(bytes([(b[0] + 1) % 256]) if b else b"x")
            for p in prev_copies[:third]:
                p.unlink()
            t_last_write = time.perf_counter()
            mono_last_write = time.monotonic()  # the clock of the watcher's log (CLOCK_MONOTONIC)
            changed = len(copies) + len(edits) + min(third, len(prev_copies))
            deleted = prev_copies[:third]
            prev_copies = prev_copies[third:] + copies
            # Wait until the watcher has logged a batch and then stayed quiet for `quiet` s.
            end = time.monotonic() + 120
            while time.monotonic() < end:
                batches = [t for t, line in log.lines[log_before:] if " batch " in f" {line}"]
                if batches and time.perf_counter() - max(batches) > quiet:
                    break
                time.sleep(0.01)
            new_lines = [line for _t, line in log.lines[log_before:] if "batch" in line]
            # The watcher logs a batch after its report is replaced: the line's arrival is
            # that moment (a pipe's latency late at most; no busy poll beside the watcher).
            replaced = [t for t, line in log.lines[log_before:] if " batch " in f" {line}"]
            batch_ms = [float(m.group(1)) for line in new_lines if (m := re.search(r"\(([\d.]+) ms", line))]
            cpu_ms = [float(m.group(1)) for line in new_lines if (m := re.search(r"([\d.]+) ms CPU\)", line))]
            # The watcher's own clock: when the batch began (changes quiet) and its report was
            # replaced; last write -> begin is the wait for the changes to stop.
            spans = [
                (float(m.group(1)), float(m.group(2)))
                for line in new_lines
                if (m := re.search(r"monotonic ([\d.]+)-([\d.]+) s", line))
            ]
            # The answer must hold this round's changes: each copy of a file this round did
            # not edit is in a group (its source has its bytes), no deleted file is anywhere.
            in_report = _report_paths(report)
            edited = set(edits)
            kept = [c for c, src in zip(copies, sources, strict=True) if src not in edited]
            stale = (
                None
                if in_report is None
                else sum(str(c) not in in_report for c in kept) + sum(str(d) in in_report for d in deleted)
            )
            r: dict[str, Any] = {
                "round": rnd,
                "stale_paths": stale,
                "changed_files": changed,
                "write_seconds": t_last_write - t0,
                "seconds_to_report": (max(replaced) - t_last_write) if replaced else None,
                # from the watcher's timestamps (None for a watcher that does not log them)
                "seconds_to_replace": (spans[-1][1] - mono_last_write) if spans else None,
                "seconds_to_last_batch": (spans[-1][0] - mono_last_write) if spans else None,
                "batches": len(new_lines),
                "watcher_ms": batch_ms,
                "watcher_cpu_ms": cpu_ms,
                "log": new_lines,
            }
            if rnd:  # round 0 is the warm-up
                rounds.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "log"}), flush=True)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # writes its file and exits
            spy.wait(timeout=60)
        proc.terminate()
        rc = proc.wait(timeout=60)
        shutil.rmtree(bench_dir, ignore_errors=True)
    bad = [r["round"] for r in rounds if r["stale_paths"] != 0 or r["seconds_to_report"] is None]
    if bad:
        raise SystemExit(f"rounds {bad}: the report did not hold the round's changes ({repo})")
    to_report = [r["seconds_to_report"] for r in rounds]
    watcher = [sum(r["watcher_ms"]) / 1000 for r in rounds]
    watcher_cpu = [sum(r["watcher_cpu_ms"]) / 1000 for r in rounds]
    return {
        "py_spy": _py_spy_summary(py_spy) if py_spy is not None and py_spy.exists() else None,
        "repo": str(repo),
        "files": n_files,
        "changed_per_round": n_change,
        "first_scan_seconds_incl_startup": first_scan,
        "first_scan_log": first_line,
        "seconds_to_report": _stats(to_report),
        "seconds_to_report_each": to_report,
        "batches_per_round": _stats([r["batches"] for r in rounds]),
        "watcher_seconds": _stats(watcher),
        "watcher_cpu_seconds": _stats(watcher_cpu),
        "exit_code_on_sigterm": rc,
        "rounds": rounds,
    }


def _ratios(scan_median: float, times: list[float]) -> dict[str, float]:
    return _stats([scan_median / t for t in times])


def _fmt(st: dict[str, float], scale: float = 1.0, unit: str = "", digits: int = 1) -> str:
    med, lo, hi = (f"{st[k] * scale:.{digits}f}" for k in ("median", "min", "max"))
    return f"{med}{unit} [{lo}-{hi}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--bytes", type=parse_size, default=parse_size("1536M"))
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--change-fraction", type=float, default=0.01)
    ap.add_argument("--step-ms", type=int, default=10)
    ap.add_argument("--quiet", type=float, default=1.0, help="seconds without a batch that end a round")
    ap.add_argument("--tree-dir", default="/tmp/pg-dedup-watch-bench")
    ap.add_argument("--compare", metavar="DIR", help="another checkout whose watcher runs the same rounds")
    ap.add_argument("--blocks", type=int, default=2, help="with --compare: blocks of --runs rounds each")
    ap.add_argument("--py-spy", metavar="FILE", help="py-spy the watcher (this checkout's) during its rounds")
    ap.add_argument("--out", default=str(REPO / "reports" / "bench_dedup_watch.json"))
    args = ap.parse_args()

    work = Path(args.tree_dir)
    work.mkdir(parents=True, exist_ok=True)
    tree = work / f"tree-{args.files}-{args.bytes}-1"
    if not tree.exists():
        generate_tree(str(tree), files=args.files, total_bytes=args.bytes, seed=1)
    load_start = os.getloadavg()
    before = args.runs // 2 + 1  # the other half after the watch rounds
    cli, cli_cpu = warm_scan_cli(tree, before)
    inproc, inproc_cpu = warm_scan_inprocess(tree, before)
    repos = [("this", REPO)]
    if args.compare:
        repos += [("compare", Path(args.compare).resolve())]
    blocks: dict[str, list[dict[str, Any]]] = {name: [] for name, _r in repos}
    for b in range(args.blocks if args.compare else 1):
        for name, repo in repos:
            spy = Path(args.py_spy) if args.py_spy and name == "this" and b == 0 else None
            blocks[name].append(
                watch_rounds(tree, work, args.runs, args.change_fraction, args.step_ms, args.quiet, repo, spy)
            )
    more = warm_scan_cli(tree, args.runs - before + 1)
    cli, cli_cpu = cli + more[0], cli_cpu + more[1]
    more = warm_scan_inprocess(tree, args.runs - before + 1)
    inproc, inproc_cpu = inproc + more[0], inproc_cpu + more[1]
    result: dict[str, Any] = {
        "tree": str(tree),
        "load_average_start": load_start,
        "load_average": os.getloadavg(),
        "warm_first_scan_cli": _stats(cli),
        "warm_first_scan_inprocess": _stats(inproc),
        "warm_first_scan_cli_cpu": _stats(cli_cpu),
        "warm_first_scan_inprocess_cpu": _stats(inproc_cpu),
    }
    lines = [
        f"load average {load_start[0]:.1f} -> {result['load_average'][0]:.1f};"
        f" warm first scan: CLI {_fmt(result['warm_first_scan_cli'], digits=3)} s (CPU"
        f" {_fmt(result['warm_first_scan_cli_cpu'], digits=3)}), in-process"
        f" {_fmt(result['warm_first_scan_inprocess'], digits=3)} s (CPU"
        f" {_fmt(result['warm_first_scan_inprocess_cpu'], digits=3)})"
    ]
    for name, repo in repos:
        times = [t for w in blocks[name] for t in w["seconds_to_report_each"]]
        cpu = [sum(r["watcher_cpu_ms"]) / 1000 for w in blocks[name] for r in w["rounds"]]
        own = [sum(r["watcher_ms"]) / 1000 for w in blocks[name] for r in w["rounds"]]
        nb = [r["batches"] for w in blocks[name] for r in w["rounds"]]
        rounds = [r for w in blocks[name] for r in w["rounds"]]
        waits = [r["seconds_to_last_batch"] for r in rounds if r["seconds_to_last_batch"] is not None]
        replaced = [r["seconds_to_replace"] for r in rounds if r["seconds_to_replace"] is not None]
        side: dict[str, Any] = {
            "repo": str(repo),
            "seconds_to_report": _stats(times),
            "watcher_seconds": _stats(own),
            "watcher_cpu_seconds": _stats(cpu),
            "batches_per_round": _stats(nb),
            "ratio_vs_cli": _ratios(result["warm_first_scan_cli"]["median"], times),
            "ratio_vs_inprocess": _ratios(result["warm_first_scan_inprocess"]["median"], times),
            "cpu_ratio_vs_cli": _ratios(result["warm_first_scan_cli_cpu"]["median"], cpu),
            "cpu_ratio_vs_inprocess": _ratios(result["warm_first_scan_inprocess_cpu"]["median"], cpu),
            "blocks": blocks[name],
        }
        if waits:
            side["seconds_to_last_batch"] = _stats(waits)
            side["seconds_to_replace"] = _stats(replaced)
        result["watch" if name == "this" else "watch_compare"] = side
        ms = {k: _fmt(side[k], 1000, " ms") for k in side if k.endswith("seconds") or k.endswith("report")}
        x = {k: _fmt(side[k], unit="x") for k in side if "ratio" in k}
        lines.append(
            f"{name} ({repo}): {len(times)} rounds, last write -> report {ms['seconds_to_report']};"
            f" watcher's own {ms['watcher_seconds']}, CPU {ms['watcher_cpu_seconds']};"
            f" batches a round {_fmt(side['batches_per_round'], digits=0)}\n"
            f"    vs in-process first scan {x['ratio_vs_inprocess']} (CPU {x['cpu_ratio_vs_inprocess']});"
            f" vs CLI {x['ratio_vs_cli']} (CPU {x['cpu_ratio_vs_cli']})"
        )
        if waits:
            begins = _fmt(side["seconds_to_last_batch"], 1000, " ms")
            lines.append(
                f"    watcher's clock: last write -> last batch begins {begins} (the wait for quiet),"
                f" -> report replaced {_fmt(side['seconds_to_replace'], 1000, ' ms')}"
            )
    spied = blocks["this"][0]["py_spy"]
    if spied:
        lines.append(
            f"py-spy of this watcher's batches ({spied['samples']} samples): "
            + ", ".join(f"{k} {v:.0%}" for k, v in spied.items() if k != "samples")
        )
    # the headline figures, as before: this checkout's medians
    med = result["watch"]["seconds_to_report"]["median"]
    result["speedup_vs_cli"] = result["warm_first_scan_cli"]["median"] / med
    result["speedup_vs_inprocess"] = result["warm_first_scan_inprocess"]["median"] / med
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
