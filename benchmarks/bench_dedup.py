"""Benchmark the dedup engine against jdupes, rdfind and fdupes, side by side in one run.

    .venv/bin/python benchmarks/bench_dedup.py [--small] [--runs 3] [--workers 1]

A deterministic tree (services/dedup/files/treegen.py, seed 1: ~20k files, ~1.5 GiB by default;
--small: 2k files, 96 MiB) is generated once under --tree-dir and reused. The page cache is
warmed by reading every file, then every contender runs once untimed, then --runs rounds
run the contenders round-robin (load drift on a shared machine hits them alike). Per run:

* wall time of the whole process (start-up included, for the peers as for the engine);
* bytes read: `rchar` from /proc/<pid>/io, read after the child exits but before it is
  reaped (waitid WNOWAIT), i.e. every byte the process read through read(2)-like calls,
  module files included; the engine's own count of content bytes is reported as well;
* the duplicate groups, as sets of (device, inode), compared with the engine's: all four
  tools must agree (empty files excluded by each: fdupes -n, jdupes' default, rdfind's
  -ignoreempty default, the engine's default).

Then the hash cache: one engine run fills a fresh cache (timed as "engine, filling cache"),
and --runs re-scans of the unchanged tree go through it ("engine, warm cache"); the issue's
aim is a warm re-scan at least 10x faster than a scan without cache.

Writes reports/bench_dedup.json and, when matplotlib is installed, reports/bench_dedup.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from libs.testkit import dedup_peers as peers  # noqa: E402
from services.dedup.files.treegen import generate_tree  # noqa: E402


@dataclass
class Sample:
    seconds: float
    rchar: int
    read_bytes: int
    rc: int
    content_bytes: int | None = None


@dataclass
class Contender:
    name: str
    samples: list[Sample] = field(default_factory=list)
    groups_equal: bool | None = None
    groups: int | None = None

    def median(self, attr: str = "seconds") -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)


# Environment of every measured child; set by _bench (see --bytecode).
CHILD_ENV: dict[str, str] | None = None


def child_env(bytecode: str, work: Path) -> dict[str, str] | None:
    """`cached`: the engine runs from cached bytecode as an installed package does (pip
    compiles on install); a shell with PYTHONDONTWRITEBYTECODE=1 would otherwise make every
    run re-compile each module (~50 ms of start-up). The cache goes to a private prefix, so
    the tree is not touched; the untimed warm-up run fills it. `off`: the caller's environment
    as it is."""
    if bytecode == "off":
        return None
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def run_measured(cmd: list[str], *, cwd: str | None = None, stdout_path: str | None = None) -> Sample:
    """Run `cmd`, return wall time and its /proc io counters read before the zombie is reaped."""
    out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.DEVNULL, env=CHILD_ENV)
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        seconds = time.perf_counter() - t0
        io: dict[str, int] = {}
        try:
            with open(f"/proc/{proc.pid}/io") as f:
                for line in f:
                    k, v = line.split(":")
                    io[k] = int(v)
        except OSError:
            pass
        rc = proc.wait()
    finally:
        if stdout_path:
            out.close()  # type: ignore[union-attr]
    return Sample(seconds, io.get("rchar", -1), io.get("read_bytes", -1), rc)


def warm_page_cache(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            try:
                with open(p, "rb", buffering=0) as f:
                    while chunk := f.read(1 << 20):
                        total += len(chunk)
            except OSError:
                pass
    return total


def evict_page_cache(root: Path) -> None:
    """Drop this tree's pages (and only this tree's) from the page cache: POSIX_FADV_DONTNEED
    on every file, so a run reads from the device as a first scan would, without touching
    the rest of a shared machine's cache (no drop_caches)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def ensure_tree(base: Path, files: int, nbytes: int, seed: int) -> tuple[Path, dict[str, Any]]:
    root = base / f"tree-{files}-{nbytes}-{seed}"
    manifest_path = base / f"tree-{files}-{nbytes}-{seed}.json"
    if root.exists() and manifest_path.exists():
        return root, json.loads(manifest_path.read_text())
    free = shutil.disk_usage(base).free
    if free < 2 * nbytes:
        print(f"error: {base}: {free >> 20} MiB free, need {2 * nbytes >> 20} MiB", file=sys.stderr)
        raise SystemExit(2)
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    man = asdict(generate_tree(root, files=files, total_bytes=nbytes, seed=seed))
    man["generate_seconds"] = round(time.perf_counter() - t0, 2)
    manifest_path.write_text(json.dumps(man))
    return root, man


