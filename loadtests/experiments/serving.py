"""What the inference experiments share: request shapes, calibration, waiting for idle, summaries
and the client/server cross-check.

Request shapes (bytes are tokens for the shipped byte-level model; ignore_eos makes output
lengths exact, so offered load in tokens/s is exactly what was asked):
  interactive (alice): prompt 16-64 bytes, 16-32 output tokens, streamed over SSE, TTFT at the client;
  batch (bob):         prompt 64-192 bytes, 64-128 output tokens, one JSON answer, TTFT from the
                       server's timing block.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from loadtests.experiments import openloop
from loadtests.experiments.openloop import Call, Outcome, poisson
from loadtests.experiments.queueing import pct
from loadtests.experiments.report import Report
from loadtests.experiments.scrape import Snapshot
from loadtests.experiments.target import ALICE as ALICE_KEY
from loadtests.experiments.target import BOB as BOB_KEY

WORDS = "the crawler fetched a page and the model wrote a token while the queue grew".split()  # noqa: SIM905
MEAN_TOKENS = {"interactive": 24.0, "batch": 96.0}
TTFT_SLO_S = 0.5  # the interactive class's objective: p95 time to first token


def text(rng: random.Random, lo: int, hi: int) -> str:
    n = rng.randint(lo, hi)
    out = ""
    while len(out) < n:
        out += rng.choice(WORDS) + " "
    return out[:n]


def completion(rng: random.Random, klass: str, at: float, step: int = 0) -> Call:
    if klass == "interactive":
        body = {
            "prompt": text(rng, 16, 64),
            "max_tokens": rng.randint(16, 32),
            "priority": "interactive",
            "ignore_eos": True,
            "stream": True,
        }
        return Call(at, "/v1/completions", body, "alice", klass, stream=True, step=step)
    body = {
        "prompt": text(rng, 64, 192),
        "max_tokens": rng.randint(64, 128),
        "priority": "batch",
        "ignore_eos": True,
    }
    return Call(at, "/v1/completions", body, "bob", klass, stream=False, step=step)


def mixed_schedule(
    rng: random.Random,
    tokens_per_s: float,
    interactive_share: float,
    start: float,
    duration: float,
    step: int,
) -> list[Call]:
    """Poisson arrivals of both classes offering `tokens_per_s` output tokens in total."""
    calls = []
    for klass, share in (("interactive", interactive_share), ("batch", 1.0 - interactive_share)):
        rate = tokens_per_s * share / MEAN_TOKENS[klass]
        calls += [completion(rng, klass, t, step) for t in poisson(rate, duration, rng, start)]
    return calls


def wait_idle(url: str, timeout: float = 180.0) -> bool:
    """Until nothing runs or waits in the engine (bounded); False if it never got there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = Snapshot.take(url)
        if snap.value("inference_running_sequences") == 0 and snap.value("inference_waiting_sequences") == 0:
            return True
        time.sleep(0.25)
    return False


def calibrate(url: str, key: str, concurrency: int, max_tokens: int = 96, rounds: int = 2) -> float:
    """Saturated throughput: `concurrency` requests at once, server-counted tokens over wall time."""
    best = 0.0
    with httpx.Client(timeout=300.0, headers={"Authorization": f"Bearer {key}"}) as client:
        import concurrent.futures

        body = {"prompt": "calibrate " * 8, "max_tokens": max_tokens, "ignore_eos": True, "priority": "batch"}
        for _ in range(rounds):
            before = Snapshot.take(url)
            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(lambda _: client.post(f"{url}/v1/completions", json=body), range(concurrency)))
            elapsed = time.perf_counter() - t
            tokens = (Snapshot.take(url) - before).value("inference_generated_tokens_total")
            best = max(best, tokens / elapsed)
    return best


def calibrate_mix(
    url: str, interactive_share: float, workers: int, duration: float, seed: int = 0
) -> tuple[float, list[Outcome]]:
    """Saturated throughput of the experiment's own mix (streamed interactive + batch), closed
    loop: what the server sustains with its HTTP and streaming costs, not just the model's."""
    rng = random.Random(seed)
    # A request draw in proportion to the token share: interactive requests are 4x shorter.
    p_inter = (interactive_share / MEAN_TOKENS["interactive"]) / (
        interactive_share / MEAN_TOKENS["interactive"] + (1 - interactive_share) / MEAN_TOKENS["batch"]
    )

    def make(_: int) -> Call:
        return completion(rng, "interactive" if rng.random() < p_inter else "batch", 0.0)

    before = Snapshot.take(url)
    outcomes = openloop.closed_loop(url, make, {"alice": ALICE_KEY, "bob": BOB_KEY}, workers, duration)
    window = Snapshot.take(url) - before
    return window.value("inference_generated_tokens_total") / window.at, outcomes


