"""Inference serving under open-loop load: this scheduler vs batch-size-1 serving vs the raw limit.

    .venv/bin/python benchmarks/bench_inference.py            # default run, about 2.5 minutes
    .venv/bin/python benchmarks/bench_inference.py --quick    # smoke run, under a minute

Three measurements of generated tokens/s in one run, same model (seeded, d_model 128, 4
layers), same device, same torch threads:
  (a) limit: the raw model with no server, static batches of the workload's mean shape (one
      prefill, then decode), best batch size of --limit-batches; median of --repeats runs;
  (b) batch-1: `python -m services.inference --max-seqs 1`, driven by the same load;
  (c) scheduler: `python -m services.inference` with continuous batching, --max-seqs set to the
      best batch size found in (a) (the device's sweet spot; override with --max-seqs).
Load: open-loop Poisson arrivals (seeded schedules, identical for (b) and (c)), two tenants and
two classes: alice sends interactive requests at a steady rate (--interactive-share of the
limit; streamed over SSE, TTFT measured at the client), bob's batch requests (non-streaming;
TTFT from the server's timing) fill the rest of each level, so the sweep is bob flooding
while alice stays put. Prompts of 16-192 bytes, outputs of 16-64 (interactive) or 32-256
(batch) tokens, ignore_eos so output lengths are exact. Offered load (output tokens/s) sweeps
--loads x the limit.

Tokens/s is the server's own counter (inference_generated_tokens_total) over the send window,
so requests still queued at the end do not inflate it. Rejections (429/503) are counted per
class. Writes reports/bench_inference.json and reports/bench_inference.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INTERACTIVE_SLO_TTFT_S = 0.5  # stated SLO for the interactive class on this CPU model


@dataclass(frozen=True)
class Req:
    at: float  # seconds after the start of the window
    tenant: str
    klass: str
    prompt: str
    max_tokens: int


@dataclass
class Result:
    klass: str
    status: int
    ttft: float | None = None
    latency: float | None = None
    tokens: int = 0


@dataclass
class LevelReport:
    name: str
    offered_rps: float
    offered_tokens_per_s: float
    duration_s: float
    tokens_per_s: float
    sent: int
    completed: int
    rejected: int
    reject_rate: float
    by_class: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    server_cores: float = 0.0  # server process CPU seconds / wall seconds during the level
    engine_cores: float = 0.0  # the busiest server thread (the engine), same ratio


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread of `pid` (Linux /proc), to show how much CPU the server got."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[task.name] = (int(fields[11]) + int(fields[12])) / tick
    return out


INTERACTIVE_OUT = (16, 32, 64)
BATCH_OUT = (32, 64, 128, 256)


def workload(rate_interactive: float, rate_batch: float, duration: float, seed: int) -> list[Req]:
    """Two independent Poisson streams over `duration` s, merged: alice's interactive requests
    at a steady rate, bob's batch requests at the rate being swept (the flood)."""
    rng = random.Random(seed)
    out = []
    for tenant, klass, rate, outs in (
        ("alice", "interactive", rate_interactive, INTERACTIVE_OUT),
        ("bob", "batch", rate_batch, BATCH_OUT),
    ):
        t = 0.0
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= duration:
                break
            n = rng.randint(16, 192)
            prompt = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(n))
            out.append(Req(t, tenant, klass, prompt, rng.choice(outs)))
    return sorted(out, key=lambda r: r.at)


def mean_shape(seed: int) -> tuple[int, int]:
    reqs = workload(50.0, 150.0, 10.0, seed)  # the limit's shape: a 1:3 interactive:batch mix
    return (
        round(statistics.mean(len(r.prompt) + 1 for r in reqs)),
        round(statistics.mean(r.max_tokens for r in reqs)),
    )


def load_model(path: Path | None = None):
    """The served model: a checkpoint directory (default: the shipped pg-small) and its tokenizer,
    as `python -m services.inference` loads it at the default flags."""
    from services.inference.app import SHIPPED_DIR
    from services.inference.model.hf import load_hf_model
    from services.inference.model.tokenizer import HFTokenizer

    path = path or SHIPPED_DIR
    return load_hf_model(path), HFTokenizer(path)


