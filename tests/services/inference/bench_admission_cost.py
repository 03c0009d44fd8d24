"""Micro-benchmark: the cost of one admission decision (admit or refuse), in microseconds.

Not a test (pytest collects test_*.py only). Run from a tree's root, to compare two trees:
    .venv/bin/python -m tests.services.inference.bench_admission_cost [--repeats N]

The live set of drill 5's overload, pinned: a full batch of 64 (48 alice, 16 bob, steps left
spread 1-128), each tenant with W requests waiting (W = 8, 64), the view at a 50 ms step.
Measured per call, as the median of `repeats` rounds of 2,000 calls each: a refusal (bob,
at its share: 503 overloaded), the same for alice (weight 3), and an admission (carol, idle,
weight 1: under its share; released at once so the live set stays the same). CPU time per
call (time.process_time), so a loaded box's waits for a core stay out. One JSON line a case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from services.inference.admission import Admission, EngineView, Limits, TenantConfig, Ticket, hash_key
from services.inference.errors import Overloaded
from services.inference.sequence import SeqStatus, Sequence

UNLIMITED = dict(
    requests_per_s=1e12, burst_requests=1e12, tokens_per_s=1e12, burst_tokens=1e12, max_in_flight=10**9
)


def build(waiting: int) -> tuple[Admission, dict[str, TenantConfig]]:
    tenants = {
        t: TenantConfig(t, hash_key(t), weight=w, **UNLIMITED)
        for t, w in (("alice", 3.0), ("bob", 1.0), ("carol", 1.0))
    }  # type: ignore[arg-type]
    view = EngineView(tokens_per_s=3000.0, step_s=0.05, max_seqs=64, running=64, prefill_chunk=256)
    adm = Admission(list(tenants.values()), Limits(), engine_view=lambda: view)
    n = 0
    for tenant, running in (("alice", 48), ("bob", 16)):
        for i in range(running + waiting):
            seq = Sequence(f"{tenant}-{n}", tenant, [1] * 128, max_tokens=128, stop_at_eos=False)
            n += 1
            if i < running:
                seq.status = SeqStatus.RUNNING
                seq.output = [1] * (i * 127 // max(running - 1, 1))
                seq.first_token_at = None
            t = Ticket(adm, tenant, "interactive", 256, None, 128)
            t.bind(seq)
            adm._live[id(t)] = t
    return adm, tenants


def per_call_us(fn, calls: int = 2000) -> float:
    """CPU time of this process per call: on a loaded box, wall time is mostly the wait for a
    core, which the decision's cost does not set."""
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for waiting in (8, 64):
        adm, tenants = build(waiting)

        def refuse(adm: Admission = adm, tenants: dict[str, TenantConfig] = tenants) -> None:
            try:
                adm.admit(tenants["bob"], prompt_tokens=128, max_tokens=128).release()
                raise AssertionError("bob was admitted")
            except Overloaded:
                pass

        def refuse_alice(adm: Admission = adm, tenants: dict[str, TenantConfig] = tenants) -> None:
            try:
                adm.admit(tenants["alice"], prompt_tokens=128, max_tokens=128).release()
                raise AssertionError("alice was admitted")
            except Overloaded:
                pass

        def admit(adm: Admission = adm, tenants: dict[str, TenantConfig] = tenants) -> None:
            adm.admit(tenants["carol"], prompt_tokens=128, max_tokens=128).release()

        cases = (("refusal bob", refuse), ("refusal alice", refuse_alice), ("admitted carol", admit))
        for name, fn in cases:
            rounds = [per_call_us(fn) for _ in range(args.repeats)]
            print(
                json.dumps(
                    {
                        "case": name,
                        "waiting_each": waiting,
                        "live": len(adm._live),
                        "median_us": round(statistics.median(rounds), 1),
                        "min_us": round(min(rounds), 1),
                        "max_us": round(max(rounds), 1),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
