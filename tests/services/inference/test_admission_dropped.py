"""A request dropped at its class cap (503 queue_timeout) calibrates the wait estimate as a wait of
at least the cap: a censored observation, not a missing one.

The fairness experiment measured 3.7-12.7% of admitted interactive requests dropped at the cap
per flood, while the estimate was calibrated only on the requests that had a first token, so it
learnt from those it got right enough and never from those it got most wrong. Deterministic:
a pinned engine view, no engine, no clock (the drops are sequences marked as the engine marks
them).
"""

from __future__ import annotations

from services.inference.admission import (
    Admission,
    EngineView,
    Limits,
    TenantConfig,
    Ticket,
    WaitModel,
    Work,
    hash_key,
)
from services.inference.errors import Overloaded
from services.inference.sequence import SeqStatus, Sequence

CAP = 0.35
# One slot, taken by a sequence no ticket names (so taken as at the middle of an average
# request: 3 steps left); each waiting request of 8 prompt tokens and 4 output tokens holds it
# 5 slot-steps of 10 ms: estimate 0.04 s (one step and the 3) + 0.05 s each waiting (0.02 s
# with none: no request to take the size from, the slot is taken as 1 step from free).
VIEW = EngineView(tokens_per_s=1000.0, step_s=0.01, max_seqs=1, running=1, prefill_chunk=256)
TENANT = TenantConfig("a", hash_key("ka"), requests_per_s=1e6, burst_requests=1e6)


def _admission() -> Admission:
    # No headroom: these tests are of the calibration, on the estimate against the cap itself.
    limits = Limits(max_queue_wait_s={"interactive": CAP, "batch": 8.0}, admission_headroom=0.0)
    return Admission([TENANT], limits, engine_view=lambda: VIEW)


def _admit_until_shed(adm: Admission) -> list[Ticket]:
    admitted: list[Ticket] = []
    for _ in range(100):
        try:
            admitted.append(adm.admit(TENANT, prompt_tokens=8, max_tokens=4))
        except Overloaded as exc:
            assert exc.reason == "overloaded"
            return admitted
    raise AssertionError("never shed")


def _end(ticket: Ticket, *, dropped: bool) -> None:
    """Hand it to the engine and end it as the engine would: dropped at its cap (waited 0.4 s,
    nothing generated), or started just in time (first token at its estimate)."""
    assert ticket.estimate is not None
    seq = Sequence(seq_id=str(id(ticket)), tenant="a", prompt=[1] * 8, max_tokens=4, arrival=100.0)
    seq.queue_deadline = 100.0 + CAP
    ticket.bind(seq)
    seq.status = SeqStatus.FINISHED
    if dropped:
        seq.finish_reason, seq.finished_at = "queue_timeout", 100.4
    else:
        seq.output = [2] * 4
        seq.first_token_at = 100.0 + ticket.estimate.seconds
        seq.finish_reason, seq.finished_at = "length", 100.5
    ticket.release()


def test_drops_at_the_cap_raise_the_estimate_so_fewer_are_admitted() -> None:
    control, adm = _admission(), _admission()
    first, in_time = _admit_until_shed(adm), _admit_until_shed(control)
    assert len(first) == len(in_time) == 7  # 0.02, then 0.04 + 0.05 k <= 0.35
    drops, rounds = 0, []
    while drops < WaitModel.MIN_FOR_MARGIN:
        for t in in_time:
            _end(t, dropped=False)
        for t in first:
            _end(t, dropped=True)
        drops += len(first)
        first, in_time = _admit_until_shed(adm), _admit_until_shed(control)
        rounds.append(len(first))
    # Started at its estimate: nothing to learn, as many admitted as before.
    assert len(in_time) == 7
    assert control.calibration()["interactive"]["observed"] == 7 * len(rounds)
    # Dropped at the cap: the estimate no longer runs low, so fewer are let in to be dropped.
    cal = adm.calibration()["interactive"]
    assert (cal["observed"], cal["dropped"]) == (0, drops)  # known waits only in the reported errors
    factor = adm.wait_model.calibration["interactive"].factors["a"]
    assert factor > 1.0
    margin = adm.wait_model._margin(adm.wait_model.calibration["interactive"])
    assert margin >= CAP - 0.33  # the error of the latest admitted, at least
    assert rounds == sorted(rounds, reverse=True) and rounds[-1] < 7, rounds
    est = adm.estimate("a", "interactive")
    # The next one is shed on the estimate: the raised factor and the margin (held to half the cap).
    assert est.seconds + min(est.margin_s, CAP / 2) > CAP


