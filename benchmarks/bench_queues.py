"""Throughput of libs.queues against the standard library, side by side in one run.

    .venv/bin/python benchmarks/bench_queues.py            # defaults: 200k items, 7 repeats
    .venv/bin/python benchmarks/bench_queues.py --quick    # a smoke run in a few seconds

Cases: BoundedQueue vs queue.Queue with 1 producer/1 consumer and 4/4 threads; AsyncBoundedQueue
vs asyncio.Queue with 1/1 and 4/4 tasks. Each case moves --items items through a queue of
--maxsize, split evenly between producers and between consumers (so no sentinel or close()
is timed). Every case is warmed up once, then measured --repeats times with ours and the peer
alternating, so drift on a shared machine hits both alike. Prints median items/s, the spread
(min..max as a percentage of the median) and the ratio ours/peer; writes every run to JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from libs.queues import AsyncBoundedQueue, BoundedQueue
from libs.service.cli import int_at_least

Runner = Callable[[int, int, int, int], float]  # (items, producers, consumers, maxsize) -> seconds


def run_threads(make_queue: Callable[[int], object]) -> Runner:
    def run(items: int, producers: int, consumers: int, maxsize: int) -> float:
        q = make_queue(maxsize)
        put, get = q.put, q.get  # type: ignore[attr-defined]
        start = threading.Barrier(producers + consumers + 1)

        def produce(n: int) -> None:
            start.wait()
            for i in range(n):
                put(i)

        def consume(n: int) -> None:
            start.wait()
            for _ in range(n):
                get()

        threads = [threading.Thread(target=produce, args=(share,)) for share in split(items, producers)]
        threads += [threading.Thread(target=consume, args=(share,)) for share in split(items, consumers)]
        for t in threads:
            t.start()
        start.wait()
        began = time.perf_counter()
        for t in threads:
            t.join()
        return time.perf_counter() - began

    return run


def run_tasks(make_queue: Callable[[int], object]) -> Runner:
    def run(items: int, producers: int, consumers: int, maxsize: int) -> float:
        async def main() -> float:
            q = make_queue(maxsize)
            put, get = q.put, q.get  # type: ignore[attr-defined]

            async def produce(n: int) -> None:
                for i in range(n):
                    await put(i)

            async def consume(n: int) -> None:
                for _ in range(n):
                    await get()

            began = time.perf_counter()
            await asyncio.gather(
                *(produce(share) for share in split(items, producers)),
                *(consume(share) for share in split(items, consumers)),
            )
            return time.perf_counter() - began

        return asyncio.run(main())

    return run


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass
class Case:
    name: str
    ours: str
    peer: str
    producers: int
    consumers: int
    run_ours: Runner = field(repr=False)
    run_peer: Runner = field(repr=False)


CASES = [
    Case(
        "threads 1P1C",
        "BoundedQueue",
        "queue.Queue",
        1,
        1,
        run_threads(BoundedQueue),
        run_threads(queue.Queue),
    ),
    Case(
        "threads 4P4C",
        "BoundedQueue",
        "queue.Queue",
        4,
        4,
        run_threads(BoundedQueue),
        run_threads(queue.Queue),
    ),
    Case(
        "asyncio 1P1C",
        "AsyncBoundedQueue",
        "asyncio.Queue",
        1,
        1,
        run_tasks(AsyncBoundedQueue),
        run_tasks(asyncio.Queue),
    ),
    Case(
        "asyncio 4P4C",
        "AsyncBoundedQueue",
        "asyncio.Queue",
        4,
        4,
        run_tasks(AsyncBoundedQueue),
        run_tasks(asyncio.Queue),
    ),
]


@dataclass
class Result:
    case: str
    ours: str
    peer: str
    items: int
    maxsize: int
    ours_items_per_s: list[float]
    peer_items_per_s: list[float]

    @staticmethod
    def summary(rates: list[float]) -> dict[str, float]:
        median = statistics.median(rates)
        return {
            "median": median,
            "min": min(rates),
            "max": max(rates),
            "spread_pct": 100.0 * (max(rates) - min(rates)) / median,
        }

    def to_json(self) -> dict[str, object]:
        ours, peer = self.summary(self.ours_items_per_s), self.summary(self.peer_items_per_s)
        paired = [o / p for o, p in zip(self.ours_items_per_s, self.peer_items_per_s, strict=True)]
        return {
            **asdict(self),
            "ours_summary": ours,
            "peer_summary": peer,
            "ratio_of_medians": ours["median"] / peer["median"],
            "paired_ratio_median": statistics.median(paired),
            "paired_ratio_min": min(paired),
            "paired_ratio_max": max(paired),
        }


def measure(case: Case, items: int, maxsize: int, repeats: int, warmup_items: int) -> Result:
    case.run_ours(warmup_items, case.producers, case.consumers, maxsize)
    case.run_peer(warmup_items, case.producers, case.consumers, maxsize)
    ours: list[float] = []
    peer: list[float] = []
    for r in range(repeats):
        # Alternate who goes first so a slow patch on a shared machine does not favour one.
        order = [(case.run_ours, ours), (case.run_peer, peer)]
        for run, rates in order if r % 2 == 0 else reversed(order):
            rates.append(items / run(items, case.producers, case.consumers, maxsize))
    return Result(case.name, case.ours, case.peer, items, maxsize, ours, peer)


def table(results: list[Result]) -> str:
    rate = f"{'items/s':>10} {'spread':>7}"
    head = f"{'case':<14} {'ours':<18} {rate}   {'peer':<14} {rate}   ratio  paired (min-max)"
    lines = [head, "-" * len(head)]
    for res in results:
        j = res.to_json()
        o, p = j["ours_summary"], j["peer_summary"]
        lines.append(
            f"{res.case:<14} {res.ours:<18} {o['median']:>10,.0f} {o['spread_pct']:>6.1f}%   "  # type: ignore[index]
            f"{res.peer:<14} {p['median']:>10,.0f} {p['spread_pct']:>6.1f}%   "  # type: ignore[index]
            f"{j['ratio_of_medians']:.2f}x  {j['paired_ratio_median']:.2f}x ({j['paired_ratio_min']:.2f}-"
            f"{j['paired_ratio_max']:.2f})"
        )
    return "\n".join(lines)


def plot(results: list[Result], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(results))
    ours = [statistics.median(r.ours_items_per_s) for r in results]
    peer = [statistics.median(r.peer_items_per_s) for r in results]
    ax.bar([x - 0.2 for x in xs], ours, width=0.4, label="libs.queues")
    ax.bar([x + 0.2 for x in xs], peer, width=0.4, label="stdlib peer")
    ax.set_xticks(list(xs), [r.case for r in results])
    ax.set_ylabel("items/s (median)")
    ax.set_title("libs.queues vs queue.Queue / asyncio.Queue")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_queues.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    positive = int_at_least(1)
    parser.add_argument("--items", type=positive, default=200_000, help="items per run (default 200000)")
    parser.add_argument("--repeats", type=positive, default=7, help="measured runs per queue (default 7)")
    parser.add_argument("--maxsize", type=positive, default=128, help="queue bound (default 128)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10000 items, 3 repeats")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reports/bench_queues.json"),
        help="JSON report path (a PNG goes next to it)",
    )
    args = parser.parse_args(argv)
    items, repeats = (10_000, 3) if args.quick else (args.items, args.repeats)

    results = []
    for n, case in enumerate(CASES, 1):
        print(f"[{n}/{len(CASES)}] {case.name}: {case.ours} vs {case.peer} ...", file=sys.stderr, flush=True)
        results.append(measure(case, items, args.maxsize, repeats, warmup_items=max(1_000, items // 10)))

    print()
    print(f"items={items} maxsize={args.maxsize} repeats={repeats} python={platform.python_version()}")
    print(table(results))
    print(
        "ratio = median ours / median peer; paired = median (and range) of ours/peer over back-to-back\n"
        "repeats, the steadier figure on a busy machine; spread = (max - min) / median"
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "queues",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "items": items,
        "maxsize": args.maxsize,
        "repeats": repeats,
        "results": [r.to_json() for r in results],
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    png = args.out.with_suffix(".png")
    if plot(results, png):
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
