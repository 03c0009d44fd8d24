"""The dedup engine against jdupes, rdfind, fdupes and rmlint: warm and cold, time and peak RSS.

    .venv/bin/python benchmarks/bench_dedup_peers.py [--runs 5] [--cold-runs 2] [--small]

Two deterministic trees (services/dedup/files/treegen.py, seed 1), generated once under --tree-dir
and reused: the 20k-file tree (~1.5 GiB, log-uniform sizes, ~30% duplicate copies, the hard
cases) and 200k tiny files (~100 MiB: mean ~520 bytes). --small: 2k files / 96 MiB and 20k
tiny files, for a quick check.

Per tree, side by side in one run (so load on the shared machine hits every tool alike):

* warm: the tree is read once, each contender runs once untimed, then --runs rounds run the
  contenders one after the other, the first one rotating;
* cold: before every run `sync; echo 3 > /proc/sys/vm/drop_caches` (page cache, dentries and
  inodes: the walk is cold too). That needs root; otherwise the cold rows say "not measured".
* engine with a warm hash cache (`--cache`, filled once untimed): the re-scan of an
  unchanged tree.
* --engine-args FLAGS (repeatable): the engine with these scan flags, another contender.
* --engine-ref REV (repeatable): the engine as it was at git revision REV (`git archive` of
  services/ and libs/ into a temporary directory), a contender beside the working tree's, so
  a change is measured before/after in the same run as the peers (its groups must equal too).

Each run: wall time of the process (interpreter start-up included), its peak RSS
(ru_maxrss from wait4), and its duplicate groups as sets of (device, inode), which must equal
the engine's (empty files excluded by every tool: fdupes -n, jdupes' and rdfind's defaults,
rmlint -T df, the engine's default). The load average is printed at the start and after
every round, and kept in the JSON (reports/bench_dedup_peers.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_dedup import child_env, ensure_tree, warm_page_cache  # noqa: E402
from libs.testkit import dedup_peers as peers  # noqa: E402

PEERS = ("jdupes", "rdfind", "fdupes", "rmlint")
SELECTED: set[str] = set(PEERS)  # --only
RUN_LIMIT_S = 600.0  # a run past this is killed and shown with rc -9 (see --limit)


@dataclass
class Run:
    seconds: float
    max_rss_kib: int
    rc: int
    cpu_s: float = -1.0  # user + system of the process and its children (time's %U + %S)


@dataclass
class Contender:
    name: str
    runs: list[Run] = field(default_factory=list)
    groups: int | None = None
    groups_equal: bool | None = None

    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    def row(self, ref: float | None) -> dict[str, Any]:
        secs = [r.seconds for r in self.runs]
        return {
            "contender": self.name,
            "runs": len(secs),
            "median_s": round(self.median(), 3),
            "min_s": round(min(secs), 3),
            "max_s": round(max(secs), 3),
            "stdev_s": round(statistics.stdev(secs), 3) if len(secs) > 1 else 0.0,
            "cpu_median_s": round(statistics.median(r.cpu_s for r in self.runs), 3),
            "vs_engine": round(self.median() / ref, 2) if ref else None,
            "peak_rss_mib": round(max(r.max_rss_kib for r in self.runs) / 1024, 1),
            "groups": self.groups,
            "groups_equal_engine": self.groups_equal,
            "exit_codes": sorted({r.rc for r in self.runs}),
        }


CHILD_ENV: dict[str, str] | None = None


def run_measured(cmd: list[str], cwd: str, stdout_path: str | None) -> Run:
    """Run `cmd` under /usr/bin/time: wall time here, peak RSS from time's %M. (wait4's own
    ru_maxrss would count the forked copy of this process before exec.)"""
    out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL  # noqa: SIM115
    fd, rss_file = tempfile.mkstemp(prefix="rss-")
    os.close(fd)
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            ["/usr/bin/time", "-f", "%M %U %S", "-o", rss_file, *cmd],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.DEVNULL,
            env=CHILD_ENV,
            start_new_session=True,  # a run past the limit is killed with its whole group
        )
        try:
            rc = proc.wait(timeout=RUN_LIMIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = -9
        seconds = time.perf_counter() - t0
        text = Path(rss_file).read_text().strip().splitlines()
        fields = text[-1].split() if text else []
        rss, cpu = -1, -1.0
        if len(fields) == 3 and fields[0].isdigit():
            rss, cpu = int(fields[0]), float(fields[1]) + float(fields[2])
    finally:
        os.unlink(rss_file)
        if stdout_path:
            out.close()  # type: ignore[union-attr]
    return Run(seconds, rss, rc, cpu)


def can_drop_caches() -> bool:
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


ENGINE_REFS: dict[str, Path] = {}  # --engine-ref: revision -> its sources' directory
ENGINE_EXTRA: list[str] = []  # --engine-args: further engine contenders with these flags


def export_revision(rev: str, into: Path) -> Path:
    """services/ and libs/ of git revision `rev`, extracted under `into` (the repo untouched)."""
    dest = into / f"engine-{rev}"
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "services", "libs"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def commands(root: Path, work: Path) -> dict[str, tuple[list[str], str | None, str]]:
    """name -> (argv, stdout file, cwd)."""
    py = sys.executable
    engine = [py, "-m", "services.dedup", "scan", "--no-progress", "--format", "json"]
    refs = {
        f"engine@{rev}": ([*engine, "--no-cache", str(root)], str(work / f"engine@{rev}.json"), str(src))
        for rev, src in ENGINE_REFS.items()
    }
    for extra in ENGINE_EXTRA:
        flags = extra.split()
        refs[f"engine {extra}"] = (
            [*engine, *flags, "--no-cache", str(root)],
            str(work / f"engine-{'_'.join(flags)}.json"),
            str(REPO),
        )
    return {
        "engine": ([*engine, "--no-cache", str(root)], str(work / "engine.json"), str(REPO)),
        **refs,
        "jdupes": (peers.jdupes_command([str(root)]), str(work / "jdupes.txt"), str(work)),
        "rdfind": (peers.rdfind_command([str(root)], str(work / "rdfind.txt")), None, str(work)),
        "fdupes": (peers.fdupes_command([str(root)]), str(work / "fdupes.txt"), str(work)),
        "rmlint": (
            ["rmlint", "-T", "df", "-o", f"fdupes:{work / 'rmlint.txt'}", str(root)],
            None,
            str(work),
        ),
        "engine on an empty directory (start-up)": (
            [*engine, "--no-cache", str(work / "empty")],
            None,
            str(REPO),
        ),
        "engine, warm hash cache": (
            [*engine, "--cache", str(work / "hash-cache"), str(root)],
            str(work / "engine-cached.json"),
            str(REPO),
        ),
    }


def groups_of(name: str, work: Path) -> peers.Groups | None:
    if "empty" in name:
        return None
    if name.startswith("engine@"):
        return peers.engine_groups_from_json(json.loads((work / f"{name}.json").read_text()))
    if name.startswith("engine --"):
        out = f"engine-{'_'.join(name.split()[1:])}.json"
        return peers.engine_groups_from_json(json.loads((work / out).read_text()))
    if name.startswith("engine"):
        out = "engine.json" if name == "engine" else "engine-cached.json"
        return peers.engine_groups_from_json(json.loads((work / out).read_text()))
    if name == "rdfind":
        return peers.parse_rdfind_results((work / "rdfind.txt").read_bytes())
    return peers.parse_blank_line_output((work / f"{name}.txt").read_bytes())


def bench_tree(label: str, root: Path, manifest: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-dedup-peers-"))
    try:
        return _bench_tree(label, root, manifest, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench_tree(
    label: str, root: Path, manifest: dict[str, Any], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    cmds = {n: c for n, c in commands(root, work).items() if n not in PEERS or n in SELECTED}
    (work / "empty").mkdir()
    names = list(cmds)
    print(f"\n== {label}: {root}", file=sys.stderr)
    print(f"load average at start: {load()}", file=sys.stderr)
    loads: list[list[float]] = [load()]

    def once(name: str) -> Run:
        cmd, out, cwd = cmds[name]
        return run_measured(cmd, cwd, out)

    warm_page_cache(root)
    warm = {n: Contender(n) for n in names}
    slow: set[str] = set()
    for name in names:  # untimed: warms the tools' own files; fills the hash cache
        first = once(name)
        if first.rc == -9:  # past --limit: shown as such, not run again
            slow.add(name)
            warm[name].runs.append(first)
            print(f"  {name}: killed after {RUN_LIMIT_S:.0f} s; not run again", file=sys.stderr)
    once("engine, warm hash cache")  # now a re-scan through a filled cache
    ours = groups_of("engine", work)
    assert ours is not None
    for name in names:
        found = groups_of(name, work) if name not in slow else None
        if found is not None:
            warm[name].groups, warm[name].groups_equal = len(found), found == ours
    for r in range(args.runs):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            if name not in slow:
                warm[name].runs.append(once(name))
        loads.append(load())
        print(f"  warm round {r + 1}/{args.runs}, load {loads[-1]}", file=sys.stderr)

    cold: dict[str, Contender] = {}
    if args.cold_runs and can_drop_caches():
        cold = {n: Contender(n, groups=warm[n].groups, groups_equal=warm[n].groups_equal) for n in names}
        for r in range(args.cold_runs):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                if name in slow:
                    if not cold[name].runs:
                        cold[name].runs = list(warm[name].runs)
                    continue
                drop_caches()
                cold[name].runs.append(once(name))
            loads.append(load())
            print(f"  cold round {r + 1}/{args.cold_runs}, load {loads[-1]}", file=sys.stderr)
    ref_w = warm["engine"].median()
    cold_note = None
    if not cold and args.cold_runs:
        cold_note = "not measured (needs root for /proc/sys/vm/drop_caches)"
    elif not cold:
        cold_note = "not asked (--cold-runs 0)"
    return {
        "tree": label,
        "manifest": manifest,
        "warm": [c.row(ref_w) for c in warm.values()],
        "cold": [c.row(cold["engine"].median()) for c in cold.values()] if cold else None,
        "cold_note": cold_note,
        "load_average": loads,
    }


def print_tables(result: dict[str, Any]) -> None:
    for tree in result["trees"]:
        for kind in ("warm", "cold"):
            rows = tree[kind]
            print(f"\n{tree['tree']}, {kind} page cache:\n")
            if rows is None:
                print(tree["cold_note"])
                continue
            print(
                "| contender | median s | min-max s | time / engine | CPU s (median) | peak RSS MiB "
                "| groups equal |"
            )
            print("|---|---:|---:|---:|---:|---:|---|")
            for r in rows:
                name = f"**{r['contender']}**" if r["contender"].startswith("engine") else r["contender"]
                if -9 in r["exit_codes"]:
                    print(f"| {name} | > {r['max_s']:.0f} (killed) | | | | |")
                    continue
                print(
                    f"| {name} | {r['median_s']:.3f} | {r['min_s']:.3f}-{r['max_s']:.3f} | "
                    f"{r['vs_engine']:.2f} | {r['cpu_median_s']:.2f} | {r['peak_rss_mib']:.1f} | "
                    f"{_equal(r['groups_equal_engine'])} |"
                )
        print(f"\nload average during {tree['tree']}: {tree['load_average']}")


def _equal(flag: bool | None) -> str:
    return "" if flag is None else "yes" if flag else "NO"


def main(argv: list[str] | None = None) -> int:
    global CHILD_ENV
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="2k files / 96 MiB and 20k tiny files")
    ap.add_argument("--runs", type=int, default=5, help="warm runs per contender")
    ap.add_argument("--cold-runs", type=int, default=2, help="cold runs per contender (0: none)")
    ap.add_argument("--trees", default="files,tiny", help="comma-separated: files, tiny")
    ap.add_argument("--tree-dir", default=os.path.join(tempfile.gettempdir(), "pg-dedup-bench"))
    ap.add_argument("--json", default=str(REPO / "reports" / "bench_dedup_peers.json"))
    ap.add_argument("--limit", type=float, default=RUN_LIMIT_S, help="seconds a run may take")
    ap.add_argument(
        "--only",
        default=",".join(PEERS),
        help="comma-separated peers to run beside the engine (default: all four)",
    )
    ap.add_argument(
        "--engine-ref",
        action="append",
        default=[],
        metavar="REV",
        help="also run the engine as of git revision REV (before/after in one run; repeatable)",
    )
    ap.add_argument(
        "--engine-args",
        action="append",
        default=[],
        metavar="FLAGS",
        help="also run the engine with these scan flags, e.g. '--workers 1' (repeatable)",
    )
    args = ap.parse_args(argv)
    globals()["RUN_LIMIT_S"] = args.limit
    ENGINE_EXTRA[:] = [a.strip() for a in args.engine_args if a.strip()]
    if args.runs < 1 or args.cold_runs < 0:
        print("error: --runs must be >= 1 and --cold-runs >= 0", file=sys.stderr)
        return 2
    only = [t for t in args.only.split(",") if t]
    if not only or any(t not in PEERS for t in only):
        print(f"error: --only takes peers out of {', '.join(PEERS)}", file=sys.stderr)
        return 2
    globals()["SELECTED"] = set(only)
    missing = [t for t in only if shutil.which(t) is None]
    if missing:
        print(f"error: not installed: {', '.join(missing)} (make setup)", file=sys.stderr)
        return 2
    base = Path(args.tree_dir)
    base.mkdir(parents=True, exist_ok=True)
    specs = {
        "files": (2_000, 96 << 20) if args.small else (20_000, 1536 << 20),
        "tiny": (20_000, 20 << 20) if args.small else (200_000, 100 << 20),
    }
    work = Path(tempfile.mkdtemp(prefix="bench-dedup-env-"))
    # The engine from cached bytecode, as an installed package runs (see bench_dedup.child_env).
    CHILD_ENV = child_env("cached", work)
    for rev in args.engine_ref:
        try:
            ENGINE_REFS[rev] = export_revision(rev, work)
        except (OSError, subprocess.CalledProcessError) as exc:
            shutil.rmtree(work, ignore_errors=True)
            print(f"error: --engine-ref {rev}: {exc}", file=sys.stderr)
            return 2
    trees = []
    try:
        for label in args.trees.split(","):
            if label not in specs:
                print(f"error: unknown tree {label!r} (files, tiny)", file=sys.stderr)
                return 2
            files, nbytes = specs[label]
            root, manifest = ensure_tree(base, files, nbytes, seed=1)
            name = f"{manifest['files']:,} files, {manifest['bytes'] / 2**20:,.0f} MiB"
            trees.append(bench_tree(name, root, manifest, args))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "dedup-peers",
        "command": " ".join([".venv/bin/python", "benchmarks/bench_dedup_peers.py", *sys.argv[1:]]),
        "when_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": {t: _version(t) for t in sorted(SELECTED)},
        "trees": trees,
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print_tables(result)
    return 0


def _version(tool: str) -> str:
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, timeout=10)
    except OSError:
        return "?"
    text = (out.stdout or out.stderr).decode(errors="replace").strip().splitlines()
    return text[0][:80] if text else "?"


if __name__ == "__main__":
    sys.exit(main())
