"""Experiment 4: weighted fair queueing on and off, while one tenant floods.

Two side servers, one after the other, differing in one flag: the default (weighted fair
queueing across tenants) and `--no-fair-queueing` (FIFO across tenants within a class, no slot
shares). Both tenants send the same priority class, so only the queueing discipline differs;
both have weight 1 (the dev tenants).

  phase "steady": tenant B (alice) sends a steady 0.2x C of short streamed requests while
                  tenant A (bob) floods 1.5x C_A of long ones (C_A: the server's burst capacity
                  for A's requests): B's TTFT p50/p95 (client).
  phase "both":   both over their fair share (B 0.75x C, A 1.5x C_A): each tenant's share of the
                  generated tokens (the server's counter over the window) against its weight share.

A third side server gives the tenants unequal weights (alice 3, bob 1, `--tenants`):
  phase "weighted": both flood equally (the same long requests at the same rate): generated
                  tokens should split 3:1 (+-10%) in the steady state, as admission sheds each
                  tenant's excess from its own weighted share and the fair queue serves them by
                  weight. Once with interactive floods (cap 0.35 s: short queues), once with
                  batch ones (cap 8 s).
  phase "pool":   bob floods (1.5x C_A', C_A' calibrated right before) while alice sends a
                  steady 0.2x C of streamed requests,
                  every request of both through ONE client connection pool (aiohttp, 100
                  connections, as a gateway holds): alice's TTFT p95 at that client against the
                  0.5 s objective. A flood admitted and queued would hold the pool's connections
                  and make alice wait for one, whatever the server's own histogram says.
  phase "pool-httpx": the same schedule through httpx's pool (100 connections), for the
                  record: with httpx 0.28.1 / httpcore 1.0.9 requests waited for a connection
                  while far fewer than 100 were in use (up to 363 waiting with 23-66 in use,
                  alice's p95 9-23 s), against 0.14 s through aiohttp's pool on the same server
                  in the same minute. Reported: the most requests seen waiting for a connection
                  while fewer than half the pool's connections were in use.
On the default (wfq) server, a phase "equal": both tenants flood equally with equal weights:
generated tokens should split 1:1 (+-10%) in the steady state.

The floods ("equal", "weighted", "weighted-batch"): each is sized from the server's throughput
measured right before it on the same server (C_A', 64 long requests at once): both tenants send
FLOOD_X x the heavier tenant's weighted share of C_A', so each offers at least ~2x its share.
The token split is judged in the steady state: from the first /metrics sample (every SAMPLE_S
during the window) by which admission has turned both tenants away at least once
(inference_rejections_total by tenant) to the window's end. Admission never sheds a tenant
under its weighted share of the batch's slots, so from then both hold their shares; before it
(the ramp, 1-3 s) the first tenant to arrive fills free slots, as a work-conserving server
should. The whole window's split is reported beside it. A flood phase is void (and says why)
unless both tenants are turned away within the steady part, that part lasts MIN_STEADY_S, and
each tenant offered at least FLOOD_MIN_X its weighted share of what the server served in it; a
void phase is run once more, sized on what the server served. The admitted requests' real waits
for a first token (the server's timing block: arrival to first token) are reported per phase
against the class cap: p95, p99, max, and for those past it, how much was the queue (arrival
to first scheduled step) and how much the first step.
Slot shares (the engine's sequences per step, by tenant: /v1/admin/state engine.slot_steps)
and admission's answers per tenant (counts by reason) are reported per phase; admission's wait
estimate against the real waits is reported per class.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time
from typing import Any

import aiohttp
import httpx

from loadtests.experiments import report as rp
from loadtests.experiments.openloop import Call, poisson
from loadtests.experiments.queueing import pct
from loadtests.experiments.scrape import Snapshot
from loadtests.experiments.serving import (
    calibrate,
    calibrate_mix,
    completion,
    cross_check,
    run_step,
    text,
    wait_idle,
)
from loadtests.experiments.target import BOB, KEYS, side_inference

NAME = "fairness"
TITLE = "Fairness: tenant B's latency and token shares with weighted fair queueing on and off"
QUESTION = "Does weighted fair queueing keep a steady tenant's latency and share while another floods?"
NEEDS: tuple[str, ...] = ()  # its own two side servers
MODES = {"wfq": [], "fifo": ["--no-fair-queueing"]}  # with tenant_flags(equal weights)
# (B's load in x C, A's load in x C_A): C is what the server sustains for B's half-streamed mix,
# C_A for A's own long non-streamed requests (more efficient, so a flood must be sized on it).
PHASES = {"steady": (0.2, 1.5), "both": (0.75, 1.5)}
WEIGHTS = {"alice": 3.0, "bob": 1.0}
EQUAL = {"alice": 1.0, "bob": 1.0}
FLOODS = (("wfq", "equal"), ("weighted", "weighted"), ("weighted", "weighted-batch"))  # (mode, phase)
POOL = 100  # httpx's default: one pool for both tenants, as a gateway holds
CALIBRATE_CONCURRENCY = 64  # requests at once for C_A: the batch's slots (max_seqs default)
TTFT_OBJECTIVE_S = 0.5  # interactive (deploy/prometheus/rules/generation.yml)
ADMIN_KEY = "dev-admin-key"
CLASS_CAP_S = {"interactive": 0.35, "batch": 8.0}  # the server's default max queue wait by class
# An admitted request's queue part (arrival to its first scheduled step, the server's timing) may
# pass its cap by the turn's own work between the engine's deadline check and the step's start.
QUEUE_SLACK_S = 0.02
# The floods: both tenants at FLOOD_X x the heavier weight share of C_A' (calibrated right
# before, on the same server), so each offers at least ~2x its share (FLOOD_MIN_X, checked
# against what the server served in the steady state).
FLOOD_X = 3.0
FLOOD_MIN_X = 2.0
FLOOD_MEAN_TOKENS = 96.0  # flood_call's mean max_tokens
FLOOD_ATTEMPTS = 2  # a void flood is run once more, sized on what the server served
SAMPLE_S = 0.25  # /metrics during a flood's window, to find where its steady state starts
MIN_STEADY_S = 5.0  # of a 10 s window
# Every side server's tenants take far more requests/s than the floods send (the defaults, 50/s
# with a burst of 100, turned a flood's excess away as rate limits before admission's shares).
TENANT_LIMITS = {"requests_per_s": 1000.0, "burst_requests": 1000.0}


def flood_call(
    rng: random.Random, at: float, step: int, tenant: str = "bob", priority: str = "interactive"
) -> Call:
    body = {
        "prompt": text(rng, 64, 192),
        "max_tokens": rng.randint(64, 128),
        "priority": priority,
        "ignore_eos": True,
    }
    return Call(at, "/v1/completions", body, tenant, "flood", step=step)


def tenant_flags(weights: dict[str, float]) -> list[str]:
    tenants = {
        name: {"key_sha256": hashlib.sha256(KEYS[name].encode()).hexdigest(), "weight": w, **TENANT_LIMITS}
        for name, w in weights.items()
    }
    return ["--tenants", json.dumps(tenants), "--no-embeddings"]


def weighted_flags() -> list[str]:
    return tenant_flags(WEIGHTS)


Pooled = tuple[Call, int, "float | None", dict[str, Any]]


def _server_timing(body: bytes, stream: bool) -> dict[str, Any]:
    """The server's timing block (seconds) of one answer: the JSON body's, or the last SSE
    event's that has one; {} when there is none."""
    try:
        if not stream:
            block = json.loads(body).get("timing") or {}
        else:
            block = {}
            for line in body.split(b"\n"):
                line = line.strip()
                if line.startswith(b"data:") and b'"timing"' in line:
                    block = json.loads(line[5:]).get("timing") or {}
    except (ValueError, AttributeError):
        return {}
    return {k.removesuffix("_ms"): v / 1000.0 for k, v in block.items() if isinstance(v, int | float)}


