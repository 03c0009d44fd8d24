"""Experiment 2: utilisation against queue wait, next to the M/D/1 (and M/G/1) prediction.

A queueing model needs a single server with a known service time, so this experiment starts its
own inference server with one sequence at a time (`--max-seqs 1`) and sends requests of one
fixed shape (same prompt, same max_tokens, ignore_eos): every request is the same work, an
M/D/1 queue as near as a shared CPU allows. It measures the service time S (requests one after
another), predicts the mean queue wait at each utilisation from S (and from S's measured
variability, M/G/1), then offers Poisson arrivals at rho = lambda S from 0.2 to 0.9 and reads
each request's queue wait from the server's timing block.
"""

from __future__ import annotations

import random
import statistics
from typing import Any

from loadtests.experiments import report as rp
from loadtests.experiments.openloop import Call, poisson
from loadtests.experiments.queueing import cs2, md1_wait, mean, mg1_wait, mm1_wait_quantile, pct
from loadtests.experiments.serving import cross_check, run_step, service_time
from loadtests.experiments.target import ALICE, KEYS, side_inference

NAME = "utilisation"
TITLE = "Utilisation vs queue wait: a one-at-a-time server against M/D/1"
QUESTION = "How fast does queue wait grow with utilisation, and does M/D/1 predict it?"
NEEDS: tuple[str, ...] = ()  # its own side server (one sequence at a time)
PROMPT = "Prometheus scrapes every target "  # 32 bytes = 32 prompt tokens
# One sequence at a time, one torch thread: on a shared CPU more threads only add jitter to S.
FLAGS = ["--max-seqs", "1", "--no-embeddings", "--torch-threads", "1"]


def run(ctx: Any) -> rp.Report:
    report = rp.Report(NAME, TITLE, QUESTION)
    smoke = ctx.smoke
    max_tokens = 8 if smoke else 32
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "priority": "interactive"}
    levels = [0.3, 0.6] if smoke else [0.2, 0.4, 0.6, 0.7, 0.8, 0.9]
    with side_inference(FLAGS, ctx.out / "side-server.log") as url:
        service_time(url, ALICE, body, 3)  # warm up
        probe = service_time(url, ALICE, body, 5 if smoke else 30)
        s, c2 = statistics.fmean(probe), cs2(probe)
        report.predict(
            "One server, Poisson arrivals, (nearly) constant service time: the mean queue wait follows "
            "M/D/1, Wq = rho S / (2 (1 - rho)), growing without bound as rho -> 1.",
            f"Measured service time S = {s * 1000:.1f} ms (cs^2 = {c2:.3f}). Predicted mean wait "
            + ", ".join(f"{md1_wait(r, s) * 1000:.0f} ms at rho {r}" for r in levels)
            + f" (M/D/1); M/G/1 with the measured cs^2 adds {c2:.0%}. Waiting equals one service time at "
            "rho = 2/3 and is 4.5 S at 0.9: the 60-80% guidance is where the curve turns up. Agreement: "
            "each level with 0.3 <= rho <= 0.85 within 35% (+ S/10) of M/G/1 at its measured rho and "
            "service time (all but one level).",
            service_time_ms=round(s * 1000, 2),
            service_cs2=round(c2, 4),
            md1_wait_ms={str(r): round(md1_wait(r, s) * 1000, 2) for r in levels},
        )
        rng = random.Random(ctx.seed)
        s_est = s  # the service time drifts with the shared CPU: aim each level with the latest
        for i, rho in enumerate(levels):
            lam = rho / s_est
            window = 3.0 if smoke else min(30.0, max(12.0, 150.0 / lam))
            calls = [
                Call(t, "/v1/completions", body, "alice", "interactive", step=i)
                for t in poisson(lam, window, rng)
            ]
            step = run_step(url, calls, window, KEYS)
            ok = [o for o in step.outcomes if o.ok and o.timing.get("queue_wait") is not None]
            waits = [o.timing["queue_wait"] for o in ok]
            services = [
                o.timing["e2e"] - o.timing["queue_wait"] for o in ok if o.timing.get("e2e") is not None
            ]
            s_lvl = mean(services) or s
            if len(services) >= 5:
                s_est = s_lvl
            rho_meas = len(step.outcomes) / window * s_lvl
            pred = mg1_wait(rho_meas, s_lvl, cs2(services))
            row = {
                "rho_planned": rho,
                "rho_measured": round(rho_meas, 3),
                "arrivals": len(step.outcomes),
                "service_ms": round(s_lvl * 1000, 2),
                "wait_mean_ms": _ms(mean(waits)),
                "wait_p50_ms": _ms(pct(waits, 0.5)),
                "wait_p95_ms": _ms(pct(waits, 0.95)),
                "md1_wait_ms": _ms(md1_wait(rho_meas, s_lvl)),
                "mg1_wait_ms": _ms(pred),
                "mm1_wait_p95_ms": _ms(mm1_wait_quantile(rho_meas, s_lvl, 0.95)),
                "wait_over_service": round((mean(waits) or 0) / s_lvl, 3),
            }
            report.rows.append(row)
            cross_check(report, step.delta, step.outcomes, f"rho {rho}")
            print(
                f"   rho {rho} (measured {rho_meas:.2f}): wait mean {row['wait_mean_ms']} ms, "
                f"M/G/1 {row['mg1_wait_ms']} ms",
                flush=True,
            )
    _conclude(report, s)
    _plot(report, ctx.out, s, c2)
    return report


