"""Experiment 3: continuous batching against one sequence at a time, same load.

Two side servers, one after the other, differing in one flag: `--max-seqs 1` (every step
computes one sequence) and the default continuous batching. The one-at-a-time capacity C1
(tokens/s) is measured first (requests one after another: mean output tokens / mean service
time); then the same seeded open-loop schedules of interactive requests (streamed, 16-32
tokens) at 0.5x to 6x C1 go to each server. Per level and server: tokens/s over the window
(the server's counter), TTFT p50/p95 at the client, rejections.
"""

from __future__ import annotations

import random
import statistics
from typing import Any

from loadtests.experiments import report as rp
from loadtests.experiments.openloop import poisson
from loadtests.experiments.serving import (
    MEAN_TOKENS,
    completion,
    cross_check,
    run_step,
    service_time,
    summarize,
)
from loadtests.experiments.target import ALICE, KEYS, side_inference

NAME = "batching"
TITLE = "Batching: continuous batching against one sequence at a time"
QUESTION = "What does continuous batching buy over one-at-a-time serving, in tokens/s and TTFT?"
NEEDS: tuple[str, ...] = ()  # its own two side servers
MODES = {"one-at-a-time": ["--max-seqs", "1"], "continuous": []}


def schedule(seed: int, level: int, rate: float, window: float) -> list:
    rng = random.Random(seed * 1000 + level)  # identical schedules for both servers
    return [completion(rng, "interactive", t, level) for t in poisson(rate, window, rng)]


def run(ctx: Any) -> rp.Report:
    report = rp.Report(NAME, TITLE, QUESTION)
    smoke = ctx.smoke
    levels = [1.0, 3.0] if smoke else [0.5, 1.0, 2.0, 4.0, 6.0]
    window = 2.0 if smoke else 8.0
    probe_body = {"prompt": "x" * 40, "max_tokens": 24, "ignore_eos": True}
    results: dict[str, list[dict[str, Any]]] = {}
    c1 = 0.0
    for mode, flags in MODES.items():
        log = ctx.out / f"side-server-{mode}.log"
        with side_inference([*flags, "--no-embeddings", "--torch-threads", "1"], log) as url:
            if mode == "one-at-a-time":
                service_time(url, ALICE, probe_body, 2)
                probe = service_time(url, ALICE, probe_body, 4 if smoke else 20)
                c1 = MEAN_TOKENS["interactive"] / statistics.fmean(probe)
                report.predict(
                    "Decoding one sequence at a time leaves the model's batch dimension idle: each step "
                    "costs about the same for 1 or 32 sequences on this model, so batching multiplies "
                    "throughput until compute saturates, and queueing (TTFT) stays low far longer.",
                    f"One-at-a-time capacity C1 = {c1:.0f} tokens/s (measured). Prediction: one-at-a-time "
                    "plateaus within 0.7-1.3x C1 and its TTFT grows without bound past 1x; continuous "
                    "batching follows the offered load to at least 3x C1, with p95 TTFT below "
                    "one-at-a-time's at every level from 1x.",
                    c1_tokens_per_s=round(c1, 1),
                )
            rows = []
            for i, level in enumerate(levels):
                rate = level * c1 / MEAN_TOKENS["interactive"]
                step = run_step(url, schedule(ctx.seed, i, rate, window), window, KEYS)
                row = {
                    "mode": mode,
                    "load_x": level,
                    "offered_tok_s": round(level * c1, 1),
                    "tokens_per_s": round(step.tokens_per_s(), 1),
                    **summarize(step.outcomes, window),
                }
                rows.append(row)
                cross_check(report, step.delta, step.outcomes, f"{mode} {level}x")
                print(
                    f"   {mode:14} {level}x: {row['tokens_per_s']} tok/s, "
                    f"TTFT p95 {row.get('inter_ttft_p95_ms')} ms",
                    flush=True,
                )
            results[mode] = rows
            report.rows += rows
    _conclude(report, results, c1)
    _plot(report, ctx.out, results, c1)
    return report


def _best(rows: list[dict[str, Any]]) -> float:
    return max(r["tokens_per_s"] for r in rows)


def _conclude(report: rp.Report, results: dict[str, list[dict[str, Any]]], c1: float) -> None:
    one, cont = results["one-at-a-time"], results["continuous"]
    one_peak, cont_peak = _best(one), _best(cont)
    plateau_ok = 0.7 * c1 <= one_peak <= 1.3 * c1
    follows = [r["load_x"] for r in cont if r["tokens_per_s"] >= 0.8 * r["offered_tok_s"]]
    follow_ok = bool(follows) and max(follows) >= min(3.0, max(r["load_x"] for r in cont))
    ttft_ok = all(
        (b.get("inter_ttft_p95_ms") or 0) <= (a.get("inter_ttft_p95_ms") or float("inf"))
        for a, b in zip(one, cont, strict=True)
        if a["load_x"] >= 1.0
    )
    report.measured.update(one_peak=one_peak, continuous_peak=cont_peak)
    report.conclude(
        plateau_ok and follow_ok and ttft_ok,
        f"One at a time peaked at {one_peak:.0f} tokens/s ({one_peak / c1:.2f}x C1); continuous batching at "
        f"{cont_peak:.0f} tokens/s ({cont_peak / max(one_peak, 1e-9):.1f}x one-at-a-time), following the "
        f"offered load (>= 0.8x) up to {max(follows) if follows else 0}x C1. Continuous batching's p95 TTFT "
        f"was {'at or below' if ttft_ok else 'not always below'} one-at-a-time's from 1x C1 on.",
        "The same hardware serves several times the tokens when steps carry many sequences; batching is "
        "the capacity lever of LLM serving, and one-at-a-time serving turns moderate load into long queues.",
    )


def _plot(report: rp.Report, out: Any, results: dict[str, list[dict[str, Any]]], c1: float) -> None:
    fig, axes = rp.figure(1, 2, size=(13, 4.8))
    for mode, rows in results.items():
        x = [r["offered_tok_s"] for r in rows]
        axes[0][0].plot(x, [r["tokens_per_s"] for r in rows], "o-", label=mode)
        axes[0][1].plot(
            x, [r.get("inter_ttft_p95_ms") or float("nan") for r in rows], "o-", label=f"{mode} p95"
        )
        axes[0][1].plot(
            x, [r.get("inter_ttft_p50_ms") or float("nan") for r in rows], "x:", label=f"{mode} p50"
        )
    x_all = [r["offered_tok_s"] for r in results["continuous"]]
    axes[0][0].plot(x_all, x_all, ":", color="grey", label="offered")
    axes[0][0].axhline(c1, color="red", linestyle="--", label=f"C1 = {c1:.0f}")
    axes[0][0].set_xlabel("offered output tokens/s")
    axes[0][0].set_ylabel("generated tokens/s")
    axes[0][0].legend()
    axes[0][1].set_yscale("log")
    axes[0][1].set_xlabel("offered output tokens/s")
    axes[0][1].set_ylabel("TTFT at the client (ms)")
    axes[0][1].legend(fontsize=8)
    rp.save(fig, report, out, "batching.png")