def test_a_drop_is_a_lower_bound_it_never_lowers_the_factor() -> None:
    model = WaitModel({"a": 1.0})
    waiting = {("a", "interactive"): _work(10)}
    est = model.estimate("a", "interactive", waiting, VIEW, {"a": [3]})
    assert est.raw_s > est.floor_s
    cal = model.calibration["interactive"]
    cal.factors["a"] = 2.0
    # Dropped after less than twice its raw estimate: the factor (2) already covers it.
    model.observe_dropped("a", "interactive", est, est.floor_s + 1.5 * est.raw_s)
    assert cal.factors["a"] == 2.0
    # Dropped after 4x: the factor moves up towards it (by the moving average's weight).
    model.observe_dropped("a", "interactive", est, est.floor_s + 4 * est.raw_s)
    assert cal.factors["a"] == 2.0 + WaitModel.ALPHA * (4 - 2.0)
    assert cal.dropped == 2 and cal.n == 0 and list(cal.recent)[-1] > 0


def test_the_wait_of_a_drop_is_at_least_its_queue_deadline_whichever_clock_dropped_it() -> None:
    """An engine on another clock (tests skew it) can drop a request before this process's clock
    reaches the deadline: it still waited at least its queue timeout."""
    adm = _admission()
    (t,) = _admit_until_shed(adm)[:1]
    assert t.estimate is not None
    seq = Sequence(seq_id="s", tenant="a", prompt=[1] * 8, max_tokens=4, arrival=100.0)
    seq.queue_deadline = 100.0 + CAP
    t.bind(seq)
    seq.status, seq.finish_reason, seq.finished_at = SeqStatus.FINISHED, "queue_timeout", 100.01
    adm.estimate("a", "interactive")  # the live set's pass calibrates on it, once
    assert t.observed
    cal = adm.wait_model.calibration["interactive"]
    assert cal.dropped == 1 and list(cal.recent) == [CAP - t.estimate.seconds]
    t.release()
    assert cal.dropped == 1


def test_retry_after_for_a_drop_is_when_the_estimate_is_back_under_the_cap() -> None:
    adm = _admission()
    admitted = _admit_until_shed(adm)
    # Ten more waiting (admitted when the estimate was lower: put in the live set directly).
    for _ in range(10):
        t = Ticket(adm, "a", "interactive", 12, adm.estimate("a", "interactive"), 8)
        adm._live[id(t)] = t
        admitted.append(t)
    dropped = admitted.pop(6)  # admitted on 0.34 s: 0.01 s and 0.33 s of work ahead (raw)
    _end_without_release(dropped)
    # It says how far past the cap a request sent now would wait (16 waiting, the factor raised
    # by the drop), not a fixed 5 s.
    retry = adm.queue_timeout_retry_after(dropped)
    est = adm.estimate("a", "interactive")
    assert adm.wait_model.calibration["interactive"].factors["a"] > 1.0
    assert retry == est.seconds + min(est.margin_s, CAP / 2) - CAP
    assert retry > 0.03 + 0.05 * 16 - CAP
    for t in admitted:
        t.release()
    # Nothing waiting: a retry would start at once (the header says 1 s).
    assert adm.queue_timeout_retry_after(dropped) == 0.0
    dropped.release()
    assert adm.wait_model.calibration["interactive"].dropped == 1


def _end_without_release(ticket: Ticket) -> None:
    seq = Sequence(seq_id="d", tenant="a", prompt=[1] * 8, max_tokens=4, arrival=100.0)
    seq.queue_deadline = 100.0 + CAP
    ticket.bind(seq)
    seq.status, seq.finish_reason, seq.finished_at = SeqStatus.FINISHED, "queue_timeout", 100.4


def _work(n: int) -> Work:
    return Work(tokens=12 * n, steps=5 * n, seqs=n)
