"""Admission never sheds a request while the batch has a free row for it (session 8, issue 14).

bench_inference at 1.0-1.5x the limit (docs/bench/inference.md, "Session 8: 1.5x overload")
saw the default server shed batch requests (503 overloaded) in windows whose batch ran 19 and
58 rows per step of the 112 its class may fill: the slot schedule counts a tenant's wait on its
weighted share of the slots (56 of 112 while the other tenant runs even a few interactive
streams), takes its sequences over that share as taken back, and ignores the rows nobody holds.
But the scheduler is work-conserving: while no other tenant's request waits for them, free rows
go to whoever waits, so a request that finds a free row for itself behind everything waiting
starts in the next step, whatever its tenant's share. Shedding it leaves the row idle.

No clock: WaitModel and Admission on a pinned EngineView.
"""

from __future__ import annotations

import pytest

from services.inference.admission import (
    Admission,
    EngineView,
    Limits,
    TenantConfig,
    WaitModel,
    Work,
    hash_key,
)
from services.inference.errors import Overloaded

MAX_SEQS = 128  # the batch class may fill 112 (the interactive reserve, max_seqs // 8)


def _bob_estimate(
    bob_running: int, bob_waiting: int, alice_running: int, step_s: float = 0.05, prompt: int = 0
):
    model = WaitModel({"alice": 1.0, "bob": 1.0})
    running = {"bob": [250 - i for i in range(bob_running)], "alice": [30] * alice_running}
    jobs = (257,) * bob_waiting
    waiting = {
        ("bob", "batch"): Work(
            tokens=300 * bob_waiting,
            steps=sum(jobs),
            seqs=bob_waiting,
            jobs=jobs,
            prompt=prompt * bob_waiting,
        )
    }
    view = EngineView(
        tokens_per_s=2000.0, step_s=step_s, max_seqs=MAX_SEQS, running=bob_running + alice_running
    )
    serving = bob_running  # batch sequences whose slots batch work can take
    return model.estimate("bob", "batch", waiting, view, running, serving)


def test_a_request_with_a_free_row_behind_everything_waiting_starts_next_step() -> None:
    # 60 of bob's long requests run beside 5 of alice's streams: 65 of 128 rows, 47 of the
    # batch class's 112 free; 30 of bob's requests wait (just submitted). Bob's share is 56,
    # but nobody else waits for the free rows: his 30 and the new one start next step.
    est = _bob_estimate(bob_running=60, bob_waiting=30, alice_running=5)
    assert not est.queued
    assert est.seconds == est.floor_s == 0.05


def test_on_free_rows_it_still_waits_for_the_prompts_ahead_to_prefill() -> None:
    # The same 30 waiting with 64-token prompts: 1920 tokens, at least a 256-token chunk a
    # step, 8 steps before its own. On a starved engine (1 s steps) that passes the 8 s aim.
    est = _bob_estimate(bob_running=60, bob_waiting=30, alice_running=5, prompt=64)
    assert est.queued
    assert est.seconds == pytest.approx(0.05 * (1 + 8))
    starved = _bob_estimate(bob_running=60, bob_waiting=30, alice_running=5, prompt=64, step_s=1.0)
    assert starved.seconds == pytest.approx(9.0)


def test_with_no_row_free_for_it_the_schedule_still_counts() -> None:
    # 100 running + 5: 7 rows free of 112 for 30 waiting: its wait is the schedule's.
    est = _bob_estimate(bob_running=100, bob_waiting=30, alice_running=5)
    assert est.queued
    assert est.seconds > 1.0


def test_admission_does_not_shed_while_the_batch_has_a_free_row() -> None:
    tenants = [
        TenantConfig(
            n, hash_key(n), requests_per_s=1e9, burst_requests=1e9, tokens_per_s=1e9, burst_tokens=1e9
        )
        for n in ("alice", "bob")
    ]
    view = EngineView(tokens_per_s=2000.0, step_s=0.05, max_seqs=MAX_SEQS, running=0)
    adm = Admission(
        tenants, Limits(max_queue_wait_s={"interactive": 2.0, "batch": 1.0}), engine_view=lambda: view
    )
    bob = adm.tenants["bob"]
    # 111 of bob's requests admitted and waiting (not yet handed to the engine): every one of
    # them and the next has a row of the 112 the batch class may fill.
    for _ in range(111):
        adm.admit(bob, klass="batch", prompt_tokens=64, max_tokens=256)
    adm.admit(bob, klass="batch", prompt_tokens=64, max_tokens=256)  # the 112th: a free row
    # The 113th has none: it waits for the first of them to end, 257 steps (12.9 s): shed.
    with pytest.raises(Overloaded):
        adm.admit(bob, klass="batch", prompt_tokens=64, max_tokens=256)
