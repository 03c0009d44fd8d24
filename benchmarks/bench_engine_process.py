"""The engine in a thread of the server vs in its own process (--engine-process), same run.

For each repeat, for each mode (interleaved, so a busy neighbour hurts both alike): start
`python -m services.inference` with the same flags but --engine-process/--no-engine-process,
then
  1. capacity: completions/s, closed loop, 16 users (the overload drill's calibration);
  2. overload: 3x that, open loop (the drill's own generator, loadtests/drills/actions.py:
     half interactive streams, half batch, two tenants), while the drill's latency probe
     (loadtests/drills/latency_probe.py, its own process, 20 requests/s) times the head of
     each answer: the p50/p99 of the rejected ones (429/503, decided by admission without the
     engine) is what the drill judges (p99 < 50 ms);
  3. saturation: tokens/s (the server's inference_generated_tokens_total) with 96 closed-loop
     batch users, 64 tokens each.

    .venv/bin/python benchmarks/bench_engine_process.py                 # 3 repeats, ~6 minutes
    .venv/bin/python benchmarks/bench_engine_process.py --repeats 1 --overload-s 10   # smoke

Writes reports/bench_engine_process.json; prints the medians and spreads (min-max).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from libs.testkit.net import free_port  # noqa: E402
from loadtests.drills.actions import _calibrate, _overload  # noqa: E402  (the drill's own load)

_GEN = re.compile(r"^inference_generated_tokens_total\{[^}]*\} ([0-9.e+]+)$", re.M)


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def start_server(mode: str, torch_threads: int, nice: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
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
        str(torch_threads),
        "--log-level",
        "WARNING",
        "--no-engine-process" if mode == "thread" else "--engine-process",
    ]
    if mode == "process-nice":
        cmd += ["--engine-nice", str(nice)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


def generated(base: str) -> float:
    return sum(float(v) for v in _GEN.findall(httpx.get(f"{base}/metrics", timeout=10).text))


def wait_idle(base: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = httpx.get(
            f"{base}/v1/admin/state", headers={"Authorization": "Bearer dev-admin-key"}, timeout=10
        ).json()
        eng = st.get("engine", {})
        if eng.get("running", 1) == 0 and eng.get("waiting", 1) == 0:
            return
        time.sleep(0.2)


async def saturate(base: str, seconds: float, users: int, max_tokens: int) -> float:
    """Tokens/s the server generates with `users` closed-loop batch requests always open."""
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(120.0), limits=limits) as http:

        async def user(i: int) -> None:
            key = ("dev-alice-key", "dev-bob-key")[i % 2]
            body = {"prompt": f"user {i} asks", "max_tokens": max_tokens, "ignore_eos": True}
            body["priority"] = "batch"
            headers = {"Authorization": f"Bearer {key}"}
            while time.monotonic() < stop:
                try:
                    r = await http.post("/v1/completions", json=body, headers=headers)
                except httpx.HTTPError:  # a keep-alive connection the server closed as we reused it
                    continue
                if r.status_code != 200:
                    await asyncio.sleep(0.05)

        warm = asyncio.gather(*(user(i) for i in range(users)))
        await asyncio.sleep(min(3.0, seconds / 4))  # the batch fills up
        g0, t0 = generated(base), time.monotonic()
        await warm
        g1, t1 = generated(base), time.monotonic()
    return (g1 - g0) / (t1 - t0)


def one_run(mode: str, args: argparse.Namespace) -> dict:
    proc, base = start_server(mode, args.torch_threads, args.engine_nice)
    try:
        capacity = asyncio.run(_calibrate(base, args.calibrate_s, 16, 64))
        wait_idle(base)
        probe_cmd = ["-m", "loadtests.drills.latency_probe", base, f"{args.overload_s}", f"{args.probe_rate}"]
        probe = subprocess.Popen(
            [sys.executable, *probe_cmd],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        out = asyncio.run(_overload(base, 3 * capacity, args.overload_s, 64, proc.pid))
        heads = json.loads(probe.communicate(timeout=120)[0] or "{}").get("heads", [])
        rejected = [took for status, took in heads if status in (429, 503)]
        admitted = [took for status, took in heads if status == 200]
        statuses: dict[str, int] = {}
        for _, status, *_ in out["results"]:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        wait_idle(base)
        tps = asyncio.run(saturate(base, args.saturation_s, 96, 64))
        return {
            "mode": mode,
            "capacity_rps": round(capacity, 2),
            "offered_rps": round(out["n"] / out["offered_s"], 1),
            "loadgen_statuses": statuses,
            "probe_requests": len(heads),
            "probe_rejected": len(rejected),
            "reject_p50_ms": round(1000 * (pct(rejected, 0.5) or 0), 1),
            "reject_p99_ms": round(1000 * (pct(rejected, 0.99) or 0), 1),
            "reject_max_ms": round(1000 * max(rejected, default=0), 1),
            "rejected_over_50ms": sum(1 for x in rejected if x > 0.05),
            "rejected_ms": sorted(round(1000 * x, 1) for x in rejected),
            "admitted_head_p50_ms": round(1000 * (pct(admitted, 0.5) or 0), 1),
            "saturation_tokens_per_s": round(tps, 1),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def paired(args: argparse.Namespace) -> dict:
    """Both servers up at once, driven in turn in short alternating windows (A B B A ...): a
    neighbour's load that comes and goes hits both modes alike, and each pair gives a ratio."""
    servers = {
        mode: start_server(mode, args.torch_threads, args.engine_nice) for mode in ("thread", "process")
    }
    out: dict[str, list] = {"tokens_per_s": [], "reject_ms": []}
    try:
        base_t = servers["thread"][1]
        rate = 3 * asyncio.run(_calibrate(base_t, args.calibrate_s, 16, 64))
        for i in range(args.pairs):
            order = ("thread", "process") if i % 2 == 0 else ("process", "thread")
            tps: dict[str, float] = {}
            rej: dict[str, list[float]] = {}
            for mode in order:
                base = servers[mode][1]
                wait_idle(base)
                tps[mode] = asyncio.run(saturate(base, args.window_s, 96, 64))
                wait_idle(base)
                probe_cmd = [
                    "-m",
                    "loadtests.drills.latency_probe",
                    base,
                    f"{args.window_s}",
                    f"{args.probe_rate}",
                ]
                probe = subprocess.Popen(
                    [sys.executable, *probe_cmd], cwd=ROOT, stdout=subprocess.PIPE, text=True
                )
                asyncio.run(_overload(base, rate, args.window_s, 64, servers[mode][0].pid))
                heads = json.loads(probe.communicate(timeout=120)[0] or "{}").get("heads", [])
                rej[mode] = [round(1000 * took, 1) for status, took in heads if status in (429, 503)]
            print(
                json.dumps({"pair": i, "tokens_per_s": tps, "rejected": {m: len(v) for m, v in rej.items()}})
            )
            out["tokens_per_s"].append(tps)
            out["reject_ms"].append(rej)
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in servers.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    ratios = [p["process"] / p["thread"] for p in out["tokens_per_s"] if p["thread"] > 0]
    pooled = {m: sorted(x for pair in out["reject_ms"] for x in pair[m]) for m in ("thread", "process")}
    return {
        "offered_rps": round(rate, 1),
        "tokens_per_s_ratio_process_over_thread": {
            "median": round(statistics.median(ratios), 3),
            "min": round(min(ratios), 3),
            "max": round(max(ratios), 3),
        },
        "reject_pooled_ms": {
            m: {
                "n": len(xs),
                "p50": pct(xs, 0.5),
                "p90": pct(xs, 0.9),
                "p99": pct(xs, 0.99),
                "over_50ms": sum(1 for x in xs if x > 50),
            }
            for m, xs in pooled.items()
        },
        **out,
    }


