"""Experiment 7: dedup worker throughput against the number of consumers in a Redis consumer group.

Needs Redis (`make run`). The experiment leaves the stack's own stream (pg:pages) and
its index alone: for each consumer count k it starts k side dedup workers (`python -m
services.dedup worker --redis URL --stream S --group G`) on a private stream of the stack's
Redis, XADDs a burst of N page events (docs/formats/page-event.schema.json; a third near
duplicates, a third exact, a third unrelated) as fast as a pipeline sends them, and samples
the group's backlog (XINFO GROUPS lag + pending) until it is empty. Events/s = N / time to
drain. Then it stops the workers and deletes the stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import redis

from deploy.topology import ROOT
from loadtests.experiments import report as rp
from loadtests.experiments.scrape import Snapshot
from loadtests.experiments.serving import WORDS
from loadtests.experiments.target import StackDown, free_port

NAME = "dedup-consumers"
TITLE = "Dedup worker: page events/s against consumers in the Redis consumer group"
QUESTION = (
    "How does the dedup worker's throughput scale with consumers, and how fast does a burst's lag drain?"
)
NEEDS: tuple[str, ...] = ()  # the stack's Redis (`make run`), else a redis-server of its own
GROUP = "experiment"


def events(n: int, rng: random.Random) -> list[dict[str, Any]]:
    base = [" ".join(rng.choices(WORDS, k=300)) for _ in range(20)]
    out = []
    for i in range(n):
        kind = i % 3
        words = rng.choice(base).split()
        if kind == 0:  # near duplicate: a few words changed
            for j in rng.sample(range(len(words)), k=6):
                words[j] = rng.choice(WORDS)
        elif kind == 2:  # unrelated
            words = rng.choices(WORDS, k=300)
        text = " ".join(words)
        url = f"http://h{rng.randrange(200):04d}.sim.test/e/{i}"
        out.append(
            {
                "crawl_id": "experiment",
                "url": url,
                "final_url": url,
                "status": 200,
                "content_type": "text/html",
                "content_sha256": hashlib.sha256(text.encode()).hexdigest(),
                "text": text,
                "links": [],
                "canonical": None,
                "fetched_at": time.time(),
                "warc_file": None,
            }
        )
    return out


class Workers:
    """k side dedup workers in one consumer group on a private stream; stopped on exit."""

    def __init__(self, k: int, redis_url: str, stream: str, log_dir: Any) -> None:
        self.k, self.redis_url, self.stream, self.log_dir = k, redis_url, stream, log_dir
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []

    def __enter__(self) -> Workers:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for i in range(self.k):
                port = free_port()
                argv = [sys.executable, "-m", "services.dedup", "worker", "--host", "127.0.0.1"]
                argv += ["--port", str(port), "--redis", self.redis_url, "--stream", self.stream]
                argv += ["--group", GROUP, "--consumer", f"c{i}", "--log-level", "WARNING"]
                with (self.log_dir / f"dedup-{self.k}-{i}.log").open("ab") as log:
                    self.procs.append(
                        subprocess.Popen(
                            argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                        )
                    )
                self.urls.append(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + 120
            for url, proc in zip(self.urls, self.procs, strict=True):
                while not self._connected(url):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise StackDown(f"side dedup worker at {url} did not connect to {self.redis_url}")
                    time.sleep(0.25)
        except BaseException:
            self.__exit__()
            raise
        return self

    @staticmethod
    def _connected(url: str) -> bool:
        try:
            return Snapshot.take(url, timeout=2).value("dedup_stream_connected") == 1
        except (httpx.HTTPError, ValueError):
            return False

    def counted(self, name: str) -> float:
        return sum(Snapshot.take(url).value(name) for url in self.urls)

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def backlog(client: redis.Redis, stream: str) -> int:
    for group in client.xinfo_groups(stream):
        name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
        if name == GROUP:
            return int(group.get("lag") or 0) + int(group.get("pending") or 0)
    return 0


@contextlib.contextmanager
def redis_for(ctx: Any) -> Iterator[str]:
    """The stack's Redis when it answers; else a redis-server of our own on a free port (a stack
    started with `make run REDIS=` has no Redis), stopped afterwards."""
    url = ctx.target.url("redis")
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
        yield url
        return
    except redis.RedisError:
        pass
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackDown(f"no Redis at {url} and no redis-server to start (`make setup` installs it)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pg-experiment-redis-") as tmp:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        proc = subprocess.Popen([*argv, "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            own = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 20
            while True:
                try:
                    redis.Redis.from_url(own, socket_timeout=1).ping()
                    break
                except redis.RedisError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise StackDown(f"redis-server on port {port} did not start") from None
                    time.sleep(0.1)
            yield own
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def run(ctx: Any) -> rp.Report:
    with redis_for(ctx) as redis_url:
        return _run(ctx, redis_url)


def _run(ctx: Any, redis_url: str) -> rp.Report:
    report = rp.Report(NAME, TITLE, QUESTION)
    smoke = ctx.smoke
    client = redis.Redis.from_url(redis_url)
    if redis_url != ctx.target.url("redis"):
        report.notes.append(f"no Redis in the stack: the experiment ran its own redis-server ({redis_url})")
    levels = [1, 2] if smoke else [1, 2, 3, 4]
    n = 150 if smoke else 5000
    cores = os.cpu_count() or 1
    rng = random.Random(ctx.seed)
    burst = [json.dumps(e) for e in events(n, rng)]
    report.predict(
        "Consumers in one group split a stream's entries, so throughput adds up per consumer until "
        "the CPU is the limit: each event costs CPU (JSON, normalisation, fingerprints), and this "
        f"machine has {cores} cores shared with other work.",
        f"Burst of {n} events per level. Prediction: events/s with k consumers is at most min(k, {cores}) "
        f"times one consumer's (the CPU bound); 2 consumers give 1.2-2.0x of one; beyond {cores} consumers "
        "no further gain (within 20%). The burst's lag falls roughly linearly to 0 (a constant drain rate).",
        cores=cores,
        burst_events=n,
    )
    series: dict[str, list[tuple[float, int]]] = {}
    run_id = uuid.uuid4().hex[:8]
    for k in levels:
        stream = f"pg:experiment:{run_id}:{k}"
        try:
            with Workers(k, redis_url, stream, ctx.out) as workers:
                seen_before = workers.counted("dedup_pages_seen_total")
                cost_before = workers.counted("dedup_page_process_seconds_sum")
                acked_before = workers.counted("dedup_stream_acked_total")
                t0 = time.perf_counter()
                pipe = client.pipeline(transaction=False)
                for e in burst:
                    pipe.xadd(stream, {"event": e})
                added = sum(1 for r in pipe.execute() if r)
                sent_s = time.perf_counter() - t0
                trace = []
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    left = backlog(client, stream)
                    trace.append((round(time.perf_counter() - t0, 3), left))
                    if left == 0:
                        break
                    time.sleep(0.1)
                drain_s = time.perf_counter() - t0
                # A worker counts an entry just after XACK: give the last counts a moment to land.
                settle = time.monotonic() + 10
                while True:
                    acked = workers.counted("dedup_stream_acked_total") - acked_before
                    if acked >= added or time.monotonic() > settle:
                        break
                    time.sleep(0.1)
                seen = workers.counted("dedup_pages_seen_total") - seen_before
                cost = workers.counted("dedup_page_process_seconds_sum") - cost_before
        finally:
            client.delete(stream)
        series[str(k)] = trace
        rate = added / drain_s
        report.rows.append(
            {
                "consumers": k,
                "events": added,
                "xadd_seconds": round(sent_s, 3),
                "drain_seconds": round(drain_s, 3),
                "events_per_s": round(rate, 1),
                "peak_backlog": max(v for _, v in trace),
                # The workers' own time per page (normalise, fingerprint, index), summed over them.
                "ms_per_event": round(cost / added * 1000, 3) if added else None,
            }
        )
        report.check(f"events added vs acknowledged ({k} consumers)", added, acked)
        report.check(f"events added vs pages seen ({k} consumers)", added, seen)
        print(f"   {k} consumers: {rate:.0f} events/s (drained {added} in {drain_s:.1f} s)", flush=True)
    report.series["backlog"] = series
    _conclude(report, cores)
    _plot(report, ctx.out)
    return report


def _conclude(report: rp.Report, cores: int) -> None:
    rows = {r["consumers"]: r for r in report.rows}
    one = rows[1]["events_per_s"]
    speed = {k: round(r["events_per_s"] / one, 2) for k, r in rows.items()}
    bound_ok = all(s <= min(k, cores) * 1.1 for k, s in speed.items())
    two_ok = 2 not in speed or 1.2 <= speed[2] <= 2.0 * 1.1
    beyond = [s for k, s in speed.items() if k > cores]
    flat_ok = all(s <= speed.get(cores, s) * 1.2 for s in beyond)
    report.measured["speedup"] = speed
    cost = {k: r["ms_per_event"] for k, r in rows.items()}
    if cost.get(1) and all(cost.values()) and max(cost.values()) > 1.5 * min(cost.values()):
        report.notes.append(
            "the workers' own time per page (dedup_page_process_seconds, wall time summed over the "
            "workers; with k workers on 2 cores it includes waiting for a core) was not constant: "
            + ", ".join(f"{k} consumers: {c} ms" for k, c in cost.items())
            + ". Each consumer keeps its own index, so with k consumers each index holds 1/k of the "
            "pages; a page's cost grows with the index (its near-duplicate candidates), so splitting "
            "the stream also splits the work, not only spreads it. It also means near duplicates that "
            "land on different consumers are not matched: a consumer group spreads entries, it does "
            "not partition them by content."
        )
    report.conclude(
        bound_ok and two_ok and flat_ok,
        "Speed-up over one consumer: "
        + ", ".join(f"{k}: {s}x" for k, s in speed.items())
        + f" (one consumer: {one:.0f} events/s). "
        + ("Within" if bound_ok else "Not within")
        + f" the min(k, {cores}) CPU bound; "
        + (
            "2 consumers in the predicted 1.2-2.0x."
            if two_ok
            else "2 consumers outside the predicted 1.2-2.0x."
        ),
        "A consumer group scales a stream's processing the way partitions scale a crawl: by adding "
        "workers, until the machine is the bottleneck. Past the core count, more consumers only add "
        "contention; scale out across machines instead.",
    )


def _plot(report: rp.Report, out: Any) -> None:
    fig, axes = rp.figure(1, 2, size=(12, 4.5))
    rows = report.rows
    axes[0][0].plot([r["consumers"] for r in rows], [r["events_per_s"] for r in rows], "o-", label="measured")
    one = rows[0]["events_per_s"]
    cores = report.predicted.get("cores", 1)
    axes[0][0].plot(
        [r["consumers"] for r in rows],
        [one * min(r["consumers"], cores) for r in rows],
        "--",
        color="red",
        label=f"bound: one consumer x min(k, {cores} cores)",
    )
    axes[0][0].set_xlabel("consumers in the group")
    axes[0][0].set_ylabel("page events/s")
    axes[0][0].legend(fontsize=8)
    for k, trace in report.series["backlog"].items():
        axes[0][1].plot([t for t, _ in trace], [v for _, v in trace], label=f"{k} consumers")
    axes[0][1].set_xlabel("seconds after the burst started")
    axes[0][1].set_ylabel("backlog (lag + pending)")
    axes[0][1].legend(fontsize=8)
    rp.save(fig, report, out, "dedup_consumers.png")
