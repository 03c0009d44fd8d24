"""Which order among eligible hosts ends the wide crawl soonest? A model, replayed on a real crawl.

    .venv/bin/python benchmarks/bench_crawler_order.py [--scenario wide] [--store F.sqlite]
        [--slots 64] [--prep 0.045] [--fetch 0.025] [--record 0.04] [--policies fifo,oracle,...]

The crawl's own discovery graph is taken from a finished crawl's SQLite store (the `edges` table:
which fetched page named which URL; run here with the crawler's CLI on bench_crawler's scenario
unless --store names one): each URL is known only once a page naming it was fetched and recorded,
each host's requests are one after another with the politeness delay from the end of the previous
response, robots.txt first. A discrete-event model then hands host turns to `--slots` fetch slots,
a turn holding its slot for prep + fetch seconds (claim, start, request) and the page's links
known `--record` seconds after its response: a fixed capacity of slots / (prep + fetch) turns a
second. Only the order among hosts eligible at once changes between policies:

  fifo            the crawler's frontier: the host eligible first goes first
  oracle          the most requests left first, known from the finished crawl (not knowable online)
  bigger          requests made + URLs ready, a host of unknown size (< 2 requests) as the mean
                  (the order tried in session 4, 0d29d4e)
  explore_bigger  the same, unknown sizes first (3279945)
  chain_first     a host with a redirect hop ready first (the deep hosts' depth is redirect chains)
  most_requests   the most requests made first

Printed: the model's end of the crawl for each policy. Deterministic; no process but the first
crawl (when no --store is given) runs, so the box's load does not move it.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

Web = tuple[dict[int, tuple[str, int, bool, int]], dict[int, list[int]], list[int]]
# A policy: (eligible [(host, eligible since)], requests made, ready URLs per host, web) -> host
Eligible = list[tuple[str, float]]
Reqs = collections.Counter[str]
Ready = dict[str, list[tuple[int, int]]]
Policy = Callable[[Eligible, Reqs, Ready, "Model"], str]


def load(path: str) -> Web:
    """URLs (id -> host, depth, requested, redirects), the discovery edges, the seeds (depth 0)."""
    db = sqlite3.connect(path)
    urls: dict[int, tuple[str, int, bool, int]] = {}
    by_url: dict[str, int] = {}
    for i, url, host, depth, redirects, error in db.execute(
        "SELECT id, url, host, depth, redirects, error FROM urls"
    ):
        # robots-denied URLs are never requested (FAILED without a request)
        urls[i] = (host, depth, not (error or "").startswith("robots_"), redirects)
        by_url[url] = i
    children: dict[int, list[int]] = collections.defaultdict(list)
    for src, url in db.execute("SELECT src, url FROM edges"):
        j = by_url.get(url)
        if j is not None and j != src:
            children[src].append(j)
    db.close()
    return urls, children, [i for i, u in urls.items() if u[1] == 0]


class Model:
    def __init__(self, web: Web, slots: int, prep: float, fetch: float, record: float, delay: float) -> None:
        self.urls, self.children, self.seeds = web
        self.slots, self.prep, self.fetch, self.record, self.delay = slots, prep, fetch, record, delay
        self.size = collections.Counter(u[0] for u in self.urls.values() if u[2])  # oracle only

    def run(self, policy: Policy) -> tuple[float, int]:
        """The model's end of the crawl (s) and its request count."""
        ready: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
        known: set[int] = set()
        reqs: collections.Counter[str] = collections.Counter()
        robots_done: set[str] = set()
        next_at: dict[str, float] = {}
        queued: dict[str, float] = {}  # host -> eligible at (the frontier)
        events: list[tuple[float, int, str, str, int | None]] = []
        seq = 0

        def push(at: float, kind: str, host: str, url: int | None) -> None:
            nonlocal seq
            seq += 1
            heapq.heappush(events, (at, seq, kind, host, url))

        def discover(i: int, now: float) -> None:
            if i in known:
                return
            known.add(i)
            host, depth, requested, _ = self.urls[i]
            if requested:
                heapq.heappush(ready[host], (depth, i))
                if host not in busy and host not in queued:
                    queued[host] = max(now, next_at.get(host, 0.0))

        busy: set[str] = set()
        for i in self.seeds:
            discover(i, 0.0)
        free, now, end, requests = self.slots, 0.0, 0.0, 0
        while True:
            while free > 0:
                eligible = [(h, at) for h, at in queued.items() if at <= now]
                if not eligible:
                    break
                host = policy(eligible, reqs, ready, self)
                del queued[host]
                busy.add(host)
                free -= 1
                if host not in robots_done:
                    push(now + self.prep + self.fetch, "response", host, None)
                elif ready[host]:
                    push(now + self.prep + self.fetch, "response", host, heapq.heappop(ready[host])[1])
                else:
                    push(now + self.prep, "empty", host, None)
            soonest = min(queued.values(), default=None)
            if events and (free == 0 or soonest is None or events[0][0] <= max(soonest, now)):
                now, _, kind, host, url = heapq.heappop(events)
            elif soonest is not None:
                now = max(now, soonest)
                continue
            else:
                return end, requests
            if kind == "response":
                free += 1
                requests += 1
                reqs[host] += 1
                end = now
                busy.discard(host)
                next_at[host] = now + self.delay
                if url is None:
                    robots_done.add(host)
                else:
                    push(now + self.record, "recorded", host, url)
                if ready[host] or url is None:
                    queued[host] = next_at[host]
            elif kind == "empty":
                free += 1
                busy.discard(host)
                if ready[host]:
                    queued[host] = max(now, next_at.get(host, 0.0))
            else:
                for j in self.children.get(url or 0, ()):
                    discover(j, now)