def neardup_figures(seed: int = 5) -> list[dict[str, Any]]:
    """Pairwise precision and recall of each near-duplicate method on planted pages."""
    import hashlib
    import itertools

    from libs.testkit.neardup_corpus import corpus, true_pairs
    from services.dedup.pages.neardup import NearConfig, PageIndex

    rows = []
    for rate in (0.01, 0.03, 0.05, 0.10):
        pages = corpus(seed=seed, edit_rate=rate)
        truth = true_pairs(pages)
        for method in ("simhash", "minhash", "both"):
            index = PageIndex(NearConfig(method=method))
            t0 = time.perf_counter()
            for p in pages:
                body = hashlib.sha256(p.text.encode()).hexdigest()
                index.add_event(
                    {
                        "url": p.url,
                        "final_url": p.url,
                        "status": 200,
                        "content_sha256": body,
                        "fetched_at": 0.0,
                        "crawl_id": "bench",
                        "text": p.text,
                    }
                )
            per_page = (time.perf_counter() - t0) / len(pages)
            predicted = {frozenset(pr) for c in index.clusters() for pr in itertools.combinations(c, 2)}
            tp = len(predicted & truth)
            rows.append(
                {
                    "edit_rate": rate,
                    "method": method,
                    "pages": len(pages),
                    "true_pairs": len(truth),
                    "precision": round(tp / len(predicted), 4) if predicted else 1.0,
                    "recall": round(tp / len(truth), 4),
                    "ms_per_page": round(per_page * 1000, 3),
                }
            )
    return rows


def neardup_grid(
    seed: int = 5,
    shares: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4),
    edits: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2),
    methods: tuple[str, ...] = ("content", "both"),
) -> list[dict[str, Any]]:
    """Pairwise precision/recall with a site frame (boilerplate) of each share and each edit
    rate: libs.testkit.neardup_corpus with boiler_words = 375 f / (1 - f) (articles of
    150-600 words, mean 375), 60 families of 4, 200 unrelated pages, 20 sites."""
    import hashlib
    import itertools

    from libs.testkit.neardup_corpus import corpus, true_pairs
    from services.dedup.pages.neardup import NearConfig, PageIndex

    rows = []
    for share in shares:
        boiler_words = round(375 * share / (1 - share))
        for rate in edits:
            pages = corpus(seed=seed, edit_rate=rate, boiler_words=boiler_words)
            truth = true_pairs(pages)
            # The realised share of each page's words that are its site's frame.
            realised = sum(boiler_words / len(p.text.split()) for p in pages) / len(pages)
            for method in methods:
                index = PageIndex(NearConfig(method=method))
                t0 = time.perf_counter()
                for p in pages:
                    index.add_event(
                        {
                            "url": p.url,
                            "final_url": p.url,
                            "status": 200,
                            "content_sha256": hashlib.sha256(p.text.encode()).hexdigest(),
                            "fetched_at": 0.0,
                            "crawl_id": "bench",
                            "text": p.text,
                        }
                    )
                clusters = index.clusters()
                per_page = (time.perf_counter() - t0) / len(pages)
                predicted = {frozenset(pr) for c in clusters for pr in itertools.combinations(c, 2)}
                tp = len(predicted & truth)
                rows.append(
                    {
                        "boiler_share": share,
                        "boiler_share_realised": round(realised, 3),
                        "edit_rate": rate,
                        "method": method,
                        "pages": len(pages),
                        "true_pairs": len(truth),
                        "precision": round(tp / len(predicted), 4) if predicted else 1.0,
                        "recall": round(tp / len(truth), 4),
                        "ms_per_page": round(per_page * 1000, 3),
                    }
                )
    return rows


