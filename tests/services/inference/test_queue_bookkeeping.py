"""The waiting queue's bookkeeping that spares the engine a walk of the queue every step.

`FairQueue` keeps the tokens of work waiting per class and a lower bound on the earliest
deadline waiting; the engine reads the first for its backlog and skips its deadline walk while
the clock is before the second. Both must equal what a full walk of the queue would give, after
any mix of pushes, preemptions back to the front, admissions, cancels and clock moves: the
oracle here is that full walk (the code before this change), run beside the engine's own
`_expire_deadlines` and `_refresh` on the same sequences.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.inference.engine import Engine
from services.inference.fairness import FairQueue
from services.inference.model.kv_cache import KVCache
from services.inference.scheduler import SchedulerConfig
from services.inference.sequence import CLASSES, Sequence


def _work(seqs) -> dict[str, int]:
    out = dict.fromkeys(CLASSES, 0)
    for s in seqs:
        out[s.klass] += s.pending + s.max_tokens - len(s.output)
    return out


def _due(seqs, now: float) -> tuple[set[str], set[str]]:
    """The full walk: (past their deadline, past their queue deadline before any token)."""
    expired = {s.seq_id for s in seqs if s.deadline is not None and s.deadline < now}
    timed_out = {
        s.seq_id
        for s in seqs
        if s.seq_id not in expired
        and s.queue_deadline is not None
        and s.queue_deadline < now
        and s.first_token_at is None
    }
    return expired, timed_out


_OPS = st.lists(
    st.one_of(
        # a new request: prompt, output, class, deadline and queue deadline (seconds from now)
        st.tuples(
            st.just("add"),
            st.integers(1, 50),
            st.integers(1, 40),
            st.sampled_from(CLASSES),
            st.one_of(st.none(), st.floats(0.0, 5.0)),
            st.one_of(st.none(), st.floats(0.0, 5.0)),
        ),
        st.tuples(st.just("tick"), st.floats(0.0, 2.0)),  # the clock moves, the engine checks
        st.tuples(st.just("admit"), st.integers(0, 3)),  # a head leaves for the batch
        st.tuples(st.just("cancel"), st.integers(0, 30)),  # a waiting one is cancelled
        # a running one is preempted back to the front (after some output, or a first token)
        st.tuples(st.just("preempt"), st.integers(0, 30), st.integers(0, 5)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=_OPS)
def test_queue_sums_and_the_skipped_walk_equal_a_full_walk(tiny_model, ops) -> None:
    cfg = tiny_model.cfg
    cache = KVCache(n_layers=cfg.n_layers, n_heads=cfg.n_heads, head_dim=cfg.head_dim, num_tokens=256)
    eng = Engine(tiny_model, cache, SchedulerConfig(max_seqs=4))  # never started: its methods only
    now = [100.0]
    eng.clock = lambda: now[0]
    fair: FairQueue = eng.fair
    running: list[Sequence] = []  # admitted by this test (the engine's scheduler is not driven)
    ended: dict[str, str] = {}
    n = 0
    for op in ops:
        kind = op[0]
        if kind == "add":
            _, prompt, out, klass, deadline, queue_deadline = op
            seq = Sequence(f"s{n}", "ab"[n % 2], [5] * prompt, max_tokens=out, klass=klass)
            seq.deadline = None if deadline is None else now[0] + deadline
            seq.queue_deadline = None if queue_deadline is None else now[0] + queue_deadline
            seq.on_event = lambda ev, s=seq: ended.__setitem__(s.seq_id, ev.finish_reason)
            n += 1
            eng._live[seq.seq_id] = seq
            eng.scheduler.add(seq)
        elif kind == "tick":
            now[0] += op[1]
            want = _due(list(fair), now[0])
            eng._expire_deadlines()
            got_expired = {k for k, why in ended.items() if why == "deadline"}
            got_timed_out = {k for k, why in ended.items() if why == "queue_timeout"}
            assert want[0] <= got_expired and want[1] <= got_timed_out
            assert not _due(list(fair), now[0])[0] and not _due(list(fair), now[0])[1]
        elif kind == "admit":
            heads = list(fair.candidates())
            if heads:
                seq = heads[op[1] % len(heads)]
                fair.pop(seq)
                seq.num_computed = seq.num_tokens  # as if prefilled
                running.append(seq)
        elif kind == "cancel":
            waiting = list(fair)
            if waiting:
                eng._end(waiting[op[1] % len(waiting)], "cancelled")
        elif kind == "preempt" and running:
            seq = running.pop(op[1] % len(running))
            seq.output.extend([7] * min(op[2], seq.max_tokens - 1))
            if seq.output:
                seq.first_token_at = now[0]
            seq.num_computed = 0
            fair.push(seq, front=True)
        assert fair.work_by_class() == _work(fair)
        for s in fair:  # the bound is below every deadline that can still end a waiting one
            if s.deadline is not None:
                assert fair.earliest_deadline <= s.deadline
            if s.queue_deadline is not None and s.first_token_at is None:
                assert fair.earliest_deadline <= s.queue_deadline
    # The engine's backlog: the queue's total plus the running sequences, as a walk of both.
    eng.scheduler.running = running
    eng._refresh()
    assert eng._backlog == _work([*fair, *running])
    # Leave the process-wide gauges as an idle engine would.
    eng.scheduler.running = []
    for seq in list(fair):
        eng._end(seq, "cancelled")
    eng._refresh()
    assert eng._backlog == dict.fromkeys(CLASSES, 0)
