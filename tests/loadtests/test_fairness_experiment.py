"""The fairness experiment's judgement of a flood, on made-up /metrics samples (no server):
where the steady state starts, the token split in it and over the whole window, whether both
tenants flooded, and the admitted requests' waits against the class cap."""

from __future__ import annotations

import json
import random

import pytest

from loadtests.experiments.fairness import (
    FLOOD_MIN_X,
    MIN_STEADY_S,
    WEIGHTS,
    _server_timing,
    flood_call,
    flood_figures,
    steady_start,
    wait_tail,
)
from loadtests.experiments.openloop import Call, Outcome
from loadtests.experiments.scrape import Snapshot

TOK = "inference_generated_tokens_total"
REJ = "inference_rejections_total"


def snap(at: float, tokens: dict[str, float], turned: dict[str, float]) -> Snapshot:
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for t, v in tokens.items():
        samples[(TOK, (("class", "interactive"), ("tenant", t)))] = v
    for t, v in turned.items():
        samples[(REJ, (("reason", "overloaded"), ("tenant", t)))] = v
    return Snapshot(samples, at)


def calls(rate_tokens: dict[str, float], window: float) -> list[Call]:
    """Calls offering exactly `rate_tokens[t]` tokens/s per tenant over `window` (100 each)."""
    out = []
    for t, r in rate_tokens.items():
        n = round(r * window / 100)
        out += [Call(i * window / n, "/v1/completions", {"max_tokens": 100}, t) for i in range(n)]
    return out


def window_of(ramp: list[tuple[float, dict[str, float], dict[str, float]]]) -> list[Snapshot]:
    return [snap(at, tok, rej) for at, tok, rej in ramp]


def test_the_steady_state_starts_when_both_tenants_have_been_turned_away() -> None:
    before = snap(100.0, {"alice": 500, "bob": 500}, {"alice": 7, "bob": 3})  # earlier phases
    samples = window_of(
        [
            (100.25, {"alice": 600, "bob": 700}, {"alice": 7, "bob": 3}),
            (100.5, {"alice": 700, "bob": 900}, {"alice": 7, "bob": 9}),  # bob only: still the ramp
            (100.75, {"alice": 900, "bob": 1000}, {"alice": 8, "bob": 12}),
            (101.0, {"alice": 1200, "bob": 1100}, {"alice": 9, "bob": 20}),
        ]
    )
    start = steady_start(samples, before, ["alice", "bob"])
    assert start is samples[2]
    # A sample taken before the window's base never counts, even with the counters past it.
    assert steady_start([snap(99.0, {}, {"alice": 50, "bob": 50})], before, ["alice", "bob"]) is None
    assert steady_start(samples[:2], before, ["alice", "bob"]) is None


def test_flood_figures_judge_the_steady_state_and_report_the_whole_window_beside_it() -> None:
    window = 10.0
    before = snap(0.0, {"alice": 0, "bob": 0}, {"alice": 0, "bob": 0})
    # Ramp 0-2 s: bob fills free slots (1,000 tokens each); then 3:1 at 3,000 tokens/s.
    samples = window_of(
        [
            (1.0, {"alice": 500, "bob": 500}, {"alice": 0, "bob": 4}),
            (2.0, {"alice": 1000, "bob": 1000}, {"alice": 1, "bob": 9}),
        ]
    )
    end = snap(10.0, {"alice": 1000 + 8 * 2250, "bob": 1000 + 8 * 750}, {"alice": 40, "bob": 90})
    offered = {"alice": 2.5 * 0.75 * 3000, "bob": 2.5 * 0.75 * 3000}
    fig = flood_figures(calls(offered, window), window, WEIGHTS, before, end, [*samples, end])
    assert fig["ramp_s"] == 2.0 and fig["steady_s"] == 8.0
    assert fig["ratio_steady"] == pytest.approx(3.0) and fig["share_steady"] == pytest.approx(0.75)
    assert fig["ratio_whole"] == pytest.approx(19000 / 7000, abs=1e-3)
    assert fig["served_steady_tok_s"] == pytest.approx(3000)
    assert fig["strength_alice"] == pytest.approx(2.5, abs=0.01)
    assert fig["strength_bob"] == pytest.approx(7.5, abs=0.02)
    assert fig["turned_away_alice_steady"] == 39 and fig["turned_away_bob_steady"] == 81
    assert fig["turned_away_alice_whole"] == 40
    assert fig["void"] == ""