def print_neardup_grid(rows: list[dict[str, Any]]) -> None:
    methods = sorted({r["method"] for r in rows}, key=lambda m: m != "content")
    edits = sorted({r["edit_rate"] for r in rows})
    print("precision / recall (pairwise); rows: shared boilerplate, columns: words edited\n")
    print("| boilerplate (realised) | method | " + " | ".join(f"{e:.0%} edited" for e in edits) + " |")
    print("|---|---|" + "---:|" * len(edits))
    for share in sorted({r["boiler_share"] for r in rows}):
        for m in methods:
            cells = {r["edit_rate"]: r for r in rows if r["boiler_share"] == share and r["method"] == m}
            realised = next(iter(cells.values()))["boiler_share_realised"]
            print(
                f"| {share:.0%} ({realised:.1%}) | {m} | "
                + " | ".join(f"{cells[e]['precision']:.3f} / {cells[e]['recall']:.3f}" for e in edits)
                + " |"
            )
    for m in methods:
        ms = [r["ms_per_page"] for r in rows if r["method"] == m]
        print(f"\n{m}: {min(ms):.2f}-{max(ms):.2f} ms/page", end="")
    print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--neardup-only",
        action="store_true",
        help="only the near-duplicate grid (boilerplate share x edit rate); no file tree",
    )
    ap.add_argument("--small", action="store_true", help="2k files / 96 MiB (CI-sized)")
    ap.add_argument("--files", type=int, default=None)
    ap.add_argument("--mib", type=int, default=None, help="tree size in MiB")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4, help="engine --workers")
    ap.add_argument("--order", choices=["path", "inode"], default="inode", help="engine --order")
    ap.add_argument(
        "--cold-runs",
        type=int,
        default=1,
        help="runs per contender with the tree evicted from the page cache",
    )
    ap.add_argument(
        "--bytecode",
        choices=["cached", "off"],
        default="cached",
        help="engine runs from cached .pyc like an installed package (cached) or as the shell says (off)",
    )
    ap.add_argument("--tree-dir", default=os.path.join(tempfile.gettempdir(), "pg-dedup-bench"))
    ap.add_argument("--json", default=str(REPO / "reports" / "bench_dedup.json"))
    args = ap.parse_args(argv)
    if args.neardup_only:
        rows = neardup_grid()
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        out = args.json.replace("bench_dedup.json", "bench_dedup_neardup.json")
        with open(out, "w") as f:
            json.dump({"benchmark": "dedup-neardup", "rows": rows}, f, indent=2)
        print_neardup_grid(rows)
        return 0
    files = args.files or (2_000 if args.small else 20_000)
    nbytes = (args.mib or (96 if args.small else 1536)) << 20
    for tool in ("jdupes", "rdfind", "fdupes"):
        if shutil.which(tool) is None:
            print(f"error: {tool} not installed (make setup)", file=sys.stderr)
            return 2

    base = Path(args.tree_dir)
    base.mkdir(parents=True, exist_ok=True)
    root, manifest = ensure_tree(base, files, nbytes, args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    try:
        return _bench(args, root, manifest, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, root: Path, manifest: dict[str, Any], work: Path) -> int:
    global CHILD_ENV
    CHILD_ENV = child_env(args.bytecode, work)
    py = sys.executable
    engine_cmd = [
        py,
        "-m",
        "services.dedup",
        "scan",
        "--no-cache",
        "--no-progress",
        "--format",
        "json",
        "--workers",
        str(args.workers),
        str(root),
    ]
    rd_results = str(work / "rdfind-results.txt")
    commands: dict[str, tuple[list[str], str | None]] = {
        "engine": (engine_cmd, str(work / "engine.json")),
        "jdupes": (peers.jdupes_command([str(root)]), str(work / "jdupes.txt")),
        "rdfind": (peers.rdfind_command([str(root)], rd_results), None),
        "fdupes": (peers.fdupes_command([str(root)]), str(work / "fdupes.txt")),
    }
    contenders = {name: Contender(name) for name in commands}

    print(f"tree: {root} ({manifest['files']} files, {manifest['bytes'] / 2**30:.2f} GiB)", file=sys.stderr)
    warmed = warm_page_cache(root)
    print(f"page cache warmed: {warmed / 2**30:.2f} GiB read; warm-up run of each contender", file=sys.stderr)

    def once(name: str) -> Sample:
        cmd, out = commands[name]
        sample = run_measured(cmd, cwd=str(REPO) if name == "engine" else str(work), stdout_path=out)
        if name == "engine" and out:
            sample.content_bytes = json.loads(Path(out).read_text())["totals"]["bytes_read"]
        return sample

    for name in commands:  # warm-up, and the groups check on its output
        once(name)
    engine_report = json.loads(Path(commands["engine"][1] or "").read_text())
    ours = peers.engine_groups_from_json(engine_report)
    found = {
        "engine": ours,
        "jdupes": peers.parse_blank_line_output(Path(commands["jdupes"][1] or "").read_bytes()),
        "fdupes": peers.parse_blank_line_output(Path(commands["fdupes"][1] or "").read_bytes()),
        "rdfind": peers.parse_rdfind_results(Path(rd_results).read_bytes()),
    }
    for name, groups in found.items():
        contenders[name].groups = len(groups)
        contenders[name].groups_equal = groups == ours

    for r in range(args.runs):
        order = list(commands)
        order = order[r % len(order) :] + order[: r % len(order)]  # rotate who goes first
        for name in order:
            contenders[name].samples.append(once(name))
        print(f"round {r + 1}/{args.runs} done", file=sys.stderr)

    # The hash cache: fill once, then re-scan the unchanged tree through it.
    cache_dir = work / "hash-cache"
    cached_cmd = [*engine_cmd[:4], "--cache", str(cache_dir), *engine_cmd[5:]]
    fill = Contender("engine, filling cache")
    warm = Contender("engine, warm cache")
    fill.samples.append(run_measured(cached_cmd, cwd=str(REPO), stdout_path=str(work / "fill.json")))
    fill_report = json.loads((work / "fill.json").read_text())
    fill.samples[-1].content_bytes = fill_report["totals"]["bytes_read"]
    fill.groups = len(peers.engine_groups_from_json(fill_report))
    fill.groups_equal = peers.engine_groups_from_json(fill_report) == ours
    for _ in range(args.runs):
        s = run_measured(cached_cmd, cwd=str(REPO), stdout_path=str(work / "warm.json"))
        warm_report = json.loads((work / "warm.json").read_text())
        s.content_bytes = warm_report["totals"]["bytes_read"]
        warm.samples.append(s)
    warm.groups = len(peers.engine_groups_from_json(warm_report))
    warm.groups_equal = peers.engine_groups_from_json(warm_report) == ours
    contenders[fill.name] = fill
    contenders[warm.name] = warm

    # Cold page cache: every run starts with the tree evicted, as a first scan of a tree would.
    cold = {name: Contender(name) for name in commands}
    cold_rescan = Contender("engine, warm cache")
    for r in range(args.cold_runs):
        for name in [*commands, "rescan"]:
            evict_page_cache(root)
            if name == "rescan":
                s = run_measured(cached_cmd, cwd=str(REPO), stdout_path=str(work / "warm.json"))
                s.content_bytes = json.loads((work / "warm.json").read_text())["totals"]["bytes_read"]
                cold_rescan.samples.append(s)
            else:
                cold[name].samples.append(once(name))
        print(f"cold round {r + 1}/{args.cold_runs} done", file=sys.stderr)
    cold[cold_rescan.name] = cold_rescan
    for name in commands:
        cold[name].groups, cold[name].groups_equal = contenders[name].groups, contenders[name].groups_equal
    cold_rescan.groups, cold_rescan.groups_equal = warm.groups, warm.groups_equal

    ref = contenders["engine"].median()
    rows = _rows(contenders, ref)
    cold_rows = _rows(cold, cold["engine"].median()) if args.cold_runs else []
    rescan_speedup = round(ref / warm.median(), 1)
    cold_speedup = round(cold["engine"].median() / cold_rescan.median(), 1) if args.cold_runs else None
    near = neardup_figures()
    result = {
        "benchmark": "dedup",
        "neardup": near,
        "command": " ".join([".venv/bin/python", "benchmarks/bench_dedup.py", *(sys.argv[1:])]),
        "tree": manifest,
        "engine_workers": args.workers,
        "engine_order": args.order,
        "bytecode": args.bytecode,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_after": os.getloadavg(),
        "rows": rows,
        "cold_rows": cold_rows,
        "warm_rescan_speedup": rescan_speedup,
        "cold_first_scan_vs_warm_rescan": cold_speedup,
        "all_groups_equal": all(r["groups_equal_engine"] for r in rows),
    }
    _print_table(result)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    _plot(result, out.with_suffix(".png"))
    print(f"wrote {out}", file=sys.stderr)
    return 0 if result["all_groups_equal"] else 1


def _rows(contenders: dict[str, Contender], ref: float) -> list[dict[str, Any]]:
    rows = []
    for c in contenders.values():
        secs = [s.seconds for s in c.samples]
        rows.append(
            {
                "contender": c.name,
                "runs": len(secs),
                "median_s": round(statistics.median(secs), 4),
                "min_s": round(min(secs), 4),
                "max_s": round(max(secs), 4),
                "stdev_s": round(statistics.stdev(secs), 4) if len(secs) > 1 else 0.0,
                "time_vs_engine": round(statistics.median(secs) / ref, 2),
                "rchar_mib": round(c.median("rchar") / 2**20, 1),
                "content_read_mib": (
                    round(statistics.median(s.content_bytes or 0 for s in c.samples) / 2**20, 1)
                    if c.samples[0].content_bytes is not None
                    else None
                ),
                "groups": c.groups,
                "groups_equal_engine": c.groups_equal,
                "exit_codes": sorted({s.rc for s in c.samples}),
            }
        )
    return rows


def _print_table(result: dict[str, Any]) -> None:
    t = result["tree"]
    print(
        f"\ntree: {t['files']} files, {t['bytes'] / 2**30:.2f} GiB, seed 1;"
        f" engine --workers {result['engine_workers']} --order {result['engine_order']}"
    )
    for title, rows in (("warm page cache", result["rows"]), ("cold page cache", result["cold_rows"])):
        if not rows:
            continue
        print(f"\n{title}:\n")
        header = "contender|runs|median s|min-max s|stdev s|time / engine|rchar MiB|content MiB|groups|equal"
        print("| " + header.replace("|", " | ") + " |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in rows:
            content = "" if r["content_read_mib"] is None else f"{r['content_read_mib']:,.1f}"
            print(
                f"| {r['contender']} | {r['runs']} | {r['median_s']:.3f}"
                f" | {r['min_s']:.3f}-{r['max_s']:.3f} |"
                f" {r['stdev_s']:.3f} | {r['time_vs_engine']:.2f} | {r['rchar_mib']:,.1f} | {content} |"
                f" {r['groups']} | {'yes' if r['groups_equal_engine'] else 'NO'} |"
            )
    print("\nnear-duplicate pages (planted families, pairwise):\n")
    print("| edit rate | method | pages | true pairs | precision | recall | ms/page |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in result["neardup"]:
        print(
            f"| {r['edit_rate']:.0%} | {r['method']} | {r['pages']} | {r['true_pairs']} |"
            f" {r['precision']:.3f} | {r['recall']:.3f} | {r['ms_per_page']:.2f} |"
        )
    speedup = result["warm_rescan_speedup"]
    print(f"\nwarm re-scan through the hash cache vs first scan, warm page cache: {speedup}x")
    if result["cold_first_scan_vs_warm_rescan"] is not None:
        print(
            "warm re-scan through the hash cache vs first scan, cold page cache:"
            f" {result['cold_first_scan_vs_warm_rescan']}x"
        )


def _plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = result["rows"]
    names = [r["contender"] for r in rows]
    med = [r["median_s"] for r in rows]
    err = [
        [m - r["min_s"] for m, r in zip(med, rows, strict=True)],
        [r["max_s"] - m for m, r in zip(med, rows, strict=True)],
    ]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(names, med, xerr=err, color=["#4c72b0" if n.startswith("engine") else "#999999" for n in names])
    ax.set_xlabel("wall seconds (median, min-max)")
    ax.set_title(
        f"dedup: {result['tree']['files']} files, {result['tree']['bytes'] / 2**30:.2f} GiB, warm page cache"
    )
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
