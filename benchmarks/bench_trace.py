"""Benchmark libs.trace: events/s for parsing + validation + aggregation, side by side with
naive dict-based peers, and peak memory of the streaming stack machine.

Workloads (deterministic, seeded):
* start/end log: ``name:start:ts`` / ``name:end:ts`` lines from a random walk over a fixed
  random call tree (2,000 call paths, 10% of calls recursive). Peer: the classic LeetCode "exclusive time of
  functions" solution (a stack of names, charge ``ts - prev`` to the top, one dict of
  exclusive time per name) with the same half-open convention. It validates nothing and
  computes one number per name; libs.trace validates every event and builds the call tree
  (inclusive, exclusive, calls per call path) from which the per-function table comes.
* collapsed stacks (py-spy raw): ``a;b;c COUNT`` lines. Peer: a dict that adds each line's
  count to every prefix (inclusive per path) and to the full stack (exclusive per path).
  libs.trace diffs consecutive stacks into begin/end events (longest common prefix),
  validates them and aggregates the same per-path numbers.

Both peers' results are checked against libs.trace's before anything is timed.

Deep stacks: one sample ``--deep`` frames deep (default 100,000) written as collapsed stacks
and as an SVG flame graph, CPU seconds per writer. Both must stay linear in the depth (they
were quadratic: 15-60 s at depth 100k).

    .venv/bin/python benchmarks/bench_trace.py                 # default sizes, < 2 min
    .venv/bin/python benchmarks/bench_trace.py --events 1000000 --stack-lines 200000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from libs.trace import CallTree, read_trace
from libs.trace.writers import collapsed, svg

NAMES = [f"fn{i}" for i in range(40)]


class Shape:
    """A fixed random call tree (the program's possible call paths), to walk over: real
    profiles repeat a bounded set of paths, so the aggregate stays small while the event
    stream grows. 10% of calls are recursive (a child named like its parent)."""

    def __init__(self, nodes: int, seed: int, max_depth: int = 30) -> None:
        rnd = random.Random(seed)
        self.names = ["main"]
        self.parent = [-1]
        self.depth = [1]
        self.children: list[list[int]] = [[]]
        for i in range(1, nodes):
            parent = rnd.randrange(i)
            while self.depth[parent] >= max_depth:
                parent = self.parent[parent]
            name = self.names[parent] if rnd.random() < 0.1 else rnd.choice(NAMES)
            self.names.append(name)
            self.parent.append(parent)
            self.depth.append(self.depth[parent] + 1)
            self.children.append([])
            self.children[parent].append(i)

    def path(self, node: int) -> list[str]:
        names = []
        while node >= 0:
            names.append(self.names[node])
            node = self.parent[node]
        return names[::-1]


def startend_log(events: int, seed: int = 1, paths: int = 2_000) -> list[str]:
    """``events`` start/end lines from a random walk over a fixed call tree of ``paths``
    nodes, re-entering ``main`` until the budget is spent."""
    rnd = random.Random(seed)
    shape = Shape(paths, seed)
    lines: list[str] = []
    stack: list[int] = []
    ts = 0
    while len(lines) + len(stack) < events:
        ts += rnd.randint(0, 3)
        if not stack:
            stack.append(0)
            lines.append(f"main:start:{ts}\n")
            continue
        kids = shape.children[stack[-1]]
        if kids and rnd.random() < 0.55:
            child = rnd.choice(kids)
            stack.append(child)
            lines.append(f"{shape.names[child]}:start:{ts}\n")
        else:
            lines.append(f"{shape.names[stack.pop()]}:end:{ts}\n")
    while stack:
        ts += 1
        lines.append(f"{shape.names[stack.pop()]}:end:{ts}\n")
    return lines


def collapsed_lines(count: int, seed: int = 2) -> list[str]:
    """py-spy raw output of a program with ``count`` distinct stacks (each written once, in
    random order, as py-spy does), frames named like py-spy's ``fn (file.py:line)``."""
    rnd = random.Random(seed)
    shape = Shape(count * 2, seed)
    nodes = rnd.sample(range(1, len(shape.names)), count)
    return [
        ";".join(f"{name} (app.py:{len(name)})" for name in shape.path(node)) + f" {rnd.randint(1, 30)}\n"
        for node in nodes
    ]


# ---- libs.trace -------------------------------------------------------------------------


def trace_startend(lines: list[str]) -> CallTree:
    return CallTree.from_events(read_trace(lines, format="startend").events)


def trace_collapsed(lines: list[str]) -> CallTree:
    return CallTree.from_events(read_trace(lines, format="collapsed").events)


# ---- peers ------------------------------------------------------------------------------


def leetcode_exclusive(lines: list[str]) -> dict[str, float]:
    """LeetCode 636 with half-open ends: exclusive time per function name, no validation."""
    exclusive: dict[str, float] = {}
    stack: list[str] = []
    prev = 0.0
    for line in lines:
        name, kind, stamp = line.rstrip("\n").rsplit(":", 2)
        ts = float(stamp)
        if stack:
            top = stack[-1]
            exclusive[top] = exclusive.get(top, 0.0) + ts - prev
        if kind == "start":
            stack.append(name)
        else:
            stack.pop()
        prev = ts
    return exclusive


def naive_collapsed(lines: list[str]) -> tuple[dict[tuple[str, ...], int], dict[tuple[str, ...], int]]:
    inclusive: dict[tuple[str, ...], int] = {}
    exclusive: dict[tuple[str, ...], int] = {}
    for line in lines:
        stack, count_text = line.rstrip("\n").rsplit(" ", 1)
        count = int(count_text)
        frames = tuple(stack.split(";"))
        for depth in range(1, len(frames) + 1):
            prefix = frames[:depth]
            inclusive[prefix] = inclusive.get(prefix, 0) + count
        exclusive[frames] = exclusive.get(frames, 0) + count
    return inclusive, exclusive


# ---- checks -----------------------------------------------------------------------------


def check_startend(lines: list[str]) -> None:
    ours = {s.name: s.exclusive for s in trace_startend(lines).functions()}
    theirs = leetcode_exclusive(lines)
    assert {k: v for k, v in theirs.items() if v} == {k: v for k, v in ours.items() if v}, "peer disagrees"


def check_collapsed(lines: list[str]) -> None:
    tree = trace_collapsed(lines)
    inclusive, exclusive = naive_collapsed(lines)
    ours_incl = {path: node.inclusive for path, node in tree.root.walk()}
    ours_excl = {path: node.exclusive for path, node in tree.root.walk() if node.exclusive}
    assert ours_incl == inclusive and ours_excl == exclusive, "peer disagrees"


# ---- timing -----------------------------------------------------------------------------


def measure(
    func: Callable[[list[str]], object], lines: list[str], repeats: int
) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds per run, after one warm-up run. CPU time is kept too because the
    machine is shared: wall time includes waiting for a core, CPU time does not."""
    func(lines)  # warm-up: imports, caches, allocator
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        func(lines)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return walls, cpus


def stream_peak(path: str) -> int:
    """Peak traced memory while streaming a file through parser + stack machine only."""
    tracemalloc.start()
    with open(path) as lines:
        for _ in read_trace(lines, format="startend").events:
            pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def deep_stack(depth: int, repeats: int) -> dict:
    """CPU seconds to build the tree of one ``depth``-deep sample and to write it as collapsed
    stacks and as SVG (median of ``repeats``)."""
    line = ";".join(f"fn{i % 40}" for i in range(depth)) + " 1\n"
    cpu = time.process_time()
    tree = trace_collapsed([line])
    build = time.process_time() - cpu
    result: dict = {"depth": depth, "build_cpu_s": build}
    for name, write in (
        ("collapsed", lambda: collapsed.write(tree, io.StringIO(), unit="samples")),
        ("svg", lambda: svg.render(tree, unit="samples")),
    ):
        cpus = []
        for _ in range(repeats):
            cpu = time.process_time()
            write()
            cpus.append(time.process_time() - cpu)
        result[f"{name}_cpu_s"] = statistics.median(cpus)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="start/end log events (default 1M)")
    parser.add_argument(
        "--stack-lines", type=int, default=50_000, help="collapsed stack lines (default 50k, about 1M events)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--deep", type=int, default=100_000, help="frames of the deep-stack sample")
    parser.add_argument("--out", default="reports/bench_trace.json")
    args = parser.parse_args()

    print(
        f"generating {args.events:,} start/end events and {args.stack_lines:,} collapsed lines ...",
        flush=True,
    )
    startend = startend_log(args.events)
    stacks = collapsed_lines(args.stack_lines)
    stack_events = sum(1 for _ in read_trace(stacks, format="collapsed").events)
    check_startend(startend)
    check_collapsed(stacks)
    print("peers agree with libs.trace; timing ...", flush=True)

    rows: list[dict[str, Any]] = []
    for workload, events, lines, ours, peer, peer_name in (
        ("start/end log", len(startend), startend, trace_startend, leetcode_exclusive, "LeetCode dict+stack"),
        ("collapsed stacks", stack_events, stacks, trace_collapsed, naive_collapsed, "naive prefix dict"),
    ):
        for name, func in (("libs.trace", ours), (peer_name, peer)):
            times, cpus = measure(func, lines, args.repeats)
            median = statistics.median(times)
            rows.append(
                {
                    "workload": workload,
                    "implementation": name,
                    "lines": len(lines),
                    "events": events,
                    "median_s": median,
                    "min_s": min(times),
                    "max_s": max(times),
                    "stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
                    "events_per_s": events / median,
                    "cpu_median_s": statistics.median(cpus),
                    "cpu_events_per_s": events / statistics.median(cpus),
                    "runs": times,
                    "cpu_runs": cpus,
                }
            )
            print(f"  {workload:17} {name:20} median {median:.3f}s", flush=True)

    # Streaming memory: the stack machine's state is O(depth), so the peak must not grow with
    # the input (the file object reads line by line).
    memory = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (args.events // 10, args.events):
            path = os.path.join(tmp, f"log{size}")
            with open(path, "w") as f:
                f.writelines(startend_log(size, seed=3))
            memory.append({"events": size, "peak_bytes": stream_peak(path)})

    deep = deep_stack(args.deep, 3)

    print()
    print(f"{'workload':17} {'implementation':20} {'events':>10} {'median s':>9} {'spread s':>13} "
          f"{'events/s':>11} {'cpu s':>6} {'cpu events/s':>12} {'ratio':>6}")  # fmt: skip
    for i in range(0, len(rows), 2):
        base = rows[i]["median_s"]
        for row in rows[i : i + 2]:
            spread = f"{row['min_s']:.3f}-{row['max_s']:.3f}"
            cells = [
                f"{row['workload']:17}",
                f"{row['implementation']:20}",
                f"{row['events']:>10,}",
                f"{row['median_s']:>9.3f}",
                f"{spread:>13}",
                f"{row['events_per_s']:>11,.0f}",
                f"{row['cpu_median_s']:>6.3f}",
                f"{row['cpu_events_per_s']:>12,.0f}",
                f"{row['median_s'] / base:>5.2f}x",
            ]
            print(" ".join(cells))
    print("median/spread: wall seconds over the runs (min-max); ratio = wall median / libs.trace's")
    for entry in memory:
        print(
            f"streaming parse+validate of {entry['events']:,} events: "
            f"peak {entry['peak_bytes'] / 1024:,.0f} KiB"
        )

    print(
        f"deep stack ({deep['depth']:,} frames), CPU s: build {deep['build_cpu_s']:.2f}, "
        f"collapsed {deep['collapsed_cpu_s']:.2f}, svg {deep['svg_cpu_s']:.2f}"
    )

    report = {
        "benchmark": "trace",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "rows": rows,
        "streaming_memory": memory,
        "deep_stack": deep,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
