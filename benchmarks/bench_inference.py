"""Inference serving at the limit: the server under open-loop load vs the raw model on the same
request mix vs batch-size-1 serving, side by side in one run.

    .venv/bin/python benchmarks/bench_inference.py            # default run, about 10 minutes
    .venv/bin/python benchmarks/bench_inference.py --quick    # smoke run, about 2 minutes

The served model (the shipped pg-small unless --model), float32 on CPU, --threads torch threads
everywhere. The request mix: two tenants and two classes, prompts of 16-192 characters, outputs
of 16/32/64 tokens (alice, interactive, streamed over SSE, TTFT at the client) or 32/64/128/256
tokens (bob, batch, non-streaming), ignore_eos so output lengths are exact; alice's tokens are
--interactive-share of the total.

  (a) limit: the raw model on --limit-requests requests of that very mix, batched offline by
      length (sorted by output then prompt length, static batches of B: all prompts prefilled
      in one step, then decode steps, a row leaving when its output is complete), no server,
      no scheduler, no admission; generated tokens / wall time; best B of --limit-batches.
  (c0) the engine (scheduler + runner) in-process on the same requests, all submitted at once.
  (c) `python -m services.inference` (continuous batching, --max-seqs = the limit's best B),
      open-loop Poisson arrivals at --loads x the limit (alice steady, bob filling the rest);
  (b) the same server with --max-seqs 1 (batch-1 serving), at the lowest and highest load.
Every measurement is repeated --repeats times after a warm-up, in the same order each repeat:
(a), (c0), the (c) levels, the (b) levels; a repeat's offered loads are fractions of its own
(a), and its ratios use its own (a), batch-1 and peak: on a shared machine the limit moves by
2x over minutes, so only ratios within a repeat are fair. Reported: median and min-max over the
repeats of tokens/s and of the ratios asked of the engine: peak serving tokens/s / limit (aim
>= 0.85), / batch-1 serving (aim >= 5), throughput at 1.5x / peak (aim >= 0.95); plus, per
level, the CPU the server and engine processes and this load generator got (all on the same
cores), and tokens per engine-thread CPU second, which against the raw model's tokens per CPU
second factors the neighbours out.

Overload against the peak, with the drift taken out (--overload-pairs, default 2): after each
repeat's sweep, the server runs windows alternating the repeat's best sweep level (P) and the
highest load (O), P O P O P, and each O is set against the mean of the two P windows beside it.
The plain ratio (the highest load over the best of the sweep's levels) compares windows minutes
apart and takes the best of several noisy windows as the peak, so it reads low when nothing
changed: on this 2-core shared box the limit itself moved 4231-6251 tokens/s between repeats of
one run, and two windows of the same level a minute apart differed by up to 19%.

Tokens/s of a server level is its own counter (inference_generated_tokens_total) between the
end of a ramp-up (30% of the window) and the end of sending, so the fill and the drain are not
counted. The greedy generations of (a) and (c0) must be the same (checked: batching must not
change what the model generates). Writes reports/bench_inference.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import httpx

from libs.service.cli import int_at_least

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
    server_cores: float = 0.0  # server + engine processes' CPU seconds / wall seconds in the level
    engine_cores: float = 0.0  # the busiest thread (the engine's), same ratio
    repeat: int = 0
    # The busiest thread's (the engine's) CPU seconds in the tokens/s window, and tokens per
    # such second: throughput with the CPU the neighbours left the engine factored out.
    engine_cpu_window_s: float = 0.0
    tokens_per_engine_cpu_s: float = 0.0
    client_cores: float = 0.0  # this load generator's CPU seconds / wall seconds in the window
    load: float = 0.0  # offered tokens/s as a fraction of the repeat's own limit
    limit_tokens_per_s: float = 0.0  # that limit
    # The engine's own histograms over the same window (inference_batch_size,
    # inference_step_tokens, inference_step_duration_seconds): mean rows (sequences) per step,
    # tokens computed per step (prefill + decode), steps per second, and the fraction of the
    # window the engine spent in steps (below 1: it idled, nothing runnable).
    mean_rows: float = 0.0
    step_tokens: float = 0.0
    steps_per_s: float = 0.0
    engine_busy: float = 0.0
    rejected_by_reason: dict[str, float] = field(default_factory=dict)  # server's counter, window
    preempted_by_reason: dict[str, float] = field(default_factory=dict)  # the engine's, window
    queue_timeouts: float = 0.0  # admitted, dropped at the class cap (late drops), window
    # /v1/admin/state's wait_estimate at the end of the window (calibration factors by tenant,
    # the admission decisions so far with their mean estimates): why admission shed.
    wait_estimate: dict = field(default_factory=dict)
    server: str = ""  # which server (its extra arguments) the level ran on


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread of `pid` and its child processes (the engine process), from
    Linux /proc, to show how much CPU the server got."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    pids, seen = [pid], set()
    while pids:
        p = pids.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                pids += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out[f"{p}/{task.name}"] = (int(fields[11]) + int(fields[12])) / tick
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


def limit_mix(n: int, interactive_share: float, seed: int) -> list[Req]:
    """n requests of the serving mix: the same generator, alice's share of the tokens as in the
    server levels (tokens per request differ by class, so the request rates are scaled)."""
    mean_i, mean_b = statistics.mean(INTERACTIVE_OUT), statistics.mean(BATCH_OUT)
    rate_i, rate_b = interactive_share / mean_i, (1 - interactive_share) / mean_b
    scale = 100.0 / (rate_i + rate_b)  # 100 requests/s: only the proportions matter here
    return workload(rate_i * scale, rate_b * scale, 2 * n / 100.0, seed)[:n]


def load_model(path: Path | None = None):
    """The served model: a checkpoint directory (default: the shipped pg-small) and its tokenizer,
    as `python -m services.inference` loads it at the default flags."""
    from services.inference.app import SHIPPED_DIR
    from services.inference.model.hf import load_hf_model
    from services.inference.model.tokenizer import HFTokenizer

    path = path or SHIPPED_DIR
    return load_hf_model(path), HFTokenizer(path)


# -- (a) the raw model, no server --------------------------------------------------------------
def raw_limit(
    model, requests: list[tuple[list[int], int]], batch: int
) -> tuple[float, list[list[int]], float]:
    """The raw model on `requests` (prompt ids, output tokens), batched offline by length: sorted
    by (output, prompt) length and cut into static batches of `batch`; each batch prefills all
    its prompts in one step, then decodes, a row leaving when its output is complete. Returns
    generated tokens/s, each request's (greedy) output, and tokens per CPU second."""
    import torch

    from services.inference.model.kv_cache import KVCache
    from services.inference.runner import ModelRunner
    from services.inference.sequence import Sequence

    c = model.cfg
    longest = max(len(p) + n for p, n in requests)
    cache = KVCache(
        n_layers=c.n_layers,
        n_heads=c.n_kv_heads,
        head_dim=c.head_dim,
        num_tokens=batch * (longest + 16),
        device=next(model.parameters()).device,
        dtype=next(model.parameters()).dtype,
    )
    runner = ModelRunner(model, cache)
    order = sorted(range(len(requests)), key=lambda i: (requests[i][1], len(requests[i][0])))
    outputs: list[list[int]] = [[] for _ in requests]
    began, cpu_began = time.perf_counter(), time.thread_time()
    with torch.inference_mode():
        for first in range(0, len(order), batch):
            seqs = []
            for i in order[first : first + batch]:
                seq = Sequence(str(i), "t", requests[i][0], max_tokens=requests[i][1])
                seq.output = outputs[i]
                cache.grow(seq.block_table, seq.num_tokens)
                seqs.append(seq)
            chunks = [(s, s.num_tokens) for s in seqs]
            while chunks:
                sampled = runner.execute(chunks)
                nxt = []
                for (s, n), tok in zip(chunks, sampled, strict=True):
                    s.num_computed += n
                    assert tok is not None
                    s.output.append(tok)
                    if len(s.output) < s.max_tokens:
                        cache.grow(s.block_table, s.num_tokens)
                        nxt.append((s, 1))
                    else:
                        cache.release(s)
                chunks = nxt
    elapsed, cpu_s = time.perf_counter() - began, time.thread_time() - cpu_began
    tokens = sum(len(o) for o in outputs)
    return tokens / elapsed, outputs, tokens / cpu_s