async def _pooled(url: str, calls: list[Call], timeout: float) -> list[Pooled]:
    """Send every call at its time through one shared pool (aiohttp, POOL connections);
    (call, status, client TTFT: from before the pool hands out a connection, server timing)."""
    connector = aiohttp.TCPConnector(limit=POOL)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(url, connector=connector, timeout=client_timeout) as http:
        t0 = time.perf_counter()

        async def one(call: Call) -> Pooled:
            await asyncio.sleep(max(0.0, t0 + call.at - time.perf_counter()))
            start = time.perf_counter()
            headers = {"Authorization": f"Bearer {KEYS[call.tenant]}"}
            try:
                async with http.post(call.path, json=call.body, headers=headers) as r:
                    if r.status != 200:
                        await r.read()
                        return call, r.status, None, {}
                    ttft = None
                    body = bytearray()
                    async for chunk in r.content.iter_any():
                        if ttft is None and chunk:
                            ttft = time.perf_counter() - start
                        body += chunk
                    return call, 200, ttft, _server_timing(bytes(body), bool(call.body.get("stream")))
            except (TimeoutError, aiohttp.ClientError):
                return call, 0, None, {}

        return await asyncio.gather(*(one(c) for c in calls))


async def _pooled_httpx(url: str, calls: list[Call], timeout: float) -> tuple[list[Pooled], int]:
    """As _pooled, through httpx's pool; also the most requests waiting for a connection at
    one time while fewer than POOL / 2 were in use (httpcore's trace events, 0.1 s ticks)."""
    limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
    spans: list[tuple[float, float, float]] = []  # (start, connection acquired, end), from t0
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:
        t0 = time.perf_counter()

        async def one(call: Call) -> Pooled:
            await asyncio.sleep(max(0.0, t0 + call.at - time.perf_counter()))
            start = time.perf_counter()
            got: list[float] = []

            async def trace(name: str, _info: Any) -> None:
                if name == "http11.send_request_headers.started" and not got:
                    got.append(time.perf_counter())

            headers = {"Authorization": f"Bearer {KEYS[call.tenant]}"}
            result: Pooled = (call, 0, None, {})
            try:
                async with http.stream(
                    "POST", call.path, json=call.body, headers=headers, extensions={"trace": trace}
                ) as r:
                    if r.status_code != 200:
                        await r.aread()
                        result = (call, r.status_code, None, {})
                    else:
                        ttft = None
                        async for chunk in r.aiter_bytes():
                            if ttft is None and chunk:
                                ttft = time.perf_counter() - start
                        result = (call, 200, ttft, {})
            except httpx.HTTPError:
                pass
            end = time.perf_counter()
            spans.append((start - t0, (got[0] if got else end) - t0, end - t0))
            return result

        results = await asyncio.gather(*(one(c) for c in calls))
    stalled = 0
    horizon = max((e for _, _, e in spans), default=0.0)
    for i in range(int(horizon * 10) + 1):
        t = i / 10
        waiting = sum(1 for s, c, _ in spans if s <= t < c)
        in_use = sum(1 for _, c, e in spans if c <= t < e)
        if in_use < POOL // 2:
            stalled = max(stalled, waiting)
    return results, stalled


