"""Where the engine's time goes at saturation: the served model (pg-small unless --model) in an
in-process engine, the serving benchmark's request mix (bench_inference.limit_mix) all submitted
at once, under py-spy.

    .venv/bin/py-spy record --format raw -r 200 -o /tmp/prof.txt -- \
        .venv/bin/python benchmarks/bench_inference_profile.py --requests 300
    .venv/bin/python benchmarks/bench_inference_profile.py --summarize /tmp/prof.txt

The run prints generated tokens/s; --summarize reads py-spy's collapsed stacks and prints the
share of samples per category (each sample counted once, in the first category whose pattern
its stack matches, innermost frames first).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (category, substrings of a frame): a sample goes to the first category matching its innermost
# frame in our code or torch.nn.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("KV gather (index_select of the groups' slots)", ("_gather_kv",)),
    ("KV write (index_copy_ of the new tokens)", ("_write_kv",)),
    ("attention math (baddbmm, softmax, bmm, scatter)", ("paged_attention", "attention.py")),
    ("linear layers", ("linear.py", "Linear.", "Conv1D")),
    (
        "norms, rope, activations, embedding",
        (
            "RMSNorm",
            "_rope",
            "_rotate_half",
            "MLP",
            "finish",
            "qkv (",
            "_embed",
            "_head",
            "functional.py",
            "sparse.py",
        ),
    ),
    (
        "step tensors (runner.build, attention groups)",
        ("build (", "_group (", "_decode_groups", "plan_groups"),
    ),
    ("sampling", ("sampling.py",)),
    ("scheduler", ("scheduler.py", "fairness.py", "kv_cache.py")),
    ("model step, other", ("forward_step", "runner.py")),
    ("engine loop, events, idle", ("engine.py", "threading.py")),
]


def summarize(path: Path) -> None:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        if not any("engine.py" in f or "runner.py" in f for f in frames):
            continue  # other threads (the driver waiting)
        total += int(count)
        for frame in reversed(frames):
            if "(services/" not in frame and "torch/nn" not in frame and "threading.py" not in frame:
                continue
            cat = next((c for c, pats in CATEGORIES if any(p in frame for p in pats)), None)
            if cat:
                counts[cat] += int(count)
                break
        else:
            counts["other"] += int(count)
    print(f"{total} engine-thread samples")
    for cat, n in counts.most_common():
        print(f"  {n / total:6.1%}  {cat}")


def run(args: argparse.Namespace) -> None:
    import torch

    from benchmarks.bench_inference import limit_mix, load_model
    from services.inference.engine import Engine
    from services.inference.model.kv_cache import KVCache
    from services.inference.scheduler import SchedulerConfig
    from services.inference.sequence import Sequence

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    c = model.cfg
    cache = KVCache(n_layers=c.n_layers, n_heads=c.n_kv_heads, head_dim=c.head_dim, num_tokens=32768)
    engine = Engine(
        model, cache, SchedulerConfig(max_seqs=args.max_seqs, max_step_tokens=512, prefill_chunk=256)
    )
    engine.start()
    reqs = limit_mix(args.requests, 0.1, args.seed)
    seqs = [
        Sequence(
            str(i), r.tenant, tok.encode(r.prompt), max_tokens=r.max_tokens, klass=r.klass, stop_at_eos=False
        )
        for i, r in enumerate(reqs)
    ]
    try:
        began = time.perf_counter()
        engine.run_to_completion(seqs, timeout=900)
        dt = time.perf_counter() - began
    finally:
        engine.stop()
    print(
        f"{len(seqs)} requests, {sum(len(s.output) for s in seqs)} tokens in {dt:.1f} s: "
        f"{sum(len(s.output) for s in seqs) / dt:.0f} tok/s"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--max-seqs", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: pg-small)")
    p.add_argument("--summarize", type=Path, default=None, help="py-spy raw output to summarize")
    args = p.parse_args()
    if args.summarize:
        summarize(args.summarize)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
