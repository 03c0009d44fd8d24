"""A tenant under its share of the batch is admitted on its estimate too (session 8, issue 14).

Under its weighted share, a request is not queued behind anyone's work: it takes a free row, or
in a full batch takes back a row lent to a tenant over its share after the scheduler's patience
(WaitModel.SLOT_STEPS). Until session 8 such a request was never shed, whatever that wait; on a
box whose steps pass a third of the interactive cap (0.35 s), the patience alone passes the cap,
and admitting it only moved its 503 to the cap (queue_timeout) or its first token past it. Now
its estimate is held to the cap like any other's; with a free row it is still admitted at once.

No clock: Admission on a pinned EngineView, bob's running sequences bound to its tickets.
"""

from __future__ import annotations

import pytest

from services.inference.admission import Admission, EngineView, Limits, TenantConfig, hash_key
from services.inference.errors import Overloaded
from services.inference.sequence import SeqStatus, Sequence

MAX_SEQS = 8


def _admission(step_s: float, bob_running: int) -> Admission:
    tenants = [
        TenantConfig(
            n, hash_key(n), requests_per_s=1e9, burst_requests=1e9, tokens_per_s=1e9, burst_tokens=1e9
        )
        for n in ("alice", "bob")
    ]
    # While bob's requests are admitted the engine is idle; then it runs them at `step_s`.
    views = [EngineView(tokens_per_s=1000.0, step_s=0.001, max_seqs=MAX_SEQS, running=0)]
    adm = Admission(
        tenants, Limits(max_queue_wait_s={"interactive": 0.35, "batch": 8.0}), engine_view=lambda: views[0]
    )
    for i in range(bob_running):  # bob holds every row it runs: over its share of 4 when 8
        ticket = adm.admit(adm.tenants["bob"], klass="interactive", prompt_tokens=16, max_tokens=100)
        seq = Sequence(f"bob-{i}", "bob", [1] * 16, max_tokens=100)
        seq.status = SeqStatus.RUNNING
        ticket.bind(seq)
    views[0] = EngineView(tokens_per_s=1000.0, step_s=step_s, max_seqs=MAX_SEQS, running=bob_running)
    return adm


def test_under_its_share_in_a_full_batch_on_slow_steps_it_is_shed() -> None:
    # 120 ms steps: one step plus the scheduler's patience (2 steps) is 0.36 s, past the 0.35 s
    # cap (and the 0.28 s admission holds to). Before session 8: admitted, queued=False.
    adm = _admission(step_s=0.12, bob_running=MAX_SEQS)
    est = adm.estimate("alice", "interactive")
    assert est.queued and est.share_slots == 4 and est.own_running == 0
    assert est.seconds == pytest.approx(0.36)
    with pytest.raises(Overloaded) as shed:
        adm.admit(adm.tenants["alice"], klass="interactive", prompt_tokens=16, max_tokens=16)
    assert shed.value.reason == "overloaded"


def test_under_its_share_in_a_full_batch_on_quick_steps_it_is_admitted() -> None:
    adm = _admission(step_s=0.05, bob_running=MAX_SEQS)  # 0.15 s: within the cap
    ticket = adm.admit(adm.tenants["alice"], klass="interactive", prompt_tokens=16, max_tokens=16)
    assert ticket.estimate is not None and ticket.estimate.seconds == pytest.approx(0.15)


def test_under_its_share_with_a_free_row_it_is_admitted_whatever_the_step() -> None:
    adm = _admission(step_s=0.3, bob_running=MAX_SEQS - 2)  # two rows free: it starts next step
    est = adm.estimate("alice", "interactive")
    assert not est.queued
    adm.admit(adm.tenants["alice"], klass="interactive", prompt_tokens=16, max_tokens=16)


def test_the_class_margin_does_not_reach_it() -> None:
    # The class's recent waits ran 0.3 s past their estimates (a flood's queue estimates on a
    # loaded box): the margin is for those, and with it (up to cap / 2) a steady tenant under
    # its share was shed at 50 ms steps (0.15 + 0.175 > 0.28). Its own wait is the patience.
    adm = _admission(step_s=0.05, bob_running=MAX_SEQS)
    cal = adm.wait_model.calibration["interactive"]
    cal.recent.extend([0.3] * 50)
    cal.margin = None
    est = adm.estimate("alice", "interactive")
    assert est.queued and est.margin_s == 0.0
    adm.admit(adm.tenants["alice"], klass="interactive", prompt_tokens=16, max_tokens=16)
    # The flooding tenant's queue estimate still carries it.
    assert adm.estimate("bob", "interactive").margin_s == 0.3