def _admin(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/v1/admin/state", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    return r.json() if r.status_code == 200 else {}


def _slot_share(before: dict[str, Any], after: dict[str, Any], tenant: str) -> float | None:
    """`tenant`'s share of the engine's sequence-steps between two admin states."""
    a = before.get("engine", {}).get("slot_steps", {})
    b = after.get("engine", {}).get("slot_steps", {})
    diff = {t: b.get(t, 0) - a.get(t, 0) for t in b}
    total = sum(diff.values())
    return round(diff.get(tenant, 0) / total, 3) if total else None


def _answers(before: dict[str, Any], after: dict[str, Any], tenant: str) -> dict[str, int]:
    """Admission's answers to `tenant` between two admin states, by outcome, all classes."""
    out: dict[str, int] = {}
    for state, sign in ((after, 1), (before, -1)):
        for cls in state.get("wait_estimate", {}).values():
            for outcome, n in cls.get("decisions", {}).get(tenant, {}).items():
                if isinstance(n, int):
                    out[outcome] = out.get(outcome, 0) + sign * n
    return {k: v for k, v in sorted(out.items()) if v}


def _wait_estimate(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/v1/admin/state", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    return r.json().get("wait_estimate", {}) if r.status_code == 200 else {}


def _step(url: str, calls: list[Call], window: float) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """run_step, plus admission's and the engine's state (admin) at the start and at the end of
    the sending window (not after the drain: the slot shares are the window's)."""
    wait_idle(url)
    before = _admin(url)
    at_end: dict[str, Any] = {}
    timer = threading.Timer(window, lambda: at_end.update(_admin(url)))
    timer.start()
    try:
        step = run_step(url, calls, window, KEYS)
    finally:
        timer.join()
    return step, before, at_end or _admin(url)


def _offered_tokens_per_s(calls: list[Call], tenant: str, window: float) -> float:
    return sum(c.body["max_tokens"] for c in calls if c.tenant == tenant) / window


def schedule(seed: int, phase: int, capacity: float, capacity_a: float, window: float) -> list[Call]:
    b_load, a_load = list(PHASES.values())[phase]
    rng = random.Random(seed * 1000 + phase)  # the same schedule for both servers
    calls = [completion(rng, "interactive", t, phase) for t in poisson(b_load * capacity / 24.0, window, rng)]
    calls += [flood_call(rng, t, phase) for t in poisson(a_load * capacity_a / 96.0, window, rng)]
    return calls


def run(ctx: Any) -> rp.Report:
    report = rp.Report(NAME, TITLE, QUESTION)
    smoke = ctx.smoke
    window = 3.0 if smoke else 10.0
    capacity = capacity_a = 0.0
    for mode, flags in MODES.items():
        with side_inference([*flags, *tenant_flags(EQUAL)], ctx.out / f"side-server-{mode}.log") as url:
            if not capacity:
                capacity, _ = calibrate_mix(
                    url, 0.5, workers=8 if smoke else 48, duration=2.0 if smoke else 10.0
                )
                # As many at once as the batch holds (64 slots, the server's default): with 48,
                # C_A came out 1929-3062 tokens/s while the weighted phase's server did 2300-2900,
                # so "1.5x C_A" each offered the 3:1 tenant only 1.2-1.5x its share, and it could
                # not hold its slots between arrivals (3:1 came out 2.4-2.7:1; 2.7-2.8:1 at 48
                # requests/s each against 2.45-2.7:1 at 30/s on the same code).
                capacity_a = calibrate(
                    url,
                    BOB,
                    concurrency=8 if smoke else CALIBRATE_CONCURRENCY,
                    max_tokens=24 if smoke else 96,
                )
                b_both, a_both = PHASES["both"][0] * capacity, PHASES["both"][1] * capacity_a
                fifo_share = b_both / (a_both + b_both)
                report.predict(
                    "WFQ serves the tenant with the least weighted service first, so a flood only "
                    "delays the flooder; FIFO serves arrivals in order, so the flood's backlog sits in "
                    "front of everyone.",
                    f"C = {capacity:.0f} tokens/s for B's half-streamed mix (closed loop), C_A = "
                    f"{capacity_a:.0f} tokens/s for A's long requests (burst). Prediction: with B steady "
                    "(0.2x C) under A's 1.5x C_A flood, B's p95 TTFT with WFQ stays below 1 s and at least "
                    "3x lower than with FIFO, where it grows with A's backlog; with both over their share "
                    "(B 0.75x C), WFQ gives B its max-min fair share +- 0.1 (half the tokens, or all it "
                    "asks if that is less) and sheds none of B's requests while B is under its share of "
                    "the batch, while FIFO gives them about in proportion to the offered tokens (B "
                    f"{fifo_share:.2f}). Both flooding equally (each at {FLOOD_X:g}x the heavier weight "
                    "share of C_A' calibrated right before the phase, so each offers >= "
                    f"{FLOOD_MIN_X:g}x its share), generated tokens in the steady state (from "
                    "when admission has turned both away) split 1:1 +- 10% at equal weights and "
                    "3:1 +- 10% at weights 3:1, every flood valid (both turned away in it); no "
                    "admitted interactive request waits for its first token longer than the 0.35 s "
                    "cap plus the step that starts it (what the engine enforces: each is in a step "
                    "planned by its cap or dropped with 503 queue_timeout), i.e. its queue part "
                    f"(arrival to first step) within the cap (+{QUEUE_SLACK_S * 1000:g} ms).",
                    capacity_tokens_per_s=round(capacity, 1),
                    capacity_a_tokens_per_s=round(capacity_a, 1),
                    weight_share_b=0.5,
                    fifo_share_b=round(fifo_share, 3),
                )
            for i, phase in enumerate(PHASES):
                calls = schedule(ctx.seed, i, capacity, capacity_a, window)
                step, before, after = _step(url, calls, window)
                b = [o for o in step.outcomes if o.call.tenant == "alice"]
                b_ok = [o.ttft for o in b if o.ok and o.ttft is not None]
                tokens_b = step.window.value("inference_generated_tokens_total", tenant="alice")
                tokens_a = step.window.value("inference_generated_tokens_total", tenant="bob")
                served = step.tokens_per_s()
                # Max-min fair: B's weight share of what the server did, or all B asked for if
                # that is less (B offers 0.75x C of its mix, under half of what the server does).
                fair_b = min(0.5, _offered_tokens_per_s(calls, "alice", window) / served) if served else None
                row = {
                    "mode": mode,
                    "phase": phase,
                    "b_sent": len(b),
                    "b_ttft_p50_ms": _ms(pct(b_ok, 0.5)),
                    "b_ttft_p95_ms": _ms(pct(b_ok, 0.95)),
                    "b_rejected": sum(o.rejected for o in b),
                    "a_rejected": sum(o.rejected for o in step.outcomes if o.call.tenant == "bob"),
                    "b_token_share": round(tokens_b / (tokens_a + tokens_b), 3)
                    if tokens_a + tokens_b
                    else None,
                    "b_weight_share": 0.5,
                    "b_fair_share": round(fair_b, 3) if fair_b is not None else None,
                    "b_slot_share": _slot_share(before, after, "alice"),
                    "b_answers": json.dumps(_answers(before, after, "alice")),
                    "tokens_per_s": round(served, 1),
                }
                report.rows.append(row)
                cross_check(report, step.delta, step.outcomes, f"{mode} {phase}")
                print(
                    f"   {mode:4} {phase:6}: B TTFT p95 {row['b_ttft_p95_ms']} ms, B token share "
                    f"{row['b_token_share']} (max-min fair {row['b_fair_share']}), B shed "
                    f"{row['b_rejected']}/{row['b_sent']}",
                    flush=True,
                )
            if mode == "wfq":
                _run_floods(report, url, random.Random(ctx.seed * 1000 + 5), window, "equal", smoke)
    _run_weighted(ctx, report, capacity, window)
    _conclude(report)
    _plot(report, ctx.out)
    return report


def _sampled_step(
    url: str, calls: list[Call], window: float
) -> tuple[Any, dict[str, Any], dict[str, Any], list[Snapshot]]:
    """_step, plus the server's /metrics every SAMPLE_S during the sending window."""
    samples: list[Snapshot] = []
    stop = threading.Event()

    def sample() -> None:
        with httpx.Client(timeout=5.0) as client:
            while not stop.is_set():
                try:
                    at = time.time()
                    samples.append(Snapshot.parse(client.get(f"{url}/metrics").text, at))
                except (httpx.HTTPError, ValueError):
                    pass  # a missed sample moves the steady state's start by one interval at most
                stop.wait(SAMPLE_S)

    wait_idle(url)
    sampler = threading.Thread(target=sample, name="fairness-sampler", daemon=True)
    sampler.start()
    timer = threading.Timer(window, stop.set)
    timer.start()
    try:
        step, before, after = _step(url, calls, window)
    finally:
        stop.set()
        timer.cancel()
        sampler.join(timeout=10)
    return step, before, after, samples


def turned_away(snap: Snapshot, tenant: str) -> float:
    """Requests admission turned away for `tenant` (every reason: shed on the wait estimate, its
    in-flight cap, its rate limits), by the server's counter."""
    return snap.value("inference_rejections_total", tenant=tenant)


def steady_start(samples: list[Snapshot], base: Snapshot, tenants: list[str]) -> Snapshot | None:
    """The first sample by which admission has turned every tenant away at least once since
    `base`: it sheds no tenant under its weighted share of the batch's slots, so from then on
    each holds its share (the ramp is over). None: some tenant was never turned away."""
    for s in samples:
        if s.at > base.at and all(turned_away(s, t) > turned_away(base, t) for t in tenants):
            return s
    return None


def flood_figures(
    calls: list[Call],
    window: float,
    weights: dict[str, float],
    before: Snapshot,
    window_end: Snapshot,
    samples: list[Snapshot],
) -> dict[str, Any]:
    """One flood window judged: alice:bob tokens over the whole window and in the steady state
    (steady_start to the window's end), how hard each tenant flooded (offered tokens/s over its
    weighted share of what the server served in the steady state), how often each was turned
    away there, and why the phase is void, if it is ("" when it is not)."""
    tenants = list(weights)
    total_w = sum(weights.values())
    tok = "inference_generated_tokens_total"
    whole = {t: window_end.value(tok, tenant=t) - before.value(tok, tenant=t) for t in tenants}
    offered = {t: _offered_tokens_per_s(calls, t, window) for t in tenants}
    start = steady_start([s for s in samples if s.at < window_end.at], before, tenants)
    out: dict[str, Any] = {
        "ratio_whole": round(whole["alice"] / whole["bob"], 3) if whole["bob"] else None,
        "share_whole": round(whole["alice"] / sum(whole.values()), 3) if sum(whole.values()) else None,
        "ramp_s": None,
        "steady_s": None,
        "ratio_steady": None,
        "share_steady": None,
        "served_steady_tok_s": None,
    }
    for t in tenants:
        out[f"offered_{t}_tok_s"] = round(offered[t], 1)
        out[f"strength_{t}"] = None
        out[f"turned_away_{t}_steady"] = None
        out[f"turned_away_{t}_whole"] = int(turned_away(window_end, t) - turned_away(before, t))
    void: list[str] = []
    if start is None:
        never = [t for t in tenants if turned_away(window_end, t) <= turned_away(before, t)]
        void.append(f"no steady state: {', '.join(never) or 'a tenant'} never turned away in the window")
    else:
        steady_s = window_end.at - start.at
        steady = {t: window_end.value(tok, tenant=t) - start.value(tok, tenant=t) for t in tenants}
        served = sum(steady.values()) / steady_s if steady_s > 0 else 0.0
        out.update(
            ramp_s=round(start.at - before.at, 2),
            steady_s=round(steady_s, 2),
            ratio_steady=round(steady["alice"] / steady["bob"], 3) if steady["bob"] else None,
            share_steady=round(steady["alice"] / sum(steady.values()), 3) if sum(steady.values()) else None,
            served_steady_tok_s=round(served, 1),
        )
        if steady_s < MIN_STEADY_S:
            void.append(f"steady part {steady_s:.1f} s < {MIN_STEADY_S:g} s")
        for t in tenants:
            shed = int(turned_away(window_end, t) - turned_away(start, t))
            strength = offered[t] / (weights[t] / total_w * served) if served else 0.0
            out[f"turned_away_{t}_steady"] = shed
            out[f"strength_{t}"] = round(strength, 2)
            if not shed:
                void.append(f"{t} not turned away in the steady part")
            if strength < FLOOD_MIN_X:
                void.append(f"{t} offered {strength:.2f}x its share (< {FLOOD_MIN_X:g}x)")
    out["void"] = "; ".join(void)
    return out


def wait_tail(outcomes: list[Any], klass: str) -> dict[str, Any]:
    """Admitted requests of `klass`: their real wait for a first token (the server's timing
    block, arrival to first token) against the class cap; for those past it, by tenant, and the
    median of how much was the queue (arrival to first scheduled step) and how much the first
    step."""
    cap = CLASS_CAP_S[klass]
    rows = [
        (o.call.tenant, o.timing["ttft"], o.timing.get("queue_wait"))
        for o in outcomes
        if o.call.body.get("priority") == klass and o.ok and o.timing.get("ttft") is not None
    ]
    out = _tail([(w, q) for _, w, q in rows], cap)
    for tenant in sorted({t for t, _, _ in rows}):
        out[f"past_cap_{tenant}"] = sum(1 for t, w, _ in rows if t == tenant and w > cap)
    return out


def _tail(rows: list[tuple[float, float | None]], cap: float) -> dict[str, Any]:
    """(wait, queue part) of each admitted request: arrival to first token, arrival to first
    scheduled step (None: not reported)."""
    waits = [w for w, _ in rows]
    past = [(w, q) for w, q in rows if w > cap and q is not None]
    return {
        "admitted_waits": len(waits),
        "wait_p95_s": _s(pct(waits, 0.95)),
        "wait_p99_s": _s(pct(waits, 0.99)),
        "wait_max_s": _s(max(waits, default=None)),
        # What the engine enforces: the first step planned by the cap (the wait is this plus
        # the step that starts it).
        "queue_max_s": _s(max((q for _, q in rows if q is not None), default=None)),
        "past_cap": sum(w > cap for w in waits),
        "past_cap_queue_p50_s": _s(pct([q for _, q in past], 0.5)),
        "past_cap_first_step_p50_s": _s(pct([w - q for w, q in past], 0.5)),
    }


def late_drops(delta: Snapshot, klass: str) -> dict[str, Any]:
    """Admitted requests of `klass` the engine dropped at their class cap before a first step
    (503 queue_timeout: the wait estimate let them in too late), by tenant, and as a share of
    those admitted, over `delta` (sending window to drained)."""
    out: dict[str, Any] = {}
    admitted = delta.value("inference_admissions_total", **{"class": klass})
    dropped = delta.value("inference_queue_timeouts_total", **{"class": klass})
    out["late_drops"] = int(dropped)
    out["late_drop_pct"] = round(100.0 * dropped / admitted, 2) if admitted else None
    for tenant, n in sorted(
        delta.by_label("inference_queue_timeouts_total", "tenant", **{"class": klass}).items()
    ):
        out[f"late_drops_{tenant}"] = int(n)
    return out


def _s(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def calibrate_here(url: str, smoke: bool) -> float:
    """C_A' on this server now: 64 long requests at once (the batch's slots), one round."""
    return calibrate(
        url,
        BOB,
        concurrency=8 if smoke else CALIBRATE_CONCURRENCY,
        max_tokens=24 if smoke else int(FLOOD_MEAN_TOKENS),
        rounds=1,
    )


def _run_floods(
    report: rp.Report, url: str, rng: random.Random, window: float, phase: str, smoke: bool
) -> None:
    """Both tenants flood equally (the same long requests at the same rate, sized on C_A'
    measured right before): one row per attempt, the token split against the weights ("equal":
    weight 1 each; "weighted": WEIGHTS), in the steady state and over the whole window."""
    weights = EQUAL if phase == "equal" else WEIGHTS
    want = weights["alice"] / (weights["alice"] + weights["bob"])
    heavy = max(weights.values()) / sum(weights.values())
    klass = "batch" if phase.endswith("-batch") else "interactive"
    cal = calibrate_here(url, smoke)
    rate = FLOOD_X * heavy * cal / FLOOD_MEAN_TOKENS
    attempts = 1 if smoke else FLOOD_ATTEMPTS
    for attempt in range(1, attempts + 1):
        calls = [flood_call(rng, t, 2, "alice", klass) for t in poisson(rate, window, rng)]
        calls += [flood_call(rng, t, 2, "bob", klass) for t in poisson(rate, window, rng)]
        step, before, after, samples = _sampled_step(url, calls, window)
        fig = flood_figures(calls, window, weights, step.before, step.window_end, samples)
        w = step.window
        row = {
            "mode": "weighted" if phase != "equal" else "wfq",
            "phase": phase,
            "attempt": attempt,
            "calibrated_tok_s": round(cal, 1),
            "rate_per_tenant_req_s": round(rate, 2),
            **fig,
            "a_rejected": sum(o.rejected for o in step.outcomes if o.call.tenant == "alice"),
            "b_rejected": sum(o.rejected for o in step.outcomes if o.call.tenant == "bob"),
            "alice_weight_share": want,
            "alice_slot_share": _slot_share(before, after, "alice"),
            "a_answers": json.dumps(_answers(before, after, "alice")),
            "b_answers": json.dumps(_answers(before, after, "bob")),
            "tokens_per_s": round(step.tokens_per_s(), 1),
            **wait_tail(step.outcomes, klass),
            **late_drops(step.delta, klass),
            "step_p95_s": _s(w.quantile("inference_step_duration_seconds", 0.95)),
            "estimate_error_p95_s": _s(
                w.quantile("inference_wait_estimate_error_seconds", 0.95, **{"class": klass})
            ),
        }
        report.rows.append(row)
        cross_check(report, step.delta, step.outcomes, f"{phase} {attempt}")
        print(
            f"   {phase} floods (attempt {attempt}, {rate:.1f} requests/s each, C_A' {cal:.0f}): "
            f"alice/bob tokens steady {row['ratio_steady']} (from {row['ramp_s']} s), whole window "
            f"{row['ratio_whole']} (weights {weights['alice']:g}:{weights['bob']:g}); strength alice "
            f"{row['strength_alice']}x bob {row['strength_bob']}x; turned away in steady state alice "
            f"{row['turned_away_alice_steady']} bob {row['turned_away_bob_steady']}; admitted {klass} "
            f"waits p95/p99/max {row['wait_p95_s']}/{row['wait_p99_s']}/{row['wait_max_s']} s "
            f"(cap {CLASS_CAP_S[klass]:g}), dropped at the cap {row['late_drops']} "
            f"({row['late_drop_pct']}% of admitted){'; VOID: ' + row['void'] if row['void'] else ''}",
            flush=True,
        )
        if not row["void"]:
            break
        # Sized on what the server served (the box's speed moves within minutes), never lower.
        served = row["served_steady_tok_s"] or row["tokens_per_s"]
        rate = max(1.5 * rate, FLOOD_X * heavy * served / FLOOD_MEAN_TOKENS)


def _pool_row(phase: str, results: list[Pooled]) -> dict[str, Any]:
    steady = [ttft for c, status, ttft, _ in results if c.tenant == "alice" and status == 200 and ttft]
    cap = CLASS_CAP_S["interactive"]
    waits = [
        (c.tenant, tm["ttft"], tm.get("queue_wait"))
        for c, status, _, tm in results
        if status == 200 and "ttft" in tm
    ]
    tail: dict[str, Any] = {}
    if phase == "pool":  # the server's timing blocks (read through aiohttp only)
        for who, mine in (("", waits), ("alice_", [x for x in waits if x[0] == "alice"])):
            part = _tail([(w, q) for _, w, q in mine], cap)
            tail.update({f"{who}{k}": v for k, v in part.items()})
    return {
        "mode": "weighted",
        "phase": phase,
        "pool_connections": POOL,
        "a_sent": sum(1 for c, *_ in results if c.tenant == "alice"),
        "a_admitted": len(steady),
        "a_ttft_p50_ms": _ms(pct(steady, 0.5)),
        "a_ttft_p95_ms": _ms(pct(steady, 0.95)),
        "a_ttft_max_ms": _ms(max(steady, default=None)),
        "b_sent": sum(1 for c, *_ in results if c.tenant == "bob"),
        "b_rejected": sum(1 for c, status, *_ in results if c.tenant == "bob" and status in (429, 503)),
        **tail,
    }


def _run_weighted(ctx: Any, report: rp.Report, capacity: float, window: float) -> None:
    with side_inference(weighted_flags(), ctx.out / "side-server-weighted.log") as url:
        rng = random.Random(ctx.seed * 1000 + 7)
        for phase in ("weighted", "weighted-batch"):
            _run_floods(report, url, rng, window, phase, ctx.smoke)
        cal = calibrate_here(url, ctx.smoke)
        calls = [completion(rng, "interactive", t, 3) for t in poisson(0.2 * capacity / 24.0, window, rng)]
        calls += [flood_call(rng, t, 3, "bob") for t in poisson(1.5 * cal / FLOOD_MEAN_TOKENS, window, rng)]
        calls.sort(key=lambda c: c.at)
        wait_idle(url)
        before = Snapshot.take(url)
        pooled = asyncio.run(_pooled(url, calls, 300.0))
        wait_idle(url)
        row = {
            **_pool_row("pool", pooled),
            **late_drops(Snapshot.take(url) - before, "interactive"),
            "calibrated_tok_s": round(cal, 1),
        }
        report.rows.append(row)
        print(
            f"   weighted pool: alice TTFT p95 {row['a_ttft_p95_ms']} ms at the shared-pool client; "
            f"admitted interactive waits p95/p99/max {row['wait_p95_s']}/{row['wait_p99_s']}/"
            f"{row['wait_max_s']} s (alice {row['alice_wait_p95_s']}/{row['alice_wait_p99_s']}/"
            f"{row['alice_wait_max_s']}); dropped at the cap {row['late_drops']} ({row['late_drop_pct']}%"
            " of admitted)",
            flush=True,
        )
        wait_idle(url)
        results, stalled = asyncio.run(_pooled_httpx(url, calls, 300.0))
        report.rows.append({**_pool_row("pool-httpx", results), "waiting_for_a_free_connection": stalled})
        print(
            f"   weighted pool (httpx): alice TTFT p95 {report.rows[-1]['a_ttft_p95_ms']} ms; up to "
            f"{stalled} requests waited for a connection while fewer than {POOL // 2} were in use",
            flush=True,
        )
        wait_idle(url)
        for klass, cal in _wait_estimate(url).items():
            report.rows.append({"mode": "weighted", "phase": f"wait-estimate {klass}", **_flat(cal)})


def _flat(cal: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in cal.items() if not isinstance(v, dict)}
    out.update({f"factor_{t}": f for t, f in cal.get("factor", {}).items()})
    return out


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000.0, 2)


def _get(report: rp.Report, mode: str, phase: str) -> dict[str, Any]:
    """The phase's row (a flood's last attempt)."""
    return [r for r in report.rows if r["mode"] == mode and r["phase"] == phase][-1]


def _conclude(report: rp.Report) -> None:
    on, off = _get(report, "wfq", "steady"), _get(report, "fifo", "steady")
    p_on, p_off = on["b_ttft_p95_ms"] or float("inf"), off["b_ttft_p95_ms"] or float("inf")
    latency_ok = p_on < 1000 and p_off >= 3 * p_on
    both = _get(report, "wfq", "both")
    s_on, s_off = both["b_token_share"], _get(report, "fifo", "both")["b_token_share"]
    fair_b = both["b_fair_share"]
    share_ok = s_on is not None and fair_b is not None and abs(s_on - fair_b) <= 0.1
    report.measured.update(b_p95_wfq_ms=p_on, b_p95_fifo_ms=p_off, b_share_wfq=s_on, b_share_fifo=s_off)

    def held(ok: bool) -> str:
        return "held" if ok else "NOT held"

    floods = {name: _get(report, mode, name) for mode, name in FLOODS}
    flood_ok = {
        name: not r["void"] and r["ratio_steady"] is not None and abs(r["ratio_steady"] / want - 1) <= 0.10
        for (name, r), want in zip(floods.items(), (1.0, 3.0, 3.0), strict=True)
    }
    weighted, pool = floods["weighted"], _get(report, "weighted", "pool")
    a_p95 = pool["a_ttft_p95_ms"]
    pool_ok = a_p95 is not None and a_p95 <= TTFT_OBJECTIVE_S * 1000 and pool["a_admitted"] == pool["a_sent"]
    httpx_pool = _get(report, "weighted", "pool-httpx")
    cal = next((r for r in report.rows if r["phase"] == "wait-estimate interactive"), {})
    cap = CLASS_CAP_S["interactive"]
    report.measured.update(
        b_fair_share_wfq=fair_b,
        b_shed_wfq=both["b_rejected"],
        alice_slot_share_weighted=weighted["alice_slot_share"],
        alice_p95_ttft_shared_pool_ms=a_p95,
        alice_p95_ttft_shared_httpx_pool_ms=httpx_pool["a_ttft_p95_ms"],
        wait_estimate_mean_error_s=cal.get("mean_error_s"),
        wait_estimate_error_p95_s=cal.get("error_p95_s"),
        interactive_wait_p95_s=cal.get("wait_p95_s"),
        interactive_wait_max_s=cal.get("wait_max_s"),
    )
    for name, r in floods.items():
        key = name.replace("-", "_")
        report.measured.update(
            {
                f"alice_bob_token_ratio_{key}_steady": r["ratio_steady"],
                f"alice_bob_token_ratio_{key}_whole": r["ratio_whole"],
                f"ramp_s_{key}": r["ramp_s"],
                f"strength_{key}": [r["strength_alice"], r["strength_bob"]],
                f"void_{key}": r["void"],
                f"admitted_wait_p95_p99_max_s_{key}": [r["wait_p95_s"], r["wait_p99_s"], r["wait_max_s"]],
                f"late_drop_pct_{key}": r["late_drop_pct"],
            }
        )
    report.measured["late_drop_pct_pool"] = pool["late_drop_pct"]
    report.measured["admitted_wait_p95_p99_max_s_pool"] = [
        pool["wait_p95_s"],
        pool["wait_p99_s"],
        pool["wait_max_s"],
    ]

    def flood(name: str) -> str:
        r = floods[name]
        how = "VOID: " + r["void"] if r["void"] else held(flood_ok[name])
        if r["ratio_steady"] is None:
            return f"no steady state ({how}; whole window {r['ratio_whole']}:1)"
        return (
            f"{r['ratio_steady']}:1 in the steady state from {r['ramp_s']} s ({how}; whole window "
            f"{r['ratio_whole']}:1; offered {r['strength_alice']}x / {r['strength_bob']}x their shares, "
            f"turned away {r['turned_away_alice_steady']} / {r['turned_away_bob_steady']})"
        )

    def waits(r: dict[str, Any], klass: str = "interactive") -> str:
        return (
            f"p95 {r['wait_p95_s']} / p99 {r['wait_p99_s']} / max {r['wait_max_s']} s, {r['past_cap']} of "
            f"{r['admitted_waits']} past the {CLASS_CAP_S[klass]:g} s cap, queue part max "
            f"{r['queue_max_s']} s, {r['late_drops']} dropped at it ({r['late_drop_pct']}% of admitted)"
        )

    waits_ok = all(
        r["queue_max_s"] is not None and r["queue_max_s"] <= cap + QUEUE_SLACK_S
        for r in (floods["equal"], floods["weighted"], pool)
    )

    report.conclude(
        latency_ok and share_ok and all(flood_ok.values()) and pool_ok,
        f"Under A's flood, B's p95 TTFT was {p_on:.0f} ms with WFQ and {p_off:.0f} ms with FIFO "
        f"({p_off / p_on:.1f}x; {held(latency_ok)}). With both over their share, B got {s_on} of the "
        f"tokens with WFQ (max-min fair share {fair_b}: {held(share_ok)}; B shed "
        f"{both['b_rejected']}/{both['b_sent']}) and {s_off} with FIFO. Both flooding, alice:bob "
        f"tokens: equal weights {flood('equal')}; weights 3:1, interactive {flood('weighted')}, batch "
        f"{flood('weighted-batch')}; slot share {weighted['alice_slot_share']}. Bob flooding, alice "
        f"steady, one {POOL}-connection pool for both: alice's p95 "
        f"TTFT at that client {a_p95} ms ({held(pool_ok)}; {pool['a_admitted']}/{pool['a_sent']} "
        f"admitted; bob {pool['b_rejected']}/{pool['b_sent']} shed); through httpx's pool "
        f"{httpx_pool['a_ttft_p95_ms']} ms (up to {httpx_pool['waiting_for_a_free_connection']} "
        f"requests waiting for a connection while fewer than {POOL // 2} were in use). Admitted "
        f"interactive requests' real waits for a first token (server timing, arrival to first token): "
        f"equal floods {waits(floods['equal'])}; 3:1 floods {waits(floods['weighted'])}; shared pool "
        f"{waits(pool)} (no admitted wait past the cap plus the step that starts it: {held(waits_ok)}). "
        "Interactive wait estimate "
        f"on the weighted server: mean error {cal.get('mean_error_s')} s, p95 {cal.get('error_p95_s')} "
        f"s over {cal.get('observed')} requests.",
        "Rate limits cap what a tenant may send; only the queueing discipline decides who waits once the "
        "server is saturated. Without WFQ a single tenant's burst becomes every tenant's latency. A "
        "client's own pool can add more wait than the server: measure at the client, with more than one.",
    )


def _plot(report: rp.Report, out: Any) -> None:
    fig, axes = rp.figure(1, 3, size=(17, 4.5))
    modes = list(MODES)
    steady = [_get(report, m, "steady") for m in modes]
    xs = range(len(modes))
    axes[0][0].bar([x - 0.2 for x in xs], [r["b_ttft_p50_ms"] or 0 for r in steady], 0.4, label="p50")
    axes[0][0].bar([x + 0.2 for x in xs], [r["b_ttft_p95_ms"] or 0 for r in steady], 0.4, label="p95")
    axes[0][0].set_xticks(list(xs), modes)
    axes[0][0].set_ylabel("B's TTFT (ms) while A floods")
    axes[0][0].legend()
    both = [_get(report, m, "both") for m in modes]
    axes[0][1].bar(list(xs), [r["b_token_share"] or 0 for r in both], 0.5, label="B's token share")
    axes[0][1].axhline(0.5, color="red", linestyle="--", label="B's weight share")
    axes[0][1].set_xticks(list(xs), modes)
    axes[0][1].set_ylim(0, 1)
    axes[0][1].set_ylabel("share of generated tokens (both flooding)")
    axes[0][1].legend()
    weighted, pool = _get(report, "weighted", "weighted"), _get(report, "weighted", "pool")
    ax = axes[0][2]
    ax.bar([-0.2], [weighted["share_steady"] or 0], 0.4, label="alice's token share, steady state")
    ax.bar([0.2], [weighted["share_whole"] or 0], 0.4, label="alice's token share, whole window")
    ax.axhline(0.75, color="red", linestyle="--", label="weight share 0.75")
    ax.bar([1], [(pool["a_ttft_p95_ms"] or 0) / 1000 / TTFT_OBJECTIVE_S], 0.5, label="alice p95 TTFT / 0.5 s")
    ax.set_xticks([0, 1], ["both flood (interactive)", "bob floods, one pool"])
    ax.set_ylim(0, 1.5)
    ax.set_ylabel("weights 3:1 (alice:bob)")
    ax.legend(fontsize="small")
    rp.save(fig, report, out, "fairness.png")
