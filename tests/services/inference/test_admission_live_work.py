"""The wait estimate's inputs, read in one pass of the live set, equal their recomputation.

`Admission.live_work` reads every admitted request once per estimate (waiting work, running
sequences' steps left, the slots a lower class can take) and calibrates on those with a first
token, or dropped at its class cap before one. Whatever the requests went through (admitted,
handed to the engine, started, preempted, stepped, finished, cancelled, dropped at the cap,
released), it must give what the reference functions (`waiting_work`, `running_left`, a count
of the running) give from the same live set, and calibrate on each request exactly once.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.inference.admission import (
    CLASS_ORDER,
    Admission,
    EngineView,
    Limits,
    TenantConfig,
    Ticket,
    hash_key,
    running_left,
    waiting_work,
)
from services.inference.sequence import SeqStatus, Sequence

TENANTS = [TenantConfig("a", hash_key("ka")), TenantConfig("b", hash_key("kb"), weight=3.0)]
VIEW = EngineView(tokens_per_s=1000.0, step_s=0.02, max_seqs=4, running=4, prefill_chunk=8)


def _reference(adm: Admission, chunk: int, klass: str) -> tuple[dict, dict, int | None]:
    tickets = list(adm._live.values())
    serving = None
    if klass in CLASS_ORDER[1:]:
        below = CLASS_ORDER[CLASS_ORDER.index(klass) :]
        serving = sum(
            1 for t in tickets if t.klass in below and t.seq is not None and t.seq.status is SeqStatus.RUNNING
        )
    return waiting_work(tickets, chunk), running_left(tickets), serving


OPS = st.lists(
    st.tuples(
        st.sampled_from(["admit", "bind", "start", "step", "preempt", "finish", "cancel", "drop", "release"]),
        st.integers(0, 1000),  # which request (modulo the live ones), or the tenant to admit for
        st.integers(1, 40),  # prompt tokens / tokens to step
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, chunk=st.sampled_from([1, 8, 256]))
def test_one_pass_equals_the_recomputation_from_the_live_set(ops, chunk) -> None:
    adm = Admission(TENANTS, Limits(max_waiting=10**6), engine_view=lambda: VIEW)
    tickets: list[Ticket] = []
    observed: list[Ticket] = []
    dropped: list[Ticket] = []
    clock = [0.0]
    for op, i, n in ops:
        clock[0] += 0.01
        live = [t for t in tickets if id(t) in adm._live]
        if op == "admit" or not live:
            tenant = TENANTS[i % 2]
            klass = CLASS_ORDER[(i // 2) % 2]
            # Not through admit() (it may shed): the live set is what is tested here.
            t = Ticket(adm, tenant.name, klass, n + 4, adm.estimate(tenant.name, klass), n)
            adm._live[id(t)] = t
            tickets.append(t)
            continue
        t = live[i % len(live)]
        seq = t.seq
        if op == "bind":
            if seq is None:
                prompt = [1] * t.prompt_tokens
                t.bind(Sequence(seq_id=str(id(t)), tenant=t.tenant, prompt=prompt, max_tokens=4))
        elif seq is None:
            continue
        elif op == "start" and seq.status is SeqStatus.WAITING:
            seq.status = SeqStatus.RUNNING
            seq.num_computed = min(seq.num_tokens, seq.num_computed + n)
        elif op == "step" and seq.status is SeqStatus.RUNNING:
            seq.num_computed = seq.num_tokens
            seq.output.extend([2] * min(n % 4 + 1, seq.max_tokens - len(seq.output)))
            if seq.first_token_at is None and seq.output:
                seq.first_token_at = seq.arrival + clock[0]
                if t.estimate is not None:
                    observed.append(t)
        elif op == "preempt" and seq.status is SeqStatus.RUNNING:
            seq.status = SeqStatus.WAITING
            seq.num_computed = 0
        elif op in ("finish", "cancel") and seq.status is not SeqStatus.FINISHED:
            seq.cancelled = op == "cancel"
            seq.status = SeqStatus.FINISHED
        elif op == "drop" and seq.status is not SeqStatus.FINISHED and seq.first_token_at is None:
            seq.status, seq.finish_reason, seq.finished_at = SeqStatus.FINISHED, "queue_timeout", clock[0]
            if t.estimate is not None:
                dropped.append(t)
        elif op == "release":
            t.release()
        for klass in CLASS_ORDER:
            expected = _reference(adm, chunk, klass)
            assert adm.live_work(chunk, klass) == expected
    # Each request with a first token or dropped at its cap, and an estimate, went into the
    # calibration once.
    adm.estimate("a", "interactive")
    for t in tickets:
        assert t.observed == (t in observed or t in dropped)
    assert sum(c.n for c in adm.wait_model.calibration.values()) == len(observed)
    assert sum(c.dropped for c in adm.wait_model.calibration.values()) == len(dropped)