def engine_offline(
    model, requests: list[tuple[list[int], int]], max_seqs: int
) -> tuple[float, list[list[int]]]:
    """The engine (scheduler + runner) in-process, every request submitted at once, no HTTP:
    separates the cost of scheduling from the cost of the server around it."""
    from services.inference.engine import Engine
    from services.inference.model.kv_cache import KVCache
    from services.inference.scheduler import SchedulerConfig
    from services.inference.sequence import Sequence

    c = model.cfg
    cache = KVCache(n_layers=c.n_layers, n_heads=c.n_kv_heads, head_dim=c.head_dim, num_tokens=32768)
    engine = Engine(model, cache, SchedulerConfig(max_seqs=max_seqs, max_step_tokens=512, prefill_chunk=256))
    engine.start()
    seqs = [
        Sequence(str(i), "t", list(p), max_tokens=n, stop_at_eos=False) for i, (p, n) in enumerate(requests)
    ]
    try:
        began = time.perf_counter()
        engine.run_to_completion(seqs, timeout=900)
        elapsed = time.perf_counter() - began
    finally:
        engine.stop()
    return sum(len(s.output) for s in seqs) / elapsed, [s.output for s in seqs]


# -- the server under load ---------------------------------------------------------------------
def start_server(
    port: int,
    threads: int,
    max_seqs: int,
    model: Path | None = None,
    extra: list[str] | None = None,
    root: Path = ROOT,
) -> subprocess.Popen:
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
        *(["--model", str(model)] if model else []),
        *(extra or []),
    ]
    # stderr goes to an unlinked temporary file (the child keeps its own descriptor): silent while
    # the server works, quoted when it does not start
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        deadline = time.monotonic() + 120  # a loaded 2-core box took over 60 s to load torch and the model
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        why = f"exited with {proc.returncode}" if proc.poll() is not None else "was not ready after 120 s"
        proc.kill()
        proc.wait()
        errors.seek(0)
        tail = errors.read().decode(errors="replace").strip().splitlines()[-5:]
    raise RuntimeError(f"inference server on port {port} {why}: " + " | ".join(tail))


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


