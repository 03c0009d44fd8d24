"""Prefix caching: time to first token and prefill throughput for requests sharing a long system
prompt, with the cache on and off, side by side in one run.

    .venv/bin/python benchmarks/bench_prefix_cache.py                 # about 30 s on 1 CPU thread
    .venv/bin/python benchmarks/bench_prefix_cache.py --quick         # smoke run, seconds
    .venv/bin/python benchmarks/bench_prefix_cache.py --model DIR --device cuda   # a real checkpoint

The engine in-process (no HTTP: the figures are the engine's), the served model (the shipped
pg-small checkpoint unless --model), the server's default scheduler and KV settings (16,384
tokens in blocks of 16, 512 tokens per step, prefill chunks of 256). Every request is the same
--system-tokens system prompt (stdlib documentation text, tokenized by the model's tokenizer)
followed by its own --user-tokens question, and generates --max-tokens tokens greedily.

Two measurements per configuration (cache on / off), each on a fresh engine and cache, so the
first request of each run is a miss for both:
  (a) sequential: --requests requests one after the other; TTFT (arrival -> first token, the
      engine's timestamps) of each request after the first (the first is the cold miss,
      reported apart);
  (b) burst: --requests requests submitted at once; prefill throughput = prompt tokens of all
      of them / time from the first arrival to the last first token, i.e. prompt tokens served
      per second whether computed or found in cache, and the median TTFT in the burst.
One warm-up run per configuration, then --runs timed runs, on and off alternating (round-robin,
so load drift on a shared machine hits both alike). Reported: median and min-max over runs
of each run's median, and the ratio off/on (TTFT) or on/off (throughput). The generated tokens
of every request must be the same with the cache on and off (checked; the run fails if not).
Writes reports/bench_prefix_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pydoc
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.inference.app import make_kv_cache  # noqa: E402
from services.inference.engine import Engine  # noqa: E402
from services.inference.model.hf import load_hf_model  # noqa: E402
from services.inference.model.sampling import SamplingParams  # noqa: E402
from services.inference.model.tokenizer import HFTokenizer  # noqa: E402
from services.inference.scheduler import SchedulerConfig  # noqa: E402
from services.inference.sequence import Sequence  # noqa: E402
from services.inference.settings import InferenceSettings  # noqa: E402

QUESTIONS = [
    "What does sorted() return for a dict?",
    "How do I join two paths?",
    "Is a tuple hashable when it holds a list?",
    "What is the difference between repr and str?",
    "When does a generator raise StopIteration?",
    "How do I read a file line by line?",
    "What does functools.lru_cache store?",
    "Which exception does int('x') raise?",
]


def prompts(tok: HFTokenizer, system_tokens: int, user_tokens: int, n: int) -> list[list[int]]:
    plain = pydoc.plaintext  # type: ignore[attr-defined]  # in pydoc, not in its stubs
    text = "\n".join(pydoc.render_doc(o, renderer=plain) for o in (str, dict, list))
    system = tok.encode(text)[:system_tokens]
    if len(system) < system_tokens:
        raise SystemExit(f"system prompt text gives only {len(system)} tokens")
    out = []
    for i in range(n):
        q = tok.encode(f"\nQuestion {i}: {QUESTIONS[i % len(QUESTIONS)]} Answer:", add_bos=False)
        filler = tok.encode(" Please be brief.", add_bos=False)
        while len(q) < user_tokens:
            q = q + filler
        out.append(system + q[:user_tokens])
    return out


def make_engine(model, settings: InferenceSettings, caching: bool, device: str, dtype: torch.dtype) -> Engine:
    cache = make_kv_cache(model.cfg, settings.model_copy(update={"prefix_caching": caching}), device, dtype)
    sched = SchedulerConfig(
        max_step_tokens=settings.max_step_tokens,
        max_seqs=settings.max_seqs,
        prefill_chunk=settings.prefill_chunk,
    )
    return Engine(model, cache, sched).start()


def submit_all(engine: Engine, batch: list[list[int]], max_tokens: int, tag: str) -> list[Sequence]:
    """Submit at once; wait until all finish."""
    done = threading.Semaphore(0)
    seqs = []
    for i, ids in enumerate(batch):
        seq = Sequence(
            f"{tag}{i}",
            "bench",
            list(ids),
            max_tokens=max_tokens,
            sampling=SamplingParams(),
            stop_at_eos=False,
        )
        seq.on_event = lambda ev: done.release() if ev.kind == "finish" else None
        seqs.append(seq)
    for seq in seqs:
        seq.arrival = time.monotonic()
        engine.submit(seq)
    for _ in seqs:
        if not done.acquire(timeout=600):
            raise TimeoutError("requests did not finish")
    return seqs


def ttft(seq: Sequence) -> float:
    assert seq.first_token_at is not None
    return seq.first_token_at - seq.arrival


def one_run(model, settings, caching: bool, reqs: list[list[int]], max_tokens: int, device, dtype) -> dict:
    # (a) sequential, fresh engine: the first request is the cold miss.
    engine = make_engine(model, settings, caching, device, dtype)
    try:
        seq_runs = [submit_all(engine, [ids], max_tokens, "s")[0] for ids in reqs]
        hits = engine.cache.stats.hit_tokens
    finally:
        engine.stop()
    # (b) burst, fresh engine.
    engine = make_engine(model, settings, caching, device, dtype)
    try:
        t0 = time.monotonic()
        burst = submit_all(engine, reqs, max_tokens, "b")
        span = max(s.first_token_at or t0 for s in burst) - min(s.arrival for s in burst)
        burst_hits = engine.cache.stats.hit_tokens
    finally:
        engine.stop()
    prompt_tokens = sum(len(r) for r in reqs)
    return {
        "cold_ttft_s": ttft(seq_runs[0]),
        "warm_ttft_s": statistics.median(ttft(s) for s in seq_runs[1:]),
        "sequential_hit_tokens": hits,
        "burst_prefill_tokens_per_s": prompt_tokens / span,
        "burst_median_ttft_s": statistics.median(ttft(s) for s in burst),
        "burst_hit_tokens": burst_hits,
        "outputs": [s.output for s in seq_runs] + [s.output for s in burst],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="HF checkpoint dir (default: shipped pg-small)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--system-tokens", type=int, default=512)
    ap.add_argument("--user-tokens", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 2 runs, 6 requests, 256-token system prompt"
    )
    ap.add_argument("--json", type=Path, default=ROOT / "reports" / "bench_prefix_cache.json")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.requests, args.system_tokens = 2, 6, 256
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    from services.inference.app import SHIPPED_DIR

    path = args.model or SHIPPED_DIR
    dtype = getattr(torch, args.dtype)
    model = load_hf_model(path, device=args.device, dtype=dtype)
    tok = HFTokenizer(path)
    settings = InferenceSettings()  # the server's defaults for KV and scheduling
    reqs = prompts(tok, args.system_tokens, args.user_tokens, args.requests)
    load_before = os.getloadavg()
    results: dict[str, list[dict]] = {"off": [], "on": []}
    for run in range(args.runs + 1):  # run 0 is the warm-up
        for name in ("off", "on"):
            r = one_run(model, settings, name == "on", reqs, args.max_tokens, args.device, dtype)
            if run:
                results[name].append(r)
            label = f"run {run}" if run else "warm-up"
            print(
                f"{label} {name:>3}: warm TTFT {r['warm_ttft_s'] * 1000:7.1f} ms, cold "
                f"{r['cold_ttft_s'] * 1000:7.1f} ms, "
                f"burst {r['burst_prefill_tokens_per_s']:9.0f} prompt tok/s",
                flush=True,
            )
    same = all(a["outputs"] == b["outputs"] for a, b in zip(results["off"], results["on"], strict=True))
    if not same:
        raise SystemExit("generations differ with the cache on and off")

    def summary(key: str) -> dict[str, dict[str, float]]:
        out = {}
        for name in ("off", "on"):
            vals = [r[key] for r in results[name]]
            out[name] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        return out

    rows = []
    for key, label, scale, unit, higher_better in (
        ("warm_ttft_s", "TTFT, sequential, requests 2..N", 1000, "ms", False),
        ("cold_ttft_s", "TTFT, sequential, first request (miss)", 1000, "ms", False),
        ("burst_median_ttft_s", "TTFT, burst of all requests, median", 1000, "ms", False),
        ("burst_prefill_tokens_per_s", "prefill throughput, burst", 1, "prompt tok/s", True),
    ):
        s = summary(key)
        ratios = [
            (on[key] / off[key]) if higher_better else (off[key] / on[key])
            for off, on in zip(results["off"], results["on"], strict=True)
        ]
        rows.append(
            {
                "metric": label,
                "unit": unit,
                "off": {k: v * scale for k, v in s["off"].items()},
                "on": {k: v * scale for k, v in s["on"].items()},
                "gain_median": statistics.median(ratios),
                "gain_min": min(ratios),
                "gain_max": max(ratios),
            }
        )
    hit_rate = results["on"][0]["sequential_hit_tokens"] / sum(len(r) for r in reqs)
    print()
    print("| metric | off: median (min-max) | on: median (min-max) | gain, median (min-max) |")
    print("|---|---:|---:|---:|")
    for row in rows:
        f = (lambda v: f"{v:,.1f}") if row["unit"] == "ms" else (lambda v: f"{v:,.0f}")
        off, on = row["off"], row["on"]
        print(
            f"| {row['metric']} ({row['unit']}) | {f(off['median'])} ({f(off['min'])}-{f(off['max'])}) | "
            f"{f(on['median'])} ({f(on['min'])}-{f(on['max'])}) | "
            f"{row['gain_median']:.2f}x ({row['gain_min']:.2f}-{row['gain_max']:.2f}) |"
        )
    print(f"\nsequential prompt tokens found in cache: {hit_rate:.1%}; generations identical on/off: {same}")
    report = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "model": str(path),
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "system_tokens": args.system_tokens,
        "user_tokens": args.user_tokens,
        "max_tokens": args.max_tokens,
        "requests": args.requests,
        "runs": args.runs,
        "kv_block_size": settings.kv_block_size,
        "rows": rows,
        "sequential_hit_rate": hit_rate,
        "identical_generations": same,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