# -- (a) the raw model, no server --------------------------------------------------------------
def raw_limit(batch: int, prompt_len: int, out_len: int, threads: int) -> float:
    import torch

    from services.inference.model.kv_cache import KVCache
    from services.inference.model.transformer import ModelConfig
    from services.inference.model.weights import build_model
    from services.inference.runner import ModelRunner
    from services.inference.sequence import Sequence

    torch.set_num_threads(threads)
    cfg = ModelConfig()
    model = build_model(cfg, seed=0)
    cache = KVCache(
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        head_dim=cfg.head_dim,
        num_tokens=batch * (prompt_len + out_len + 16),
    )
    runner = ModelRunner(model, cache)
    seqs = [Sequence(str(i), "t", [256] + [97] * (prompt_len - 1), max_tokens=out_len) for i in range(batch)]
    began = time.perf_counter()
    chunks = [(s, s.pending) for s in seqs]
    while True:
        for s, n in chunks:
            cache.grow(s.block_table, s.num_computed + n)
        sampled = runner.execute(chunks)
        for (s, n), tok in zip(chunks, sampled, strict=True):
            s.num_computed += n
            if tok is not None:
                s.output.append(tok)
        if len(seqs[0].output) >= out_len:
            break
        chunks = [(s, 1) for s in seqs]
    return batch * out_len / (time.perf_counter() - began)


def engine_offline(max_seqs: int, reqs: list[Req], threads: int) -> float:
    """The engine (scheduler + runner) in-process, every request submitted at once, no HTTP:
    separates the cost of scheduling mixed lengths from the cost of the server around it."""
    import torch

    from services.inference.engine import Engine
    from services.inference.model.kv_cache import KVCache
    from services.inference.model.tokenizer import ByteTokenizer
    from services.inference.model.transformer import ModelConfig
    from services.inference.model.weights import build_model
    from services.inference.scheduler import SchedulerConfig
    from services.inference.sequence import Sequence

    torch.set_num_threads(threads)
    cfg = ModelConfig()
    cache = KVCache(n_layers=cfg.n_layers, n_heads=cfg.n_heads, head_dim=cfg.head_dim, num_tokens=32768)
    engine = Engine(build_model(cfg, seed=0), cache, SchedulerConfig(max_seqs=max_seqs, max_step_tokens=512))
    engine.start()
    tok = ByteTokenizer()
    seqs = [
        Sequence(
            str(i), r.tenant, tok.encode(r.prompt), max_tokens=r.max_tokens, klass=r.klass, stop_at_eos=False
        )
        for i, r in enumerate(reqs)
    ]
    try:
        began = time.perf_counter()
        engine.run_to_completion(seqs, timeout=600)
        return sum(len(s.output) for s in seqs) / (time.perf_counter() - began)
    finally:
        engine.stop()