KEYS = {"alice": "dev-alice-key", "bob": "dev-bob-key"}
ADMIN_KEY = "dev-admin-key"  # the server's default admin key (settings.DEV_ADMIN_SHA256)
_SAMPLE = re.compile(r"^([a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+|NaN|\+Inf)$", re.M)
_SCRAPED = (
    "inference_generated_tokens_total",
    "inference_batch_size_sum",
    "inference_batch_size_count",
    "inference_step_tokens_sum",
    "inference_step_duration_seconds_sum",
    "inference_queue_timeouts_total",
)
_REASON = re.compile(r'reason="([^"]*)"')


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The server's counters this benchmark reads, each summed over its labels; rejections as
    `rejected:<reason>`."""
    async with session.get(f"{url}/metrics") as r:
        text = await r.text()
    out: dict[str, float] = dict.fromkeys(_SCRAPED, 0.0)
    for name, labels, value in _SAMPLE.findall(text):
        if name in out:
            out[name] += float(value)
        elif name in ("inference_rejections_total", "inference_preemptions_total") and (
            why := _REASON.search(labels or "")
        ):
            key = f"{'rejected' if 'reject' in name else 'preempted'}:{why.group(1)}"
            out[key] = out.get(key, 0.0) + float(value)
    return out


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
    url: str,
    reqs: list[Req],
    duration: float,
    name: str,
    rate: float,
    drain_s: float,
    cpu: Callable[[], dict[str, float]] | None = None,
) -> LevelReport:
    """Send `reqs` on their schedule; tokens/s (and, with `cpu`, the server's CPU seconds per
    thread) read at the end of the ramp-up and at the end of sending."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        start = time.perf_counter()
        # Throughput is read between the end of a ramp-up (the first 30% of the window, while
        # the batch fills) and the end of sending: the steady state, not the fill or the drain.
        ramp = 0.3 * duration

        async def counter_at(t: float) -> tuple[dict[str, float], float, dict[str, float]]:
            await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
            cpus = cpu() if cpu else {}
            cpus["client"] = time.process_time()
            return await scrape(client, url), time.perf_counter(), cpus

        first = asyncio.create_task(counter_at(ramp))
        tasks = []
        for req in reqs:
            delay = start + req.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(client, url, req)))
        (m0, t_before, cpu0), (m1, t_after, cpu1) = await asyncio.gather(first, counter_at(duration))
        window = t_after - t_before
        d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1}
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with client.get(f"{url}/v1/admin/state", headers=admin) as r:
            state = await r.json() if r.status == 200 else {}
        before, after = m0["inference_generated_tokens_total"], m1["inference_generated_tokens_total"]
        client_cpu = cpu1.pop("client") - cpu0.pop("client")
        engine_cpu = max((cpu1[k] - cpu0.get(k, 0.0) for k in cpu1), default=0.0)
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
    rep.engine_cpu_window_s = engine_cpu
    rep.client_cores = client_cpu / window
    rep.tokens_per_engine_cpu_s = (after - before) / engine_cpu if engine_cpu > 0 else 0.0
    steps = d["inference_batch_size_count"]
    if steps > 0:
        rep.mean_rows = d["inference_batch_size_sum"] / steps
        rep.step_tokens = d["inference_step_tokens_sum"] / steps
    rep.steps_per_s = steps / window
    rep.engine_busy = d["inference_step_duration_seconds_sum"] / window
    rep.rejected_by_reason, rep.preempted_by_reason = (
        {k.split(":", 1)[1]: v for k, v in sorted(d.items()) if k.startswith(f"{kind}:") and v}
        for kind in ("rejected", "preempted")
    )
    rep.queue_timeouts = d["inference_queue_timeouts_total"]
    rep.wait_estimate = state.get("wait_estimate", {})
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