def test_a_flood_is_void_when_a_tenant_is_not_turned_away_or_offers_under_twice_its_share() -> None:
    window = 10.0
    before = snap(0.0, {"alice": 0, "bob": 0}, {"alice": 0, "bob": 0})
    end = snap(10.0, {"alice": 22500, "bob": 7500}, {"alice": 0, "bob": 50})
    weak = {"alice": 1.5 * 0.75 * 3000, "bob": 1.5 * 0.75 * 3000}
    fig = flood_figures(calls(weak, window), window, WEIGHTS, before, end, [end])
    assert fig["ratio_steady"] is None and fig["ratio_whole"] == pytest.approx(3.0)
    assert "alice never turned away" in fig["void"] and "bob" not in fig["void"]

    # Both turned away, but late (a short steady part) and alice at 1.5x her share.
    start = snap(6.0, {"alice": 13500, "bob": 4500}, {"alice": 1, "bob": 30})
    end = snap(10.0, {"alice": 22500, "bob": 7500}, {"alice": 2, "bob": 50})
    fig = flood_figures(calls(weak, window), window, WEIGHTS, before, end, [start, end])
    assert fig["ratio_steady"] == pytest.approx(3.0) and fig["steady_s"] == 4.0 < MIN_STEADY_S
    assert f"steady part 4.0 s < {MIN_STEADY_S:g} s" in fig["void"]
    assert f"alice offered 1.50x its share (< {FLOOD_MIN_X:g}x)" in fig["void"]
    assert "bob offered" not in fig["void"]

    # Turned away during the ramp only: not flooding in the steady part.
    end = snap(10.0, {"alice": 22500, "bob": 7500}, {"alice": 1, "bob": 50})
    strong = {"alice": 2.5 * 0.75 * 3000, "bob": 2.5 * 0.75 * 3000}
    start = snap(1.0, {"alice": 1500, "bob": 1500}, {"alice": 1, "bob": 5})
    fig = flood_figures(calls(strong, window), window, WEIGHTS, before, end, [start, end])
    assert fig["void"] == "alice not turned away in the steady part"


def outcome(priority: str, status: int, ttft: float | None, queue_wait: float | None) -> Outcome:
    call = flood_call(random.Random(1), 0.0, 0, "alice", priority)
    timing = {} if ttft is None else {"ttft": ttft, "queue_wait": queue_wait}
    return Outcome(call, status=status, timing=timing)


def test_wait_tail_counts_admitted_requests_of_the_class_against_its_cap() -> None:
    outcomes = [outcome("interactive", 200, 0.01 * i, 0.005 * i) for i in range(1, 31)]  # to 0.30 s
    outcomes += [outcome("interactive", 200, 0.5, 0.1), outcome("interactive", 200, 0.6, 0.5)]
    outcomes += [outcome("interactive", 503, None, None), outcome("batch", 200, 5.0, 4.0)]
    tail = wait_tail(outcomes, "interactive")
    assert tail["admitted_waits"] == 32 and tail["past_cap"] == 2
    assert tail["wait_max_s"] == 0.6
    assert tail["past_cap_queue_p50_s"] == pytest.approx(0.3)  # (0.1 + 0.5) / 2
    assert tail["past_cap_first_step_p50_s"] == pytest.approx(0.25)  # (0.4 + 0.1) / 2
    assert tail["past_cap_alice"] == 2
    # What the engine enforces, and the experiment checks: the queue part within the cap (the
    # wait is that plus the step that starts it).
    assert tail["queue_max_s"] == 0.5
    assert wait_tail(outcomes, "batch")["past_cap"] == 0


def test_server_timing_is_read_from_a_json_body_or_the_last_sse_event_with_one() -> None:
    body = json.dumps({"timing": {"ttft_ms": 120.0, "queue_wait_ms": 80.0}}).encode()
    assert _server_timing(body, stream=False) == {"ttft": 0.12, "queue_wait": 0.08}
    events = [
        {"choices": [{"text": "a"}]},
        {"choices": [{"text": ""}], "usage": {"completion_tokens": 1}, "timing": {"ttft_ms": 30.0}},
    ]
    sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    assert _server_timing(sse.encode(), stream=True) == {"ttft": 0.03}
    assert _server_timing(b"not json", stream=False) == {}
