"""Experiment 5: the embedding batcher's max batch delay, swept, against throughput and latency.

The batcher closes a batch when it is full or `max_delay` after its first text arrived. Waiting
longer fills bigger batches (fewer, cheaper-per-text forward passes) and costs the waiting time
in latency. For each delay (0, 2, 5, 10, 20 ms) the experiment starts a side server with
`--embed-max-delay-ms D` and offers open-loop Poisson single-text embedding requests at two
rates: light (half the one-at-a-time capacity 1/s1, s1 measured on the first server) and heavy
(twice it). Per delay and rate: texts/s served (the server's batch-size histogram over the
window), client latency p50/p95, mean batch size.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import httpx

from loadtests.experiments import openloop
from loadtests.experiments import report as rp
from loadtests.experiments.openloop import Call, Outcome, poisson
from loadtests.experiments.queueing import pct
from loadtests.experiments.scrape import Snapshot
from loadtests.experiments.serving import WORDS, run_step
from loadtests.experiments.target import ALICE, KEYS, side_inference

NAME = "embeddings-delay"
TITLE = "Embeddings: max batch delay against throughput and p95 latency"
QUESTION = "What does waiting to fill an embedding batch buy in throughput, and what does it cost in latency?"
NEEDS: tuple[str, ...] = ()  # its own side servers, one per delay


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(12))


def single_latency(url: str, n: int) -> list[float]:
    out = []
    with httpx.Client(timeout=60.0, headers={"Authorization": f"Bearer {ALICE}"}) as client:
        for i in range(n):
            t = time.perf_counter()
            client.post(
                f"{url}/v1/embeddings", json={"input": f"warm up sentence number {i}"}
            ).raise_for_status()
            out.append(time.perf_counter() - t)
    return out


def run(ctx: Any) -> rp.Report:
    report = rp.Report(NAME, TITLE, QUESTION)
    smoke = ctx.smoke
    delays = [0.0, 10.0] if smoke else [0.0, 2.0, 5.0, 10.0, 20.0]
    window = 2.0 if smoke else 6.0
    loads = {"light": 0.5, "heavy": 2.0}
    s1 = 0.0
    for d in delays:
        flags = ["--embed-max-delay-ms", str(d), "--max-seqs", "4"]
        with side_inference(flags, ctx.out / f"side-server-{d:g}ms.log") as url:
            single_latency(url, 3)  # warm up, then a burst of mixed lengths (batch shapes)
            warm = random.Random(0)
            openloop.run(
                url,
                [
                    Call(
                        i * 0.02, "/v1/embeddings", {"input": sentence(warm)[: warm.randint(20, 80)]}, "alice"
                    )
                    for i in range(20 if smoke else 60)
                ],
                KEYS,
            )
            if not s1:
                s1 = statistics.median(single_latency(url, 5 if smoke else 20))
                report.predict(
                    "The batcher trades latency for batch fullness: a text waits up to the delay for "
                    "company. At light load that wait is the whole delay and buys little; under heavy "
                    "load batches fill from the queue anyway, so throughput comes from batching, not "
                    "from the delay.",
                    f"One-text latency s1 = {s1 * 1000:.1f} ms (one at a time, measured), so light = "
                    f"{loads['light'] / s1:.0f} texts/s, heavy = {loads['heavy'] / s1:.0f} texts/s. "
                    "Prediction: at light load p50 latency rises with the delay by 0.5-1.5x the delay "
                    "(+5 ms) and the mean batch size by about rate x delay; at heavy load texts/s keeps "
                    "up with the offered rate (>= 0.9x) at every delay, because queued texts fill batches "
                    "without waiting.",
                    one_text_latency_ms=round(s1 * 1000, 2),
                    rates_texts_per_s={k: round(v / s1, 1) for k, v in loads.items()},
                )
            for i, (load, factor) in enumerate(loads.items()):
                if smoke and load == "heavy":
                    continue
                rate = factor / s1
                rng = random.Random(ctx.seed * 100 + i)
                calls = [
                    Call(t, "/v1/embeddings", {"input": sentence(rng)}, "alice", load, step=i)
                    for t in poisson(rate, window, rng)
                ]
                step = run_step(url, calls, window, KEYS)
                row = _row(d, load, rate, window, step.outcomes, step.window, step.delta)
                report.rows.append(row)
                _cross_check(report, step.delta, step.outcomes, f"{d:g} ms, {load}")
                print(
                    f"   delay {d:>4g} ms {load:5}: {row['texts_per_s']} texts/s "
                    f"(offered {row['offered_texts_s']}), "
                    f"p95 {row['latency_p95_ms']} ms, mean batch {row['mean_batch']}",
                    flush=True,
                )
    _conclude(report, delays)
    _plot(report, ctx.out)
    return report


def _row(
    d: float, load: str, rate: float, window: float, outcomes: list[Outcome], w: Snapshot, delta: Snapshot
) -> dict[str, Any]:
    ok = [o.latency for o in outcomes if o.ok]
    batches = delta.value("inference_embedding_batch_size_count")
    texts = delta.value("inference_embedding_batch_size_sum")
    return {
        "delay_ms": d,
        "load": load,
        "offered_texts_s": round(rate, 1),
        "texts_per_s": round(w.value("inference_embedding_batch_size_sum") / w.at, 1) if w.at else None,
        "latency_p50_ms": _ms(pct(ok, 0.5)),
        "latency_p95_ms": _ms(pct(ok, 0.95)),
        "mean_batch": round(texts / batches, 2) if batches else None,
        "errors": sum(not o.ok for o in outcomes),
    }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000.0, 2)


def _cross_check(report: rp.Report, delta: Snapshot, outcomes: list[Outcome], label: str) -> None:
    report.check(
        f"embeddings answered 200 ({label})",
        sum(o.status == 200 for o in outcomes),
        delta.value("http_requests_total", route="/v1/embeddings", status="200"),
    )
    report.check(
        f"embedding tokens ({label})",
        sum(o.prompt_tokens for o in outcomes),
        delta.value("inference_embedding_tokens_total", tenant="alice"),
    )
    report.check(
        f"texts embedded ({label})",
        sum(o.ok for o in outcomes),
        delta.value("inference_embedding_batch_size_sum"),
    )


def _conclude(report: rp.Report, delays: list[float]) -> None:
    light = {r["delay_ms"]: r for r in report.rows if r["load"] == "light"}
    heavy = [r for r in report.rows if r["load"] == "heavy"]
    lo, hi = light[delays[0]], light[delays[-1]]
    rise = (hi["latency_p50_ms"] or 0) - (lo["latency_p50_ms"] or 0)
    d = delays[-1] - delays[0]
    rise_ok = 0.5 * d <= rise <= 1.5 * d + 5
    batch_ok = (hi["mean_batch"] or 0) >= (lo["mean_batch"] or 0)
    keep_up = [
        r["delay_ms"] for r in heavy if r["texts_per_s"] and r["texts_per_s"] >= 0.9 * r["offered_texts_s"]
    ]
    heavy_ok = len(keep_up) == len(heavy)
    report.measured.update(light_p50_rise_ms=round(rise, 2), heavy_keeps_up_at_delays=keep_up)
    heavy_text = (
        f" At heavy load it kept up (>= 0.9x offered) at {len(keep_up)} of {len(heavy)} delays; best p95 "
        f"{min(r['latency_p95_ms'] or float('inf') for r in heavy)} ms."
        if heavy
        else ""
    )
    report.conclude(
        rise_ok and batch_ok and heavy_ok,
        f"At light load, going from {delays[0]:g} to {delays[-1]:g} ms raised p50 latency by {rise:.1f} ms "
        f"(predicted {0.5 * d:g}-{1.5 * d + 5:g}) and the mean batch from {lo['mean_batch']} to "
        f"{hi['mean_batch']}." + heavy_text,
        "A max batch delay is a latency tax paid in full at light load; its payoff is fuller batches, which "
        "matter only when the load is high enough to need them, when the queue fills batches anyway. Keep "
        "the delay small for interactive traffic and larger only for throughput-bound batch classes.",
    )


def _plot(report: rp.Report, out: Any) -> None:
    fig, axes = rp.figure(1, 2, size=(13, 4.8))
    for load, marker in (("light", "o-"), ("heavy", "s-")):
        rows = [r for r in report.rows if r["load"] == load]
        if not rows:
            continue
        x = [r["delay_ms"] for r in rows]
        axes[0][0].plot(x, [r["latency_p95_ms"] for r in rows], marker, label=f"{load}: p95")
        axes[0][0].plot(
            x, [r["latency_p50_ms"] for r in rows], marker.replace("-", ":"), label=f"{load}: p50"
        )
        axes[0][1].plot(
            [r["latency_p95_ms"] for r in rows],
            [r["texts_per_s"] for r in rows],
            marker,
            label=f"{load} load",
        )
        for r in rows:
            axes[0][1].annotate(f"{r['delay_ms']:g} ms", (r["latency_p95_ms"], r["texts_per_s"]), fontsize=7)
    axes[0][0].set_xlabel("max batch delay (ms)")
    axes[0][0].set_ylabel("client latency (ms)")
    axes[0][0].legend(fontsize=8)
    axes[0][1].set_xlabel("p95 latency (ms)")
    axes[0][1].set_ylabel("texts/s served")
    axes[0][1].legend(fontsize=8)
    rp.save(fig, report, out, "embeddings_delay.png")