def measure_level(
    proc: subprocess.Popen, port: int, name: str, rates: tuple[float, float], rep: int, seed: int, args
) -> LevelReport:
    """One level of offered load against a running server."""
    rate_i, rate_b = rates
    url = f"http://127.0.0.1:{port}"
    reqs = workload(rate_i, rate_b, args.duration, seed=seed)
    spy = profile_engine(proc, args, f"{name.replace(':', '-')}-{rate_i + rate_b:.1f}rps-r{rep}")
    cpu0, t0 = thread_cpu(proc.pid), time.perf_counter()
    level = asyncio.run(
        drive(url, reqs, args.duration, name, rate_i + rate_b, args.drain, lambda: thread_cpu(proc.pid))
    )
    cpu1, wall = thread_cpu(proc.pid), time.perf_counter() - t0
    if spy is not None:
        spy.wait()
    deltas = [cpu1[t] - cpu0.get(t, 0.0) for t in cpu1]
    level.server_cores, level.engine_cores = sum(deltas) / wall, max(deltas) / wall
    level.repeat = rep
    print(
        f"  {name:9s} offered {rate_i + rate_b:6.1f} req/s: {level.tokens_per_s:7.0f} tok/s, "
        f"rejected {level.reject_rate:5.1%}, interactive p95 TTFT "
        f"{_fmt(level.by_class['interactive']['ttft_p95'])}; server+engine used "
        f"{level.server_cores:.2f} cores (engine thread {level.engine_cores:.2f}, "
        f"{level.tokens_per_engine_cpu_s:.0f} tokens per engine CPU second); "
        f"{level.mean_rows:.1f} rows/step, {level.step_tokens:.1f} tokens/step, engine busy "
        f"{level.engine_busy:.2f}; shed {_reasons(level.rejected_by_reason)}; preempted "
        f"{_reasons(level.preempted_by_reason)}; late drops {level.queue_timeouts:.0f}; "
        f"factors {_factors(level.wait_estimate)}; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return level


def profile_engine(proc: subprocess.Popen, args, tag: str) -> subprocess.Popen | None:
    """With --profile: py-spy the engine process (the server's spawned child) over the level's
    measured window (after the ramp-up, to the end of sending), collapsed stacks to
    DIR/<tag>.txt; `bench_inference_profile.py --summarize` reads them."""
    if args.profile is None:
        return None
    kids = [
        int(c) for t in Path(f"/proc/{proc.pid}/task").iterdir() for c in (t / "children").read_text().split()
    ]
    engine = next((k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()), None)
    if engine is None:
        raise SystemExit(f"--profile: no engine process under the server (pid {proc.pid})")
    ramp, window = 0.3 * args.duration, 0.7 * args.duration
    spy = Path(sys.executable).parent / "py-spy"
    out = args.profile / f"{tag}.txt"
    cmd = f"sleep {ramp:.2f}; exec {spy} record -p {engine} -d {int(window)} -r 100 --format raw -o {out}"
    return subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def overload_sandwich(
    proc: subprocess.Popen,
    port: int,
    name: str,
    levels: list[list[LevelReport]],
    rates: list[tuple[float, float]],
    rep: int,
    limit_now: float,
    args,
) -> dict:
    """P O P ... P on one server right after its sweep: P the repeat's best level below the
    highest load, O the highest load. Each O against the mean of the P windows either side
    cancels drift that is linear over the minute they span."""
    loads = [lv[rep].load for lv in levels]
    peak_i = max(range(len(levels) - 1), key=lambda i: levels[i][rep].tokens_per_s)
    plan = [peak_i, len(levels) - 1] * args.overload_pairs + [peak_i]
    windows = []
    for j, li in enumerate(plan):
        seed = args.seed + 100 * rep + 50 + j  # fresh arrivals each window
        level = measure_level(
            proc, port, f"{name}:{'P' if li == peak_i else 'O'}", rates[li], rep, seed, args
        )
        level.load, level.limit_tokens_per_s = loads[li], limit_now
        windows.append(level)
    tps = [w.tokens_per_s for w in windows]
    ratios = [tps[j] / ((tps[j - 1] + tps[j + 1]) / 2) for j in range(1, len(plan), 2)]
    print(
        f"  {name}: {loads[-1]}x against {loads[peak_i]}x either side: "
        + ", ".join(f"{r:.3f}" for r in ratios),
        flush=True,
    )
    return {
        "repeat": rep,
        "peak_load": loads[peak_i],
        "overload": loads[-1],
        "ratios": ratios,
        "median": statistics.median(ratios),
        "windows": [asdict(w) for w in windows],
    }


def _factors(wait_estimate: dict) -> str:
    """The wait estimate's calibration factors by class and tenant, and the margin admission adds."""
    return (
        " ".join(
            f"{k}:" + ",".join(f"{t}={f}" for t, f in c.get("factor", {}).items())
            for k, c in wait_estimate.items()
        )
        or "-"
    )


def _reasons(counts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" for k, v in counts.items()) or "nothing"


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt_spread(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _fmt(v) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def plot(levels: list[LevelReport], batch1: list[LevelReport], limit: float, path: Path) -> None:
    """One repeat's levels (the median one per level is passed in)."""
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
    p.add_argument("--duration", type=float, default=15.0, help="seconds of offered load per level")
    p.add_argument("--loads", default="0.5,1.0,1.25,1.5", help="offered tokens/s as fractions of the limit")
    p.add_argument("--repeats", type=int, default=3, help="runs of every measurement")
    p.add_argument(
        "--limit-batches", default="32,64,128", help="batch sizes tried for the raw limit (calibration)"
    )
    p.add_argument("--limit-requests", type=int, default=256, help="requests of the mix in (a) and (c0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every measurement")
    p.add_argument(
        "--drain", type=float, default=15.0, help="seconds to wait for in-flight requests per level"
    )
    p.add_argument("--max-seqs", type=int, default=0, help="scheduler batch cap (0 = the limit's best batch)")
    p.add_argument(
        "--interactive-share", type=float, default=0.1, help="alice's share of the tokens (of the limit)"
    )
    p.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: pg-small)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--port", type=int, default=18400)
    p.add_argument("--out", type=Path, default=ROOT / "reports")
    p.add_argument("--quick", action="store_true", help="short smoke run")
    p.add_argument(
        "--server-args",
        default="",
        help="extra arguments for the scheduler server (c), e.g. '--admission-headroom 0'",
    )
    p.add_argument(
        "--alt-server-args",
        default=None,
        help="a second scheduler server (c') with these extra arguments, measured at every level "
        "side by side with (c) (order alternating by repeat); '' for the defaults",
    )
    p.add_argument(
        "--alt-root",
        type=Path,
        default=None,
        help="run (c') from this checkout (e.g. `git archive <commit> | tar -x -C DIR`): code A/B",
    )
    p.add_argument("--no-batch1", action="store_true", help="skip batch-1 serving (b)")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the engine process over every server window into this directory "
        "(summarise a file with benchmarks/bench_inference_profile.py --summarize)",
    )
    p.add_argument(
        "--overload-pairs",
        type=int_at_least(0),
        default=2,
        help="after each repeat's sweep, windows alternating its best level and the highest load "
        "(P O P ... P, this many O): each O against the mean of the P windows beside it (0: off)",
    )
    args = p.parse_args(argv)
    # SIGTERM: unwind (the finally blocks stop the servers) rather than leave them running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.duration, args.loads, args.repeats, args.limit_batches, args.drain = (
            6.0,
            "1.0,1.5",
            1,
            "64",
            10.0,
        )
        args.limit_requests = 128
        args.overload_pairs = min(args.overload_pairs, 1)
    loads = [float(x) for x in args.loads.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)

    import torch

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    mix = limit_mix(args.limit_requests, args.interactive_share, args.seed)
    requests = [(tok.encode(r.prompt), r.max_tokens) for r in mix]
    print(
        f"mix: {len(requests)} requests, prompts {min(len(q) for q, _ in requests)}-"
        f"{max(len(q) for q, _ in requests)} tokens, outputs {sum(n for _, n in requests)} tokens; "
        f"torch threads {args.threads}; load average {os.getloadavg()[0]:.1f}"
    )
    # Calibration (after a warm-up): the batch size of the limit, and the limit that sets the
    # offered loads. The measured figures are the repeats below.
    raw_limit(model, requests[:32], 32)
    # Best of two runs per batch size: a neighbour's burst during one run must not pick B.
    calib = {
        int(b): max(raw_limit(model, requests, int(b))[0] for _ in range(2))
        for b in args.limit_batches.split(",")
    }
    best_batch = max(calib, key=lambda b: calib[b])
    print(
        "calibration, raw model on the mix: "
        + ", ".join(f"batch {b}: {v:.0f} tok/s" for b, v in calib.items()),
        flush=True,
    )
    max_seqs = args.max_seqs or best_batch
    mean_i, mean_b = statistics.mean(INTERACTIVE_OUT), statistics.mean(BATCH_OUT)

    def level_rates(limit_now: float) -> list[tuple[float, float]]:
        """Alice steady at --interactive-share of the limit (tokens/s); bob fills the rest of each
        level's offered load: the sweep is bob flooding while alice stays put."""
        rate_i = args.interactive_share * limit_now / mean_i
        return [(rate_i, max(0.0, f - args.interactive_share) * limit_now / mean_b) for f in loads]

    b1_loads = [] if args.no_batch1 else [0, len(loads) - 1]  # batch-1 at the lowest and highest load
    variants = [shlex.split(args.server_args)]
    if args.alt_server_args is not None:
        variants.append(shlex.split(args.alt_server_args))
    names = ["scheduler", "sched-alt"][: len(variants)]

    # Every repeat measures everything, in the same order: (a), (c0), (c) levels, (b) levels, so
    # the neighbours' load drifts over all of them alike. Both servers stay up (idle between).
    # Ports: (c) at --port, (b) at --port + 1, (c') at --port + 2.
    ports = [args.port, args.port + 2][: len(variants)]
    servers = [start_server(args.port, args.threads, max_seqs, args.model, variants[0])]
    limit_runs: list[float] = []
    limit_cpu: list[float] = []  # tokens per CPU second of the raw model
    offline: list[float] = []
    by_variant: list[list[list[LevelReport]]] = [[[] for _ in loads] for _ in variants]
    levels = by_variant[0]
    batch1: list[list[LevelReport]] = [[] for _ in b1_loads]
    # Per variant, per repeat: the P O P ... P windows and each O's ratio to its neighbours.
    sandwiches: list[list[dict]] = [[] for _ in variants]
    try:
        for v in range(1, len(variants)):
            root = args.alt_root.resolve() if args.alt_root else ROOT
            servers.append(start_server(ports[v], args.threads, max_seqs, args.model, variants[v], root))
        if b1_loads:
            servers.append(start_server(args.port + 1, args.threads, 1, args.model))
        warm = [*ports, *([args.port + 1] if b1_loads else [])]
        for port in warm:  # warm-up: a few requests of each class
            url = f"http://127.0.0.1:{port}"
            asyncio.run(drive(url, workload(3.0, 3.0, 2.0, seed=999), 2.0, "warmup", 6.0, 30))
        for rep in range(args.repeats):
            print(f"repeat {rep + 1}/{args.repeats}:", flush=True)
            tps_a, outputs, cpu_a = raw_limit(model, requests, best_batch)
            limit_runs.append(tps_a)
            limit_cpu.append(cpu_a)
            tps_c0, outs = engine_offline(model, requests, max_seqs)
            offline.append(tps_c0)
            if outs != outputs:
                raise SystemExit("(c0) engine generations differ from the raw model's batched by length")
            print(
                f"  (a) raw limit {tps_a:.0f} tok/s ({cpu_a:.0f} per CPU second), (c0) engine "
                f"in-process {tps_c0:.0f} tok/s; load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            # This repeat's loads are fractions of this repeat's limit: the neighbours' load moves
            # the limit by 2x over minutes here, and a ratio is only fair within one repeat.
            rates = level_rates(tps_a)
            for i, r in enumerate(rates):
                seed = args.seed + 100 * rep + i
                # Side by side: every variant at this level, the same arrivals, first one
                # alternating by repeat.
                order = list(range(len(variants)))
                if rep % 2:
                    order.reverse()
                for v in order:
                    level = measure_level(servers[v], ports[v], names[v], r, rep, seed, args)
                    level.load, level.limit_tokens_per_s = loads[i], tps_a
                    where = f" [{args.alt_root}]" if v and args.alt_root else ""
                    level.server = " ".join(variants[v]) + where
                    by_variant[v][i].append(level)
            if args.overload_pairs and len(loads) > 1:
                for v in order:
                    sandwiches[v].append(
                        overload_sandwich(
                            servers[v], ports[v], names[v], by_variant[v], rates, rep, tps_a, args
                        )
                    )
            for i, li in enumerate(b1_loads):
                seed = args.seed + 100 * rep + li
                level = measure_level(servers[-1], args.port + 1, "batch-1", rates[li], rep, seed, args)
                level.load, level.limit_tokens_per_s = loads[li], tps_a
                batch1[i].append(level)
    finally:
        for proc in servers:
            stop_server(proc)
    limit = statistics.median(limit_runs)

    def tps(level: list[LevelReport]) -> list[float]:
        return [r.tokens_per_s for r in level]

    # Ratios within each repeat (its own limit, its own batch-1, its own peak), then medians.
    reps = range(args.repeats)
    b1_r = [max(lv[k].tokens_per_s for lv in batch1) for k in reps] if batch1 else []

    def ratios(lvls: list[list[LevelReport]]) -> dict[str, list[float]]:
        peak = [max(lv[k].tokens_per_s for lv in lvls) for k in reps]
        at_peak = [max((lv[k] for lv in lvls), key=lambda r: r.tokens_per_s) for k in reps]
        return {
            "peak": peak,
            "peak_over_limit": [peak[k] / limit_runs[k] for k in reps],
            "peak_over_batch1": [peak[k] / b1_r[k] for k in reps] if b1_r else [],
            "overload_over_peak": [lvls[-1][k].tokens_per_s / peak[k] for k in reps],
            "cpu": [at_peak[k].tokens_per_engine_cpu_s / limit_cpu[k] for k in reps],
        }

    per_variant = [ratios(lv) for lv in by_variant]
    for vr, sw in zip(per_variant, sandwiches, strict=True):
        # One figure per repeat (the median of its O windows), like every other ratio here.
        vr["overload_over_peak_paired"] = [x["median"] for x in sw]
    main_r = per_variant[0]
    peak_r, r_limit, r_b1, r_over, r_cpu = (
        main_r["peak"],
        main_r["peak_over_limit"],
        main_r["peak_over_batch1"],
        main_r["overload_over_peak"],
        main_r["cpu"],
    )

    def maybe(values: list[float], digits: int) -> str:
        return fmt_spread(values, digits) if values else "-"

    print()
    print(
        "| system | load (x limit) | tokens/s median (min-max) | / limit | / batch-1 | reject "
        "| inter. TTFT p50/p95/p99 (ms) | batch TTFT p95 | batch latency p95 | cores: server+engine "
        "(engine thread), client | tokens per engine CPU s | rows/step | tokens/step | engine busy |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| (a) raw limit, batch {best_batch} | - | {fmt_spread(limit_runs)} | 1.00 | "
        f"{maybe([limit_runs[k] / b1_r[k] for k in reps] if b1_r else [], 1)} | - | - | - | - | - | "
        f"{fmt_spread(limit_cpu)} (per CPU s) | - | - | - |"
    )
    print(
        f"| (c0) engine, no HTTP | - | {fmt_spread(offline)} | "
        f"{fmt_spread([offline[k] / limit_runs[k] for k in reps], 2)} |" + " - |" * 10
    )
    tags = {"scheduler": "(c)", "sched-alt": "(c')", "batch-1": "(b)"}
    for runs in [*(lv for variant in by_variant for lv in variant), *batch1]:
        mid = sorted(runs, key=lambda r: r.tokens_per_s)[len(runs) // 2]  # the median repeat
        ic, bc = mid.by_class["interactive"], mid.by_class["batch"]
        ttft = "/".join(_fmt(ic[k]).replace(" ms", "") for k in ("ttft_p50", "ttft_p95", "ttft_p99"))
        label = f"{tags[mid.name]} {mid.name}" + (f" `{mid.server}`" if mid.server else "")
        print(
            f"| {label} | {mid.load:.2f} | "
            f"{fmt_spread(tps(runs))} | "
            f"{fmt_spread([r.tokens_per_s / r.limit_tokens_per_s for r in runs], 2)} | "
            f"{maybe([r.tokens_per_s / b1_r[r.repeat] for r in runs] if b1_r else [], 1)} | "
            f"{statistics.median(r.reject_rate for r in runs):.1%} | {ttft} | "
            f"{_fmt(bc['ttft_p95'])} | {_fmt(bc['latency_p95'])} | "
            f"{statistics.median(r.server_cores for r in runs):.2f} "
            f"({statistics.median(r.engine_cores for r in runs):.2f}), "
            f"{statistics.median(r.client_cores for r in runs):.2f} | "
            f"{fmt_spread([r.tokens_per_engine_cpu_s for r in runs])} | "
            f"{fmt_spread([r.mean_rows for r in runs], 1)} | "
            f"{fmt_spread([r.step_tokens for r in runs], 1)} | "
            f"{fmt_spread([r.engine_busy for r in runs], 2)} |"
        )
    for name, vr, variant in zip(names, per_variant, variants, strict=True):
        print(
            f"\n{tags[name]} {' '.join(variant) or 'defaults'}, per repeat (median, min-max): peak / limit "
            f"{fmt_spread(vr['peak_over_limit'], 2)} (aim >= 0.85); peak / batch-1 "
            f"{maybe(vr['peak_over_batch1'], 1)} (aim >= 5); {loads[-1]}x / peak "
            f"{fmt_spread(vr['overload_over_peak'], 2)} (each: "
            f"{', '.join(f'{x:.2f}' for x in vr['overload_over_peak'])}; aim >= 0.95); {loads[-1]}x / "
            f"peak level side by side (P O P windows) {maybe(vr['overload_over_peak_paired'], 3)} (each: "
            f"{', '.join(f'{x:.3f}' for x in vr['overload_over_peak_paired'])}); engine tokens per "
            f"engine-thread CPU second at the peak / raw model's per CPU second {fmt_spread(vr['cpu'], 2)}"
        )
    print(f"load average {os.getloadavg()}")

    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch_threads": args.threads,
        "model": str(args.model or "pg-small"),
        "mix_requests": len(requests),
        "limit": {
            "best_batch": best_batch,
            "tokens_per_s": limit,
            "runs": limit_runs,
            "tokens_per_cpu_s": limit_cpu,
            "calibration": calib,
        },
        "engine_offline": {"max_seqs": max_seqs, "runs": offline},
        "scheduler": [[asdict(r) for r in level] for level in levels],
        "batch1": [[asdict(r) for r in level] for level in batch1],
        "variants": [
            {
                "server_args": " ".join(variant),
                "levels": [[asdict(r) for r in level] for level in lvls],
                "per_repeat": vr,
                "overload_sandwiches": sw,
            }
            for variant, lvls, vr, sw in zip(variants, by_variant, per_variant, sandwiches, strict=True)
        ],
        "summary": {
            "limit_tokens_per_s": spread(limit_runs),
            "peak_tokens_per_s": spread(peak_r),
            "batch1_tokens_per_s": spread(b1_r) if b1_r else None,
            "peak_over_limit": spread(r_limit),
            "peak_over_batch1": spread(r_b1) if r_b1 else None,
            "overload_over_peak": spread(r_over),
            "overload_over_peak_paired": spread(main_r["overload_over_peak_paired"])
            if main_r["overload_over_peak_paired"]
            else None,
            "peak_tokens_per_engine_cpu_s_over_limit_per_cpu_s": spread(r_cpu),
            "per_repeat": {
                "peak_over_limit": r_limit,
                "peak_over_batch1": r_b1,
                "overload_over_peak": r_over,
            },
        },
    }
    (args.out / "bench_inference.json").write_text(json.dumps(report, indent=2))
    medians = [sorted(level, key=lambda r: r.tokens_per_s)[len(level) // 2] for level in levels]
    b1_medians = [sorted(level, key=lambda r: r.tokens_per_s)[len(level) // 2] for level in batch1]
    plot(medians, b1_medians, limit, args.out / "bench_inference.png")
    print(f"wrote {args.out / 'bench_inference.json'} and {args.out / 'bench_inference.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
