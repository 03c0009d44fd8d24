"""Experiment 1: inference capacity and its knee.

Calibrate the saturated throughput C (tokens/s) with a burst, then offer open-loop Poisson load
in steps from 0.25x to 2x C (half the output tokens interactive, half batch), each step a
fixed window followed by a drain. Per step: tokens/s (the server's counter over the window),
TTFT and time per output token p50/p95 per class, reject and error rates. The knee is the
highest offered load at which the interactive p95 TTFT meets its objective with < 1% of
interactive requests failed or rejected.
"""

from __future__ import annotations

import random
import time
from typing import Any

from loadtests.experiments import report as rp
from loadtests.experiments.scrape import Sampler, prometheus_range
from loadtests.experiments.serving import (
    TTFT_SLO_S,
    calibrate,
    calibrate_mix,
    cross_check,
    mixed_schedule,
    run_step,
    summarize,
)
from loadtests.experiments.target import BOB, KEYS

NAME = "inference-capacity"
TITLE = "Inference capacity: tokens/s and TTFT against offered load, and the knee"
QUESTION = "How much load does the inference server take before interactive p95 TTFT breaks its objective?"
NEEDS = ("inference",)
INTERACTIVE_SHARE = 0.5


def run(ctx: Any) -> rp.Report:
    url = ctx.target.url("inference")
    report = rp.Report(NAME, TITLE, QUESTION)
    smoke = ctx.smoke
    levels = [0.3, 1.0] if smoke else [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
    window = 2.0 if smoke else 10.0
    burst = calibrate(url, BOB, concurrency=8 if smoke else 48, max_tokens=24 if smoke else 96, rounds=1)
    capacity, _ = calibrate_mix(
        url, INTERACTIVE_SHARE, workers=8 if smoke else 48, duration=2.0 if smoke else 10.0
    )
    report.predict(
        "Continuous batching serves up to a fixed token rate C; as the offered load approaches C, "
        "queueing grows (Poisson arrivals) and the interactive p95 TTFT crosses its objective before "
        "throughput saturates; past C, admission control sheds load and tokens/s stays flat.",
        f"C = {capacity:.0f} tokens/s for this mix (closed-loop saturation with the same requests, "
        f"streamed interactive + batch; a burst of long non-streamed requests alone reaches {burst:.0f}). "
        f"Prediction: tokens/s follows the offered load up to C and plateaus within 0.7-1.2x C beyond "
        f"it; the knee (interactive p95 TTFT <= {TTFT_SLO_S * 1000:.0f} ms, < 1% failed) lies between "
        "0.5x and 1.0x C, below saturation, as queueing predicts.",
        capacity_tokens_per_s=round(capacity, 1),
        burst_tokens_per_s=round(burst, 1),
        plateau_range=[0.7 * capacity, 1.2 * capacity],
        knee_range_x=[0.5, 1.0],
    )
    rng = random.Random(ctx.seed)
    with Sampler({"inference": url}, interval=1.0) as sampler:
        start = time.time()
        for i, level in enumerate(levels):
            offered = level * capacity
            calls = mixed_schedule(rng, offered, INTERACTIVE_SHARE, 0.0, window, i)
            step = run_step(url, calls, window, KEYS)
            row: dict[str, Any] = {
                "load_x": level,
                "offered_tok_s": round(offered, 1),
                "tokens_per_s": round(step.tokens_per_s(), 1),
                "inter_tok_s": round(step.tokens_per_s(**{"class": "interactive"}), 1),
                "batch_tok_s": round(step.tokens_per_s(**{"class": "batch"}), 1),
                **summarize(step.outcomes, window),
                "drained": step.drained,
            }
            report.rows.append(row)
            cross_check(report, step.delta, step.outcomes, f"{level}x")
            print(
                f"   {level:>4}x  offered {offered:7.0f} tok/s -> {row['tokens_per_s']:7.0f} tok/s, "
                f"interactive TTFT p95 {row.get('inter_ttft_p95_ms')} ms",
                flush=True,
            )
        end = time.time()
    report.series["sampled"] = {
        "tokens_per_s": sampler.rate("inference", "inference_generated_tokens_total"),
        "waiting": sampler.gauge("inference", "inference_waiting_sequences"),
        "running": sampler.gauge("inference", "inference_running_sequences"),
    }
    if ctx.prometheus:
        prom = prometheus_range(
            ctx.prometheus,
            {
                "tokens_per_s": "sum(rate(inference_generated_tokens_total[15s]))",
                "interactive_ttft_p95_s": "histogram_quantile(0.95, sum by (le) ("
                'rate(inference_time_to_first_token_seconds_bucket{class="interactive"}[15s])))',
            },
            start,
            end,
            step=5.0,
        )
        if prom is not None:
            report.series["prometheus"] = prom
    _conclude(report, capacity, levels)
    _plot(report, ctx.out, capacity, start)
    return report


def knee(rows: list[dict[str, Any]]) -> float | None:
    """Highest load_x whose interactive p95 TTFT meets the objective with < 1% failed (and every
    lower step too: a knee is where the curve leaves the objective for good)."""
    best = None
    for row in rows:
        p95 = row.get("inter_ttft_p95_ms")
        failed = (row.get("inter_reject_rate") or 0) + (row.get("inter_error_rate") or 0)
        if p95 is None or p95 > TTFT_SLO_S * 1000 or failed >= 0.01:
            break
        best = row["load_x"]
    return best


def _conclude(report: rp.Report, capacity: float, levels: list[float]) -> None:
    k = knee(report.rows)
    over = [r["tokens_per_s"] for r in report.rows if r["load_x"] >= 1.0]
    plateau = max(over) if over else max(r["tokens_per_s"] for r in report.rows)
    report.measured["knee_x"] = k
    report.measured["plateau_tok_s"] = plateau
    in_range = 0.7 * capacity <= plateau <= 1.2 * capacity
    knee_ok = k is not None and 0.5 <= k <= 1.0
    lag = max((r.get("client_lag_p95_ms") or 0) for r in report.rows)
    if lag > 50:
        report.notes.append(
            f"the load generator fell behind its schedule (p95 lag up to {lag:.0f} ms): "
            "the offered load at the top steps is lower than planned"
        )
    knee_text = f"{k}x C ({k * capacity:.0f} tokens/s offered)" if k is not None else "below the first step"
    report.conclude(
        in_range and knee_ok,
        f"Knee at {knee_text}; throughput peaked at {plateau:.0f} tokens/s = {plateau / capacity:.2f}x the "
        f"calibrated C ({capacity:.0f}). Plateau {'inside' if in_range else 'outside'} the predicted "
        f"0.7-1.2x C; knee {'inside' if knee_ok else 'outside'} the predicted 0.5-1.0x C.",
        "Run a serving pool below its knee, not at its throughput peak: past the knee the extra offered load "
        "buys no tokens/s, only queueing (TTFT) and shed requests; the priority class decides who pays.",
    )


def _plot(report: rp.Report, out: Any, capacity: float, t0: float) -> None:
    rows = report.rows
    x = [r["offered_tok_s"] for r in rows]
    fig, axes = rp.figure(1, 3, size=(15, 4.5))
    ax = axes[0][0]
    ax.plot(x, [r["tokens_per_s"] for r in rows], "o-", label="tokens/s (server)")
    ax.plot(x, x, ":", color="grey", label="offered")
    ax.axhline(capacity, color="red", linestyle="--", label=f"calibrated C = {capacity:.0f}")
    ax.set_xlabel("offered output tokens/s")
    ax.set_ylabel("generated tokens/s")
    ax.legend()
    ax = axes[0][1]
    for klass, style in (("inter", "o-"), ("batch", "s-")):
        for q, alpha in (("p50", 0.5), ("p95", 1.0)):
            ys = [r.get(f"{klass}_ttft_{q}_ms") for r in rows]
            ax.plot(
                x,
                [y if y is not None else float("nan") for y in ys],
                style,
                alpha=alpha,
                label=f"{klass} TTFT {q}",
            )
    ax.axhline(TTFT_SLO_S * 1000, color="red", linestyle="--", label="interactive objective")
    k = knee(rows)
    if k is not None:
        ax.axvline(k * capacity, color="green", linestyle=":", label=f"knee {k}x")
    ax.set_yscale("log")
    ax.set_xlabel("offered output tokens/s")
    ax.set_ylabel("TTFT (ms)")
    ax.legend(fontsize=7)
    ax = axes[0][2]
    for klass in ("inter", "batch"):
        ax.plot(x, [r.get(f"{klass}_reject_rate", 0) for r in rows], "o-", label=f"{klass} rejected")
        ax.plot(x, [r.get(f"{klass}_error_rate", 0) for r in rows], "x:", label=f"{klass} errors")
    ax.set_xlabel("offered output tokens/s")
    ax.set_ylabel("share of requests")
    ax.legend(fontsize=7)
    rp.save(fig, report, out, "capacity.png")
    sampled = report.series.get("sampled", {})
    if sampled.get("tokens_per_s"):
        fig, axes = rp.figure(2, 1, size=(10, 5))
        ts = sampled["tokens_per_s"]
        axes[0][0].plot([t - t0 for t, _ in ts], [v for _, v in ts], label="tokens/s (/metrics, 1 s)")
        prom = report.series.get("prometheus", {}).get("tokens_per_s")
        if prom:
            axes[0][0].plot(
                [t - t0 for t, _ in prom], [v for _, v in prom], "o--", label="Prometheus rate[15s]"
            )
        axes[0][0].set_ylabel("tokens/s")
        axes[0][0].legend(fontsize=8)
        for key in ("waiting", "running"):
            series = sampled.get(key, [])
            axes[1][0].plot([t - t0 for t, _ in series], [v for _, v in series], label=key)
        axes[1][0].set_ylabel("sequences")
        axes[1][0].set_xlabel("seconds into the run")
        axes[1][0].legend(fontsize=8)
        rp.save(fig, report, out, "timeline.png")