def summary(runs: list[dict], key: str) -> dict:
    xs = [r[key] for r in runs]
    return {"median": round(statistics.median(xs), 1), "min": min(xs), "max": max(xs), "runs": xs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calibrate-s", type=float, default=6.0)
    ap.add_argument("--overload-s", type=float, default=20.0)
    ap.add_argument("--saturation-s", type=float, default=12.0)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--modes", default="thread,process", help="of thread, process, process-nice")
    ap.add_argument("--engine-nice", type=int, default=10, help="--engine-nice for process-nice")
    ap.add_argument("--probe-rate", type=float, default=20.0, help="probe requests/s (the drill: 10)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_engine_process.json")
    ap.add_argument("--pairs", type=int, default=0, help="paired mode: this many alternating window pairs")
    ap.add_argument("--window-s", type=float, default=10.0, help="paired mode: seconds per window")
    args = ap.parse_args()
    if args.pairs:
        report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "paired": paired(args)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        shown = {k: v for k, v in report["paired"].items() if k not in ("reject_ms", "tokens_per_s")}
        print(json.dumps(shown, indent=2))
        return 0
    modes = args.modes.split(",")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for rep in range(args.repeats):
        for mode in modes if rep % 2 == 0 else modes[::-1]:
            r = one_run(mode, args)
            runs[mode].append(r)
            shown = {k: v for k, v in r.items() if k != "rejected_ms"}
            print(json.dumps({"repeat": rep, **shown}), flush=True)
    keys = ("reject_p50_ms", "reject_p99_ms", "reject_max_ms", "saturation_tokens_per_s", "capacity_rps")
    report = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cpus": os.cpu_count(),
        "loadavg_end": os.getloadavg(),
        "summary": {mode: {k: summary(rs, k) for k in keys} for mode, rs in runs.items()},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