def _ms(seconds: float | None) -> float | None:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return None
    return round(seconds * 1000.0, 2)


def _conclude(report: rp.Report, s: float) -> None:
    judged = [r for r in report.rows if 0.3 <= r["rho_measured"] <= 0.85 and r["wait_mean_ms"] is not None]
    agree = [
        r
        for r in judged
        if r["mg1_wait_ms"] is not None
        and abs(r["wait_mean_ms"] - r["mg1_wait_ms"]) <= 0.35 * r["mg1_wait_ms"] + 0.1 * r["service_ms"]
    ]
    ok = bool(judged) and len(agree) >= len(judged) - 1
    top = report.rows[-1]
    below = [r["rho_measured"] for r in report.rows if r["wait_over_service"] < 1.0]
    under = f"below one service time up to rho {max(below)}" if below else "above one service time throughout"
    report.conclude(
        ok,
        f"{len(agree)} of {len(judged)} levels at 0.3 <= rho <= 0.85 agree with M/G/1 at their measured "
        "rho (within 35% + S/10). "
        f"The mean wait stays {under}; at rho {top['rho_measured']} it is {top['wait_mean_ms']} ms = "
        f"{top['wait_over_service']} service times (M/G/1: {top['mg1_wait_ms']} ms, "
        f"p95 {top['wait_p95_ms']} ms).",
        "Utilisation is not free: one server at 90% makes requests wait several service times on average, "
        "and longer at p95, from the randomness of arrivals alone. Keep pools at 60-80% and add capacity "
        "(or batch) before the curve turns up.",
    )


def _plot(report: rp.Report, out: Any, s: float, c2: float) -> None:
    rows = report.rows
    fig, axes = rp.figure(1, 2, size=(13, 4.8))
    ax = axes[0][0]
    grid = [i / 100 for i in range(5, 96)]
    ax.plot(
        grid,
        [md1_wait(r, s) * 1000 for r in grid],
        "-",
        color="black",
        label=f"M/D/1 (S = {s * 1000:.0f} ms)",
    )
    ax.plot(
        grid, [mg1_wait(r, s, c2) * 1000 for r in grid], "--", color="grey", label=f"M/G/1 (cs² = {c2:.2f})"
    )
    x = [r["rho_measured"] for r in rows]
    ax.plot(x, [r["wait_mean_ms"] for r in rows], "o", color="tab:blue", label="measured mean wait")
    ax.plot(x, [r["wait_p95_ms"] for r in rows], "^", color="tab:orange", label="measured p95 wait")
    ax.axvspan(0.6, 0.8, color="green", alpha=0.08, label="60-80% guidance")
    ax.set_xlabel("utilisation rho = lambda x S (measured)")
    ax.set_ylabel("queue wait (ms)")
    ax.set_ylim(0, max([r["wait_p95_ms"] or 0 for r in rows] + [md1_wait(0.9, s) * 1000]) * 1.15)
    ax.legend(fontsize=8)
    ax = axes[0][1]
    ax.plot(grid, [md1_wait(r, 1.0) for r in grid], "-", color="black", label="M/D/1: Wq / S")
    ax.plot(x, [r["wait_over_service"] for r in rows], "o", label="measured mean wait / S")
    ax.axhline(1.0, color="red", linestyle=":", label="wait = one service time")
    ax.axvspan(0.6, 0.8, color="green", alpha=0.08)
    ax.set_xlabel("utilisation rho")
    ax.set_ylabel("mean queue wait / service time")
    ax.legend(fontsize=8)
    rp.save(fig, report, out, "utilisation.png")