# -- the server under load ---------------------------------------------------------------------
def start_server(port: int, threads: int, max_seqs: int) -> subprocess.Popen:
    big = {
        "requests_per_s": 1e6,
        "burst_requests": 1e6,
        "tokens_per_s": 1e9,
        "burst_tokens": 1e9,
        "max_in_flight": 100_000,
    }
    tenants = {
        "alice": {"key_sha256": "724c3a14d3ea8b29272df65af1388d5d2f8db3bb8838f97832ee174011b5bd02", **big},
        "bob": {"key_sha256": "928d0e301fa5359204a65b60c4bd40dc36db8f25a0246e6d0d452b4d676e420a", **big},
    }
    cmd = [
        sys.executable,
        "-m",
        "services.inference",
        "--port",
        str(port),
        "--grpc-port",
        "-1",
        "--no-embeddings",
        "--torch-threads",
        str(threads),
        "--max-seqs",
        str(max_seqs),
        "--max-step-tokens",
        "512",
        "--kv-cache-tokens",
        "32768",
        "--log-level",
        "WARNING",
        "--max-queue-wait-interactive",
        "2",
        "--max-queue-wait-batch",
        "10",
        "--tenants",
        json.dumps(tenants),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("inference server did not become ready")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


KEYS = {"alice": "dev-alice-key", "bob": "dev-bob-key"}
_COUNTER = re.compile(r"^inference_generated_tokens_total\{[^}]*\} ([0-9.e+]+)$", re.M)


async def generated_tokens(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(f"{url}/metrics") as r:
        text = await r.text()
    return sum(float(v) for v in _COUNTER.findall(text))


async def one(session: aiohttp.ClientSession, url: str, req: Req) -> Result:
    """One request; the client is aiohttp (C parser): on a 2-core box the load generator's own
    CPU competes with the server, so it must be as cheap as possible."""
    body = {"prompt": req.prompt, "max_tokens": req.max_tokens, "ignore_eos": True, "priority": req.klass}
    headers = {"Authorization": f"Bearer {KEYS[req.tenant]}"}
    t0 = time.perf_counter()
    try:
        if req.klass == "interactive":
            ttft, tokens = None, 0
            async with session.post(
                f"{url}/v1/completions", json={**body, "stream": True}, headers=headers
            ) as r:
                if r.status != 200:
                    await r.read()
                    return Result(req.klass, r.status)
                async for line in r.content:
                    if line.startswith(b"data: {") and b'"finish_reason":null' in line:
                        tokens += 1
                        if ttft is None:
                            ttft = time.perf_counter() - t0
            return Result(req.klass, 200, ttft, time.perf_counter() - t0, tokens)
        async with session.post(f"{url}/v1/completions", json=body, headers=headers) as r:
            if r.status != 200:
                await r.read()
                return Result(req.klass, r.status)
            out = await r.json()
        return Result(
            req.klass,
            200,
            (out["timing"]["ttft_ms"] or 0) / 1000,
            time.perf_counter() - t0,
            out["usage"]["completion_tokens"],
        )
    except (TimeoutError, aiohttp.ClientError):
        return Result(req.klass, 599)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def drive(
    url: str, reqs: list[Req], duration: float, name: str, rate: float, drain_s: float
) -> LevelReport:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        start = time.perf_counter()
        # Throughput is read between the end of a ramp-up (the first 30% of the window, while
        # the batch fills) and the end of sending: the steady state, not the fill or the drain.
        ramp = 0.3 * duration

        async def counter_at(t: float) -> tuple[float, float]:
            await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
            return await generated_tokens(client, url), time.perf_counter()

        first = asyncio.create_task(counter_at(ramp))
        tasks = []
        for req in reqs:
            delay = start + req.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(client, url, req)))
        (before, t_before), (after, t_after) = await asyncio.gather(first, counter_at(duration))
        window = t_after - t_before
        done, pending = await asyncio.wait(tasks, timeout=drain_s)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    results = [t.result() for t in done]
    rep = LevelReport(
        name,
        rate,
        sum(r.max_tokens for r in reqs) / duration,
        round(window, 2),
        (after - before) / window,
        len(reqs),
        sum(r.status == 200 for r in results),
        sum(r.status in (429, 503) for r in results),
        0.0,
    )
    rep.reject_rate = rep.rejected / max(1, rep.sent)
    for klass in ("interactive", "batch"):
        ok = [r for r in results if r.klass == klass and r.status == 200]
        ttft = [r.ttft for r in ok if r.ttft is not None]
        lat = [r.latency for r in ok if r.latency is not None]
        sent = sum(1 for q in reqs if q.klass == klass)
        rej = sum(1 for r in results if r.klass == klass and r.status in (429, 503))
        rep.by_class[klass] = {
            "sent": sent,
            "completed": len(ok),
            "rejected": rej,
            "unfinished": sent - len(ok) - rej,
            "ttft_p50": pct(ttft, 0.5),
            "ttft_p95": pct(ttft, 0.95),
            "ttft_p99": pct(ttft, 0.99),
            "latency_p50": pct(lat, 0.5),
            "latency_p95": pct(lat, 0.95),
            "latency_p99": pct(lat, 0.99),
        }
    return rep


def run_levels(name: str, max_seqs: int, rates: list[float], args, port: int) -> list[LevelReport]:
    proc = start_server(port, args.threads, max_seqs)
    url = f"http://127.0.0.1:{port}"
    try:
        # Warm-up: a few requests of each class, not measured.
        asyncio.run(drive(url, workload(3.0, 3.0, 1.0, seed=999), 1.0, "warmup", 6.0, 30))
        out = []
        for i, (rate_i, rate_b) in enumerate(rates):
            rate = rate_i + rate_b
            reqs = workload(rate_i, rate_b, args.duration, seed=args.seed + i)
            cpu0, t0 = thread_cpu(proc.pid), time.perf_counter()
            rep = asyncio.run(drive(url, reqs, args.duration, name, rate, args.drain))
            cpu1, wall = thread_cpu(proc.pid), time.perf_counter() - t0
            deltas = [cpu1[t] - cpu0.get(t, 0.0) for t in cpu1]
            rep.server_cores, rep.engine_cores = sum(deltas) / wall, max(deltas) / wall
            print(
                f"  {name:9s} offered {rate:6.1f} req/s: {rep.tokens_per_s:7.0f} tok/s, "
                f"rejected {rep.reject_rate:5.1%}, interactive p95 TTFT "
                f"{_fmt(rep.by_class['interactive']['ttft_p95'])}; server used {rep.server_cores:.2f} cores "
                f"(engine thread {rep.engine_cores:.2f})",
                flush=True,
            )
            out.append(rep)
        return out
    finally:
        stop_server(proc)


