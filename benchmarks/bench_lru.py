"""Benchmark libs.lru against functools.lru_cache, cachetools and lru-dict, side by side in one run.

    .venv/bin/python benchmarks/bench_lru.py [--runs 5] [--ops 200000] [--json reports/bench_lru.json]

Groups (each row: median ops/s over --runs timed runs after one warm-up run, min-max spread,
the ratio to the group's reference peer, and the same median and ratio per CPU-second of the
process, which on a loaded machine leaves out the time spent waiting for a core):

* memoized function: calls of a memoized one-argument function (a hit returns the cached
  value, a miss calls the function and stores it). functools.lru_cache is C code; memoize
  and cachetools.cached are pure Python.
* cache-aside get/put: ``v = c.get(k); if v is None: c.put(k, k)`` on LRUCache,
  cachetools.LRUCache, lru-dict's ``lru.LRU`` (C: the ceiling for a dict-like LRU) and
  PersistentLRU. LRUCache and memoize take a lock on every operation (they are thread-safe);
  cachetools and lru.LRU do not, so the "+Lock" rows show them used the way threads must.
* put (always evicting) and get (always hitting) alone, with lru.LRU as the C ceiling.
* persistent get/put: PersistentLRU with sync="never" (each record reaches the kernel, no
  fdatasync) against the in-memory LRUCache, on --ops/10.
* persistent hit / persistent put, by sync setting: gets that all hit a full cache, and puts
  that all evict, under sync="never", "writes" (the default: puts fdatasync'd, hits not) and
  "always" (--ops/10 operations; 300 for a setting that fdatasyncs each one, as the disk sets
  its pace).

Within a group the contenders run round-robin (run 1 of each, then run 2 of each, ...), so
load changes on a shared machine hit them alike and the ratios stay meaningful. The load
average before and after the run goes into the JSON report.

Key streams: "hot" sends 90% of accesses to 1,000 hot keys out of 10,000 (capacity 1,000:
most accesses hit), "cold" is uniform over 100,000 keys (almost every access misses and evicts).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version as _version
from pathlib import Path

import cachetools
import lru

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.lru import LRUCache, PersistentLRU, memoize
from libs.lru.persistent import Sync

CAPACITY = 1000


@dataclass
class Row:
    group: str
    workload: str
    impl: str
    ops: int
    median_ops_s: float
    min_ops_s: float
    max_ops_s: float
    ratio: float = 1.0  # median / the reference peer's median in the same group and workload
    reference: str = ""
    # The same per CPU-second of this process: on a loaded machine it leaves out the time the
    # process waited for a core. Meaningless for rows that wait on the disk (fdatasync).
    median_ops_cpu_s: float = 0.0
    cpu_ratio: float = 1.0


def key_stream(kind: str, n: int, seed: int = 7) -> list[int]:
    rng = random.Random(seed)
    if kind == "hot":
        hot, cold = (0, CAPACITY), (CAPACITY, 10_000)
        return [rng.randrange(*(hot if rng.random() < 0.9 else cold)) for _ in range(n)]
    return [rng.randrange(100_000) for _ in range(n)]


# Each factory returns a fresh "run(keys)" closure, so every timed run starts from an empty cache.
Runner = Callable[[list[int]], None]


def memoized_functools() -> Runner:
    @functools.lru_cache(maxsize=CAPACITY)
    def f(k: int) -> int:
        return k

    def run(keys: list[int]) -> None:
        for k in keys:
            f(k)

    return run


def memoized_ours() -> Runner:
    @memoize(maxsize=CAPACITY)
    def f(k: int) -> int:
        return k

    def run(keys: list[int]) -> None:
        for k in keys:
            f(k)

    return run


def memoized_cachetools() -> Runner:
    @cachetools.cached(cachetools.LRUCache(maxsize=CAPACITY))
    def f(k: int) -> int:
        return k

    def run(keys: list[int]) -> None:
        for k in keys:
            f(k)

    return run


def memoized_cachetools_locked() -> Runner:
    @cachetools.cached(cachetools.LRUCache(maxsize=CAPACITY), lock=threading.Lock())
    def f(k: int) -> int:
        return k

    def run(keys: list[int]) -> None:
        for k in keys:
            f(k)

    return run


def aside_cachetools_locked() -> Runner:
    """cachetools.LRUCache is not thread-safe; this is how threads must share one."""
    c: cachetools.LRUCache[int, int] = cachetools.LRUCache(maxsize=CAPACITY)
    lock = threading.Lock()

    def run(keys: list[int]) -> None:
        for k in keys:
            with lock:
                v = c.get(k)
            if v is None:
                with lock:
                    c[k] = k

    return run


def aside_ours() -> Runner:
    c: LRUCache[int, int] = LRUCache(CAPACITY)
    get, put = c.get, c.put

    def run(keys: list[int]) -> None:
        for k in keys:
            if get(k) is None:
                put(k, k)

    return run


def aside_lru_dict() -> Runner:
    c: lru.LRU[int, int] = lru.LRU(CAPACITY)
    get, put = c.get, c.__setitem__

    def run(keys: list[int]) -> None:
        for k in keys:
            if get(k) is None:
                put(k, k)

    return run


def aside_lru_dict_locked() -> Runner:
    c: lru.LRU[int, int] = lru.LRU(CAPACITY)
    lock = threading.Lock()

    def run(keys: list[int]) -> None:
        for k in keys:
            with lock:
                v = c.get(k)
            if v is None:
                with lock:
                    c[k] = k

    return run


def aside_cachetools() -> Runner:
    c: cachetools.LRUCache[int, int] = cachetools.LRUCache(maxsize=CAPACITY)
    get, put = c.get, c.__setitem__

    def run(keys: list[int]) -> None:
        for k in keys:
            if get(k) is None:
                put(k, k)

    return run


class _PersistentRunner:
    """A PersistentLRU in a fresh temporary directory per timed run; ``mode`` "aside" runs the
    cache-aside loop, "hit" gets keys of a cache filled beforehand (every get hits), "put" puts
    keys that are not in the full cache (every put evicts). Filling is not timed."""

    def __init__(self, sync: Sync, mode: str = "aside") -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-lru-")
        self.mode = mode
        if mode != "aside":
            fill: PersistentLRU[int, int] = PersistentLRU(self.dir, CAPACITY, sync="never")
            with fill:
                for k in range(-CAPACITY, 0):
                    fill.put(k, k)
        self.cache: PersistentLRU[int, int] = PersistentLRU(self.dir, CAPACITY, sync=sync)

    def __call__(self, keys: list[int]) -> None:
        get, put = self.cache.get, self.cache.put
        try:
            if self.mode == "aside":
                for k in keys:
                    if get(k) is None:
                        put(k, k)
            elif self.mode == "hit":
                for k in keys:
                    get(-1 - k % CAPACITY)
            else:
                for k in keys:
                    put(k, k)
        finally:
            self.cache.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def put_only(factory: Callable[[], tuple[Callable[[int, int], None], Callable[[int], object]]]) -> Runner:
    put, _ = factory()
    # Fill first so every timed put evicts.
    for k in range(-CAPACITY, 0):
        put(k, k)

    def run(keys: list[int]) -> None:
        for k in keys:
            put(k, k)

    return run


def get_only(factory: Callable[[], tuple[Callable[[int, int], None], Callable[[int], object]]]) -> Runner:
    put, get = factory()
    for k in range(CAPACITY):
        put(k, k)

    def run(keys: list[int]) -> None:
        for k in keys:
            get(k % CAPACITY)

    return run


def ours_pair() -> tuple[Callable[[int, int], None], Callable[[int], object]]:
    c: LRUCache[int, int] = LRUCache(CAPACITY)
    return c.put, c.get


def cachetools_pair() -> tuple[Callable[[int, int], None], Callable[[int], object]]:
    c: cachetools.LRUCache[int, int] = cachetools.LRUCache(maxsize=CAPACITY)
    return c.__setitem__, c.get


def lru_dict_pair() -> tuple[Callable[[int, int], None], Callable[[int], object]]:
    c: lru.LRU[int, int] = lru.LRU(CAPACITY)
    return c.__setitem__, c.get


# A contender: (name, factory) or (name, factory, ops) when it runs fewer ops than its case.
Contender = tuple[str, Callable[[], Runner]] | tuple[str, Callable[[], Runner], int]
Case = tuple[str, str, int, list[Contender]]
SLOW_OPS = 300  # per run for settings that fdatasync every operation


def cases(ops: int) -> list[Case]:
    """Every group; the first contender of each is the reference peer."""
    persistent_ops = max(ops // 10, 1000)
    out: list[Case] = []
    for workload in ("hot", "cold"):
        out.append(
            (
                "memoized function",
                workload,
                ops,
                [
                    ("functools.lru_cache", memoized_functools),
                    ("libs.lru.memoize", memoized_ours),
                    ("cachetools.cached", memoized_cachetools),
                    ("cachetools.cached+Lock", memoized_cachetools_locked),
                ],
            )
        )
        out.append(
            (
                "cache-aside get/put",
                workload,
                ops,
                [
                    ("cachetools.LRUCache", aside_cachetools),
                    ("cachetools.LRUCache+Lock", aside_cachetools_locked),
                    ("lru.LRU (C)", aside_lru_dict),
                    ("lru.LRU (C)+Lock", aside_lru_dict_locked),
                    ("libs.lru.LRUCache", aside_ours),
                ],
            )
        )
    out += [
        (
            "put (evicting)",
            "distinct",
            ops,
            [
                ("cachetools.LRUCache", lambda: put_only(cachetools_pair)),
                ("lru.LRU (C)", lambda: put_only(lru_dict_pair)),
                ("libs.lru.LRUCache", lambda: put_only(ours_pair)),
            ],
        ),
        (
            "get (hit)",
            "hot",
            ops,
            [
                ("cachetools.LRUCache", lambda: get_only(cachetools_pair)),
                ("lru.LRU (C)", lambda: get_only(lru_dict_pair)),
                ("libs.lru.LRUCache", lambda: get_only(ours_pair)),
            ],
        ),
    ]
    for workload in ("hot", "cold"):
        out.append(
            (
                "persistent get/put",
                workload,
                persistent_ops,
                [
                    ("libs.lru.LRUCache", aside_ours),
                    ("PersistentLRU sync=never", lambda: _PersistentRunner("never")),
                ],
            )
        )
    for mode, workload in (("hit", "hot"), ("put", "distinct")):
        writes_ops = persistent_ops if mode == "hit" else SLOW_OPS  # a put under "writes" is synced
        out.append(
            (
                f"persistent {mode}",
                workload,
                persistent_ops,
                [
                    ("PersistentLRU sync=never", functools.partial(_PersistentRunner, "never", mode)),
                    (
                        "PersistentLRU sync=writes",
                        functools.partial(_PersistentRunner, "writes", mode),
                        writes_ops,
                    ),
                    (
                        "PersistentLRU sync=always",
                        functools.partial(_PersistentRunner, "always", mode),
                        SLOW_OPS,
                    ),
                ],
            )
        )
    return out


def bench(runs: int, ops: int, progress: Callable[[str], None]) -> list[Row]:
    all_cases = cases(ops)
    rows: list[Row] = []
    for i, (group, workload, n, contenders) in enumerate(all_cases, 1):
        progress(f"[{i}/{len(all_cases)}] {group} / {workload}: {len(contenders)} contenders x {runs} runs")
        keys = list(range(n)) if workload == "distinct" else key_stream(workload, n)
        plan = [(c[0], c[1], c[2] if len(c) == 3 else n) for c in contenders]
        for _, factory, count in plan:
            factory()(keys[: min(count, 1000)])  # warm-up: imports, allocator, caches
        rates: dict[str, list[float]] = {name: [] for name, _, _ in plan}
        cpu_rates: dict[str, list[float]] = {name: [] for name, _, _ in plan}
        # Round-robin, so that load changes on a shared machine hit every contender alike.
        for _ in range(runs):
            for name, factory, count in plan:
                run = factory()
                part = keys[:count]
                c0, t0 = time.process_time(), time.perf_counter()
                run(part)
                t1, c1 = time.perf_counter(), time.process_time()
                rates[name].append(count / (t1 - t0))
                cpu_rates[name].append(count / max(c1 - c0, 1e-9))
        ref_name = plan[0][0]
        ref_median = statistics.median(rates[ref_name])
        ref_cpu = statistics.median(cpu_rates[ref_name])
        for name, _, count in plan:
            r = rates[name]
            med, cpu = statistics.median(r), statistics.median(cpu_rates[name])
            rows.append(Row(group, workload, name, count, med, min(r), max(r), med / ref_median, ref_name))
            rows[-1].median_ops_cpu_s, rows[-1].cpu_ratio = cpu, cpu / ref_cpu
    return rows


def _ratio(r: float) -> str:
    return f"{r:.2f}" if r >= 0.1 else f"{r:.3f}" if r >= 0.001 else f"{r:.1e}"


def table(rows: list[Row]) -> str:
    head = (
        f"{'group':<20} {'keys':<8} {'implementation':<26} {'median ops/s':>13} "
        f"{'min-max ops/s':>21} {'ratio':>6} {'ops/CPU-s':>11} {'ratio':>6}  vs"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        spread = f"{r.min_ops_s:,.0f}-{r.max_ops_s:,.0f}"
        lines.append(
            f"{r.group:<20} {r.workload:<8} {r.impl:<26} {r.median_ops_s:>13,.0f} {spread:>21} "
            f"{_ratio(r.ratio):>6} {r.median_ops_cpu_s:>11,.0f} {_ratio(r.cpu_ratio):>6}  {r.reference}"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> Path | None:
    """A bar chart of median ops/s per row (log scale), or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = [f"{r.group} / {r.workload} / {r.impl}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1))
    ax.barh(
        range(len(rows)),
        [r.median_ops_s for r in rows],
        color=["C0" if "libs" in r.impl or "Persistent" in r.impl else "C7" for r in rows],
    )
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median ops/s (log scale); blue = libs.lru")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs per row after one warm-up (default 5)")
    p.add_argument("--ops", type=int, default=200_000, help="operations per in-memory run (default 200000)")
    p.add_argument("--json", type=Path, default=Path("reports/bench_lru.json"), help="where to write results")
    args = p.parse_args(argv)
    if args.runs < 1 or args.ops < 1000:
        p.error("--runs must be >= 1 and --ops >= 1000")
    started = time.time()
    load_before = os.getloadavg()
    rows = bench(args.runs, args.ops, lambda msg: print(msg, file=sys.stderr, flush=True))
    load_after = os.getloadavg()
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "lru",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started_unix": started,
        "seconds": time.time() - started,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_1_5_15_before": load_before,
        "loadavg_1_5_15_after": load_after,
        "peers": {"cachetools": cachetools.__version__, "lru-dict": _version("lru-dict")},
        "runs": args.runs,
        "capacity": CAPACITY,
        "rows": [asdict(r) for r in rows],
    }
    args.json.write_text(json.dumps(report, indent=2))
    png = plot(rows, args.json.with_suffix(".png"))
    print(f"load average (1/5/15 min) before {load_before}, after {load_after}", file=sys.stderr)
    print(
        f"\nwrote {args.json}{' and ' + str(png) if png else ''} in {report['seconds']:.0f}s", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