def service_time(url: str, key: str, body: dict[str, Any], n: int) -> list[float]:
    """Server-side service times (scheduled -> last token) of `n` requests sent one after another."""
    out = []
    with httpx.Client(timeout=120.0, headers={"Authorization": f"Bearer {key}"}) as client:
        for _ in range(n):
            timing = client.post(f"{url}/v1/completions", json=body).json()["timing"]
            out.append((timing["e2e_ms"] - timing["queue_wait_ms"]) / 1000.0)
    return out


def summarize(outcomes: Sequence[Outcome], duration: float) -> dict[str, Any]:
    """One load step, per class: counts, reject/error rates, TTFT / TPOT / queue wait p50 and p95."""
    row: dict[str, Any] = {}
    for klass in sorted({o.call.klass for o in outcomes}):
        mine = [o for o in outcomes if o.call.klass == klass]
        ok = [o for o in mine if o.ok]
        ttft = [o.ttft for o in ok if o.ttft is not None]
        tpot = [
            (o.timing["e2e"] - o.timing["ttft"]) / (o.completion_tokens - 1)
            for o in ok
            if o.completion_tokens > 1
            and o.timing.get("e2e") is not None
            and o.timing.get("ttft") is not None
        ]
        wait = [o.timing["queue_wait"] for o in ok if o.timing.get("queue_wait") is not None]
        p = klass[:5]  # "inter" / "batch"
        row[f"{p}_sent"] = len(mine)
        row[f"{p}_reject_rate"] = round(sum(o.rejected for o in mine) / len(mine), 4) if mine else 0.0
        row[f"{p}_error_rate"] = (
            round(sum(not o.ok and not o.rejected for o in mine) / len(mine), 4) if mine else 0.0
        )
        server_ttft = [o.timing["ttft"] for o in ok if o.timing.get("ttft") is not None]
        row[f"{p}_server_ttft_p95_ms"] = _ms(pct(server_ttft, 0.95))
        for name, values in (("ttft", ttft), ("tpot", tpot), ("wait", wait)):
            row[f"{p}_{name}_p50_ms"] = _ms(pct(values, 0.5))
            row[f"{p}_{name}_p95_ms"] = _ms(pct(values, 0.95))
    lags = [o.lag for o in outcomes]
    row["client_lag_p95_ms"] = _ms(pct(lags, 0.95))
    row["offered_req_per_s"] = round(len(outcomes) / duration, 3) if duration else None
    return row


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def cross_check(report: Report, delta: Snapshot, outcomes: Iterable[Outcome], label: str = "") -> None:
    """Completions answered, rejected, and tokens generated per tenant: client vs server counters."""
    outcomes = list(outcomes)
    suffix = f" ({label})" if label else ""
    answered = sum(o.status == 200 for o in outcomes if o.call.path == "/v1/completions")
    report.check(
        f"completions answered 200{suffix}",
        answered,
        delta.value("http_requests_total", route="/v1/completions", status="200"),
    )
    rejected = sum(o.rejected for o in outcomes if o.call.path == "/v1/completions")
    server_rejected = delta.value("http_requests_total", route="/v1/completions", status="429") + delta.value(
        "http_requests_total", route="/v1/completions", status="503"
    )
    if rejected or server_rejected:
        report.check(f"completions rejected 429/503{suffix}", rejected, server_rejected)
    for tenant in sorted({o.call.tenant for o in outcomes}):
        tokens = sum(o.completion_tokens for o in outcomes if o.call.tenant == tenant)
        server = delta.value("inference_generated_tokens_total", tenant=tenant)
        report.check(f"tokens generated for {tenant}{suffix}", tokens, server)


@dataclass
class Step:
    """One load step: the outcomes, and the server's counters before, at the end of the sending
    window (for rates over the window) and after the engine drained (for the cross-check)."""

    outcomes: list[Outcome]
    before: Snapshot
    window_end: Snapshot
    after: Snapshot
    drained: bool

    @property
    def window(self) -> Snapshot:
        return self.window_end - self.before

    @property
    def delta(self) -> Snapshot:
        return self.after - self.before

    def tokens_per_s(self, **labels: str) -> float:
        w = self.window
        return w.value("inference_generated_tokens_total", **labels) / w.at if w.at > 0 else 0.0


def run_step(url: str, calls: Sequence[Call], duration: float, keys: dict[str, str]) -> Step:
    """Send `calls` (times within [0, duration)), snapshot at the window's end, wait for all
    answers, wait until the engine is idle, snapshot again."""
    wait_idle(url)
    result: list[Outcome] = []
    before = Snapshot.take(url)
    sender = threading.Thread(target=lambda: result.extend(openloop.run(url, calls, keys)), daemon=True)
    sender.start()
    time.sleep(duration)
    window_end = Snapshot.take(url)
    sender.join(timeout=600)
    drained = wait_idle(url)
    return Step(result, before, window_end, Snapshot.take(url), drained)


def share(outcomes: Iterable[Outcome], klass: str) -> list[Outcome]:
    return [o for o in outcomes if o.call.klass == klass]