def _fmt(v) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def plot(levels: list[LevelReport], batch1: list[LevelReport], limit: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    x = [r.offered_tokens_per_s for r in levels]
    axes[0].plot(x, [r.tokens_per_s for r in levels], "o-", label="scheduler (c)")
    axes[0].plot(
        [r.offered_tokens_per_s for r in batch1], [r.tokens_per_s for r in batch1], "s--", label="batch-1 (b)"
    )
    axes[0].axhline(limit, color="gray", ls=":", label="raw limit (a)")
    axes[0].set(xlabel="offered load (output tokens/s)", ylabel="generated tokens/s", title="Throughput")
    for klass, style in (("interactive", "o-"), ("batch", "s-")):
        for q, alpha in (("p50", 0.5), ("p95", 1.0)):
            axes[1].plot(
                x,
                [(r.by_class[klass][f"ttft_{q}"] or float("nan")) * 1000 for r in levels],
                style,
                alpha=alpha,
                label=f"{klass} {q}",
            )
    axes[1].axhline(INTERACTIVE_SLO_TTFT_S * 1000, color="red", ls=":", label="interactive SLO")
    axes[1].set(
        xlabel="offered load (output tokens/s)", ylabel="TTFT (ms)", title="Time to first token", yscale="log"
    )
    axes[2].plot(x, [r.reject_rate * 100 for r in levels], "o-", label="scheduler")
    axes[2].plot(
        [r.offered_tokens_per_s for r in batch1],
        [r.reject_rate * 100 for r in batch1],
        "s--",
        label="batch-1",
    )
    axes[2].set(xlabel="offered load (output tokens/s)", ylabel="rejected (%)", title="Rejections (429/503)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds of offered load per level")
    p.add_argument(
        "--loads", default="0.25,0.5,0.75,1.0,1.5", help="offered tokens/s as fractions of the limit"
    )
    p.add_argument("--repeats", type=int, default=3, help="runs of the raw limit per batch size")
    p.add_argument("--limit-batches", default="8,16,32,64", help="batch sizes tried for the raw limit")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every measurement")
    p.add_argument(
        "--drain", type=float, default=20.0, help="seconds to wait for in-flight requests per level"
    )
    p.add_argument("--max-seqs", type=int, default=0, help="scheduler batch cap (0 = the limit's best batch)")
    p.add_argument("--offline-requests", type=int, default=200, help="requests in the (c0) in-process run")
    p.add_argument(
        "--interactive-share", type=float, default=0.1, help="alice's steady load, fraction of limit"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--port", type=int, default=18400)
    p.add_argument("--out", type=Path, default=ROOT / "reports")
    p.add_argument("--quick", action="store_true", help="short smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.loads, args.repeats, args.limit_batches, args.drain = (
            4.0,
            "0.5,1.5",
            1,
            "32",
            10.0,
        )
        args.offline_requests = 60
    loads = [float(x) for x in args.loads.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)

    prompt_len, out_len = mean_shape(args.seed)
    print(
        f"workload mean shape: prompt {prompt_len} tokens, output {out_len} tokens; "
        f"torch threads {args.threads}"
    )
    print("(a) raw model, static batches, no server:", flush=True)
    limit_runs: dict[int, list[float]] = {}
    raw_limit(8, prompt_len, out_len, args.threads)  # warm-up
    for b in [int(x) for x in args.limit_batches.split(",")]:
        limit_runs[b] = [raw_limit(b, prompt_len, out_len, args.threads) for _ in range(args.repeats)]
        runs = limit_runs[b]
        print(
            f"  batch {b:3d}: {statistics.median(runs):7.0f} tok/s (min {min(runs):.0f}, max {max(runs):.0f})"
        )
    best_batch = max(limit_runs, key=lambda b: statistics.median(limit_runs[b]))
    limit = statistics.median(limit_runs[best_batch])
    capacity_rps = limit / out_len
    # Alice steady at --interactive-share of the limit (tokens/s); bob fills the rest of each
    # level's offered load: the sweep is bob flooding while alice stays put.
    mean_i, mean_b = statistics.mean(INTERACTIVE_OUT), statistics.mean(BATCH_OUT)
    rate_i = args.interactive_share * limit / mean_i
    rates = [(rate_i, max(0.0, f - args.interactive_share) * limit / mean_b) for f in loads]
    print(
        f"limit {limit:.0f} tok/s at batch {best_batch} = {capacity_rps:.1f} req/s of the mean shape",
        flush=True,
    )

    max_seqs = args.max_seqs or best_batch
    offline_reqs = workload(25.0, 75.0, args.offline_requests / 80, args.seed)[: args.offline_requests]
    offline = [engine_offline(max_seqs, offline_reqs, args.threads) for _ in range(args.repeats)]
    print(
        f"(c0) engine in-process, no HTTP, {len(offline_reqs)} requests of the mix at once: "
        f"{statistics.median(offline):.0f} tok/s (min {min(offline):.0f}, max {max(offline):.0f})",
        flush=True,
    )
    print(f"(c) this scheduler (continuous batching, max_seqs {max_seqs}):", flush=True)
    levels = run_levels("scheduler", max_seqs, rates, args, args.port)
    print("(b) batch-size-1 serving (max_seqs 1):", flush=True)
    batch1 = run_levels("batch-1", 1, [rates[0], rates[-1]], args, args.port + 1)

    sat = max(levels, key=lambda r: r.tokens_per_s)
    b1 = max(batch1, key=lambda r: r.tokens_per_s)
    print()
    print(
        "| system | offered tok/s (x limit) | req/s | tokens/s | vs limit | vs batch-1 | reject "
        "| inter. TTFT p50/p95/p99 (ms) | inter. latency p95 | batch TTFT p95 | batch latency p95 "
        "| server cores (engine) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    print(
        f"| (a) raw limit, batch {best_batch} | - | - | {limit:.0f} | 1.00 | "
        f"{limit / b1.tokens_per_s:.1f}x | - | - | - | - | - | - |"
    )
    print(
        f"| (c0) engine, no HTTP | - | - | {statistics.median(offline):.0f} | "
        f"{statistics.median(offline) / limit:.2f} | {statistics.median(offline) / b1.tokens_per_s:.1f}x "
        "| - | - | - | - | - | - |"
    )
    for r in [*levels, *batch1]:
        ic, bc = r.by_class["interactive"], r.by_class["batch"]
        ttft = "/".join(_fmt(ic[k]).replace(" ms", "") for k in ("ttft_p50", "ttft_p95", "ttft_p99"))
        print(
            f"| {r.name} | {r.offered_tokens_per_s:.0f} ({r.offered_tokens_per_s / limit:.2f}) | "
            f"{r.offered_rps:.1f} | {r.tokens_per_s:.0f} | {r.tokens_per_s / limit:.2f} | "
            f"{r.tokens_per_s / b1.tokens_per_s:.1f}x | {r.reject_rate:.1%} | {ttft} | "
            f"{_fmt(ic['latency_p95'])} | {_fmt(bc['ttft_p95'])} | {_fmt(bc['latency_p95'])} | "
            f"{r.server_cores:.2f} ({r.engine_cores:.2f}) |"
        )
    ratio_limit = sat.tokens_per_s / limit
    ratio_b1 = sat.tokens_per_s / b1.tokens_per_s
    slo_ok = all((r.by_class["interactive"]["ttft_p95"] or 0) <= INTERACTIVE_SLO_TTFT_S for r in levels)
    print(
        f"\nsaturation: scheduler {sat.tokens_per_s:.0f} tok/s = {ratio_limit:.0%} of the limit, "
        f"{ratio_b1:.1f}x batch-1; interactive p95 TTFT within {INTERACTIVE_SLO_TTFT_S * 1000:.0f} ms "
        f"at every load: {slo_ok}"
    )

    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch_threads": args.threads,
        "mean_shape": {"prompt_tokens": prompt_len, "output_tokens": out_len},
        "limit": {
            "best_batch": best_batch,
            "tokens_per_s": limit,
            "runs": {str(b): v for b, v in limit_runs.items()},
        },
        "engine_offline": {"max_seqs": max_seqs, "requests": len(offline_reqs), "runs": offline},
        "scheduler": [asdict(r) for r in levels],
        "batch1": [asdict(r) for r in batch1],
        "summary": {
            "scheduler_saturation_tokens_per_s": sat.tokens_per_s,
            "fraction_of_limit": ratio_limit,
            "speedup_vs_batch1": ratio_b1,
            "interactive_slo_ttft_s": INTERACTIVE_SLO_TTFT_S,
            "interactive_slo_met_all_loads": slo_ok,
        },
    }
    (args.out / "bench_inference.json").write_text(json.dumps(report, indent=2))
    plot(levels, batch1, limit, args.out / "bench_inference.png")
    print(f"wrote {args.out / 'bench_inference.json'} and {args.out / 'bench_inference.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