def fifo(eligible: Eligible, reqs: Reqs, ready: Ready, m: Model) -> str:
    return min(eligible, key=lambda e: e[1])[0]


def oracle(eligible: Eligible, reqs: Reqs, ready: Ready, m: Model) -> str:
    return min(eligible, key=lambda e: (reqs[e[0]] - m.size[e[0]], e[1]))[0]


def _size(host: str, reqs: Reqs, ready: Ready) -> int:
    return reqs[host] + len(ready[host])


def bigger(
    eligible: list[tuple[str, float]],
    reqs: collections.Counter[str],
    ready: Ready,
    m: Model,
    *,
    unknown_first: bool = False,
) -> str:
    # (eligible since - 2 s for each request made and URL ready, at most 60 s), as 0d29d4e
    sizes = [_size(h, reqs, ready) for h, _ in eligible if reqs[h] >= 2]
    mean = sum(sizes) / len(sizes) if sizes else 0.0

    def key(e: tuple[str, float]) -> float:
        if reqs[e[0]] < 2:
            return e[1] - (60.0 if unknown_first else min(60.0, 2.0 * mean))
        return e[1] - min(60.0, 2.0 * _size(e[0], reqs, ready))

    return min(eligible, key=key)[0]


def explore_bigger(eligible: Eligible, reqs: Reqs, ready: Ready, m: Model) -> str:
    return bigger(eligible, reqs, ready, m, unknown_first=True)


def chain_first(eligible: Eligible, reqs: Reqs, ready: Ready, m: Model) -> str:
    def in_chain(h: str) -> bool:
        return any(m.urls[i][3] for _, i in ready[h])

    return min(eligible, key=lambda e: (not in_chain(e[0]), e[1]))[0]


def most_requests(eligible: Eligible, reqs: Reqs, ready: Ready, m: Model) -> str:
    return min(eligible, key=lambda e: (-reqs[e[0]], e[1]))[0]


POLICIES: dict[str, Policy] = {
    f.__name__: f for f in (fifo, oracle, bigger, explore_bigger, chain_first, most_requests)
}


def crawl_store(scenario: str, path: str) -> None:
    """One crawl of bench_crawler's scenario with the crawler's CLI, its store kept at `path`."""
    import bench_crawler as bc

    from libs.testkit.net import free_port, wait_for_port
    from services.websim import SimConfig, WebSim

    spec = bc.SCENARIOS[scenario]
    hosts = spec["hosts"]
    seeds = WebSim(SimConfig(hosts=hosts, seed=1, **spec["knobs"])).seeds(hosts)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    knobs = json.dumps({"hosts": hosts, "seed": 1, **spec["knobs"]})
    server = subprocess.Popen([sys.executable, "-c", bc.WEBSIM, knobs, str(port)], env=env,
                              stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port, timeout=60)
        cmd = [sys.executable, "-m", "services.crawler", "crawl", *seeds, "--scope", "*.sim.test",
               "--resolve", f"*.sim.test=127.0.0.1:{port}", "--store", path, "--max-depth", "8",
               "--min-delay", str(spec["delay"]), "--no-progress", "--retry-base", "0.2", "--retry-cap", "2",
               "--max-pages", "1000000"]  # fmt: skip
        _wall, _rss, rc, _cpu = bc.run_measured(cmd)
        if rc != 0:
            raise SystemExit(f"the crawl failed (exit {rc})")
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    import bench_crawler as bc

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=list(bc.SCENARIOS), default="wide")
    ap.add_argument("--store", default=None, help="a finished crawl's SQLite store (else one is crawled)")
    ap.add_argument("--slots", type=int, nargs="+", default=[64], help="fetch slots (several: each)")
    ap.add_argument("--prep", type=float, default=0.045, help="s a turn holds its slot before the request")
    ap.add_argument("--fetch", type=float, default=0.025, help="s of the request itself")
    ap.add_argument("--record", type=float, default=0.04, help="s from a response to its links known")
    ap.add_argument(
        "--policies", default=",".join(POLICIES), help="comma-separated, of: " + ", ".join(POLICIES)
    )
    args = ap.parse_args()
    delay = bc.SCENARIOS[args.scenario]["delay"]
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or f"{tmp}/crawl.sqlite"
        if args.store is None:
            crawl_store(args.scenario, store)
        web = load(store)
    requested = sum(1 for u in web[0].values() if u[2])
    print(
        f"[{args.scenario}] {len(web[0])} URLs ({requested} requested), {len(web[2])} seeds, delay {delay} s"
    )
    for slots in args.slots:
        model = Model(web, slots, args.prep, args.fetch, args.record, delay)
        capacity = slots / (args.prep + args.fetch)
        for name in args.policies.split(","):
            end, requests = model.run(POLICIES[name])
            line = f"slots {slots:4d} ({capacity:5.0f} turns/s) {name:15s} end {end:5.1f} s"
            print(f"{line} ({requests} requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
