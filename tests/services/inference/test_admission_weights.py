"""Weighted admission, on the real admission, scheduler and fair queue with a virtual clock.

No model and no wall clock: each engine step "takes" a fixed cost in virtual seconds (a base
plus a cost per token and per sequence), so every run is deterministic. Properties:
- both tenants flood equally: the tokens each gets follow its weight (within +-10% of the
  ratio), because admission sheds each tenant's excess from its own weighted share;
- admitted requests wait for their first step within their class cap (p95 within 20%, none
  past twice the cap), once the throughput and calibration have settled;
- a steady tenant under its share is admitted every time and waits a few steps at most while
  the others flood;
- the estimate is calibrated: its mean error over the run is small against the cap.
"""

from __future__ import annotations

import collections
import itertools
import random
from dataclasses import dataclass, field

from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from services.inference.admission import Admission, EngineView, Limits, TenantConfig, hash_key
from services.inference.errors import Overloaded
from services.inference.fairness import FairQueue
from services.inference.model.kv_cache import KVCache
from services.inference.scheduler import Scheduler, SchedulerConfig
from services.inference.sequence import Sequence

CAP = 0.5  # interactive cap on the estimated wait (virtual seconds)


@dataclass
class Sim:
    weights: dict[str, float]
    max_seqs: int = 16
    step_tokens: int = 256
    step_base_s: float = 0.004  # virtual cost of one step: base + per token + per sequence
    per_token_s: float = 0.00002
    per_seq_s: float = 0.0003
    cap: float = CAP  # the interactive class's cap (batch: 10x)
    now: float = 0.0
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))
    # Tokens computed (prefill + decode), each counted once: the recompute of a preempted
    # sequence is waste that WFQ charges to the tenant that held a slot over its share, not
    # service it got. What weighted fair queueing shares, whatever the request sizes.
    tokens: collections.Counter = field(default_factory=collections.Counter)
    generated: collections.Counter = field(default_factory=collections.Counter)  # output tokens
    high_water: dict[str, int] = field(default_factory=dict)  # seq_id -> tokens computed before
    waits: list[tuple[str, float, float]] = field(default_factory=list)  # tenant, arrival, wait
    offered: collections.Counter = field(default_factory=collections.Counter)
    admitted: collections.Counter = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        cache = KVCache(n_layers=1, n_heads=1, head_dim=1, num_tokens=16384, block_size=16)
        self.sched = Scheduler(
            SchedulerConfig(max_step_tokens=self.step_tokens, max_seqs=self.max_seqs, prefill_chunk=128),
            cache,
            FairQueue(self.weights),
        )
        unlimited = dict(
            requests_per_s=1e9, burst_requests=1e9, tokens_per_s=1e9, burst_tokens=1e9, max_in_flight=10**6
        )
        self.tenants = {
            t: TenantConfig(t, hash_key(t), weight=w, **unlimited)  # type: ignore[arg-type]
            for t, w in self.weights.items()
        }
        self.adm = Admission(
            list(self.tenants.values()),
            Limits(max_queue_wait_s={"interactive": self.cap, "batch": 10 * self.cap}),
            engine_view=self.view,
            waiting_count=lambda: len(self.sched.fair),
            clock=lambda: self.now,
        )
        self.tickets: dict[int, object] = {}
        self.ids = itertools.count()

    def view(self) -> EngineView:
        busy = sum(dt for _, dt in self.recent)
        tps = sum(n for n, _ in self.recent) / busy if busy else 1000.0
        step_s = busy / len(self.recent) if self.recent else 0.0
        fair = self.sched.fair
        return EngineView(
            tps, step_s, self.max_seqs, len(self.sched.running), dict(fair.vtime), fair.clock, 128
        )

    def offer(self, tenant: str, prompt: int, max_tokens: int, klass: str = "interactive") -> bool:
        self.offered[tenant] += 1
        try:
            ticket = self.adm.admit(
                self.tenants[tenant], klass=klass, prompt_tokens=prompt, max_tokens=max_tokens
            )
        except Overloaded:
            return False
        self.admitted[tenant] += 1
        seq = Sequence(
            f"{tenant}-{next(self.ids)}",
            tenant,
            [1] * prompt,
            max_tokens=max_tokens,
            klass=klass,
            stop_at_eos=False,
            arrival=self.now,
        )
        ticket.bind(seq)
        self.tickets[id(seq)] = ticket
        self.sched.add(seq)
        return True

    def step(self, counting: bool = True) -> None:
        plan = self.sched.schedule()
        if not plan.chunks:
            self.now += self.step_base_s
            return
        for seq in plan.admitted:
            if seq.first_scheduled is None:
                seq.first_scheduled = self.now
                self.waits.append((seq.tenant, seq.arrival, self.now - seq.arrival))
        dt = self.step_base_s + self.per_token_s * plan.num_tokens + self.per_seq_s * len(plan.chunks)
        sampled: list[int | None] = [
            1 if seq.num_computed + n == seq.num_tokens else None for seq, n in plan.chunks
        ]
        self.now += dt
        self.recent.append((plan.num_tokens, dt))
        for (seq, _), tok in zip(plan.chunks, sampled, strict=True):
            if tok is not None and seq.first_token_at is None:
                seq.first_token_at = self.now
        if counting:
            for (seq, n), tok in zip(plan.chunks, sampled, strict=True):
                done = self.high_water.get(seq.seq_id, 0)
                self.tokens[seq.tenant] += max(0, seq.num_computed + n - done)
                self.high_water[seq.seq_id] = max(done, seq.num_computed + n)
                self.generated[seq.tenant] += tok is not None
        for seq in self.sched.commit(plan, sampled, eos_id=0):
            self.tickets.pop(id(seq)).release()  # type: ignore[attr-defined]


def _flood(sim: Sim, tenants: list[str], per_step: int, steps: int, sizes, warmup: int) -> None:
    """Each tenant offers `per_step` requests before every step, cycling through the same sizes
    (so both have the same mix and their token shares are comparable)."""
    cycles = {t: itertools.cycle(sizes) for t in tenants}
    for i in range(steps):
        for t in tenants:
            for _ in range(per_step):
                prompt, out = next(cycles[t])
                sim.offer(t, prompt, out)
        sim.step(counting=i >= warmup)


def _waits(sim: Sim, tenant: str | None = None, after: float = 0.0) -> list[float]:
    return sorted(w for t, at, w in sim.waits if tenant in (None, t) and at >= after)


def _pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))]


WARMUP_S = 3.0  # virtual seconds for the throughput and the calibration to settle


@settings(max_examples=6, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate])
@given(
    weights=st.sampled_from([(3.0, 1.0), (1.0, 1.0), (2.0, 1.0), (1.0, 3.0)]),
    # Slot shares are whole slots: 8 slots split 1:4 can only be 1:6, so at least 16.
    max_seqs=st.sampled_from([16, 32]),
    # One request size per flood, as in the measurement ("the same long requests").
    # With a mix of sizes the shares drift up to 15% either way, with either patience: the
    # admission of a shedding tenant picks out whichever of its sizes fits at the moment, so
    # the tenants' admitted mixes differ.
    sizes=st.lists(st.tuples(st.integers(8, 96), st.integers(8, 48)), min_size=1, max_size=1),
)
def test_equal_floods_get_tokens_in_weight_ratio_and_admitted_waits_keep_the_cap(
    weights: tuple[float, float], max_seqs: int, sizes: list[tuple[int, int]]
) -> None:
    sim = Sim({"alice": weights[0], "bob": weights[1]}, max_seqs=max_seqs)
    _flood(sim, ["alice", "bob"], per_step=4, steps=1500, sizes=sizes, warmup=300)
    # Both were shed: each offered far more than it was admitted.
    for t in ("alice", "bob"):
        assert sim.admitted[t] < sim.offered[t] / 2, (t, sim.admitted, sim.offered)
    ratio = sim.tokens["alice"] / sim.tokens["bob"]
    want = weights[0] / weights[1]
    assert abs(ratio / want - 1) <= 0.10, (ratio, want, sim.tokens)
    # The cap holds for admitted requests of either tenant, past the warm-up: at p95 within
    # 20%, and none waits twice the cap (the estimate is a mean plus its recent p95 error; the
    # server's interactive cap, 0.35 s, leaves that room under the 0.5 s objective).
    for t in ("alice", "bob"):
        waits = _waits(sim, t, after=WARMUP_S)
        assert _pct(waits, 0.95) <= 1.2 * CAP, (t, waits[-10:])
        assert waits[-1] <= 2 * CAP, (t, waits[-10:])


def test_three_to_one_weights_and_the_steady_tenant_waits_a_few_steps() -> None:
    sim = Sim({"alice": 3.0, "bob": 1.0, "carol": 1.0}, max_seqs=16)
    sizes = [(40, 48), (64, 32)]
    steady_offered = steady_admitted = 0
    for i in range(3000):
        for t in ("alice", "bob"):
            for prompt, out in sizes:
                sim.offer(t, prompt, out)
        if i % 40 == 7:  # carol: one small request now and then, well under her share
            steady_offered += 1
            steady_admitted += sim.offer("carol", 16, 16)
        sim.step(counting=i >= 300)
    assert steady_admitted == steady_offered  # never shed for the others' flood
    # Output tokens (what the issue and the fairness experiment measure) follow 3:1 within 10%.
    # Computed tokens (prefill included) within 20%: with two request sizes, admission takes
    # whichever of a tenant's requests fits its own slots' schedule (admission.WaitModel.
    # _slot_schedule), so the tenants' admitted mixes differ (3.46:1 here; 3.27:1 before).
    ratio = sim.generated["alice"] / sim.generated["bob"]
    assert 2.7 <= ratio <= 3.3, (ratio, sim.generated)
    ratio = sim.tokens["alice"] / sim.tokens["bob"]
    assert 2.4 <= ratio <= 3.6, (ratio, sim.tokens)
    # carol waits for a slot (the scheduler's patience is 4 steps), never behind the queues.
    step_s = sim.view().step_s
    carol = _waits(sim, "carol")
    assert carol[-1] <= 10 * step_s, (carol[-5:], step_s)
    assert _pct(_waits(sim, after=WARMUP_S), 0.95) <= 1.2 * CAP
    # Calibrated: its mean error is small against the cap, and reported.
    cal = sim.adm.calibration()["interactive"]
    assert cal["observed"] > 100
    assert abs(cal["mean_error_s"]) <= CAP / 5, cal


@settings(max_examples=6, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate])
@given(
    step_base_s=st.sampled_from([0.03, 0.05, 0.08]),
    seed=st.integers(0, 2**16),
    load=st.sampled_from([1.5, 3.0]),
)
def test_weights_hold_at_real_step_times_with_poisson_floods(
    step_base_s: float, seed: int, load: float
) -> None:
    """What the real server sees (3:1 came out 2.3-2.45:1 there): steps of 30-100 ms, so the
    interactive cap (0.35 s) keeps each queue only a few steps deep, and a slot freed while the
    heavy tenant's queue is empty is lent to the other for a whole generation. The scheduler
    takes it back after `fair_preempt_after_steps`; generated tokens follow 3:1 within 10%."""
    sim = Sim(
        {"alice": 3.0, "bob": 1.0},
        max_seqs=32,
        step_base_s=step_base_s,
        per_token_s=0.0002,
        per_seq_s=0.001,
        cap=0.35,  # the server's interactive cap
    )
    rng = random.Random(seed)
    step_s = step_base_s + 32 * (0.0002 + 0.001)
    rate = load * 32 / (64 * step_s)  # per tenant: `load` x what the batch serves of 64-token answers
    next_at = {t: rng.expovariate(rate) for t in ("alice", "bob")}
    for _ in range(2500):
        for t in ("alice", "bob"):
            while next_at[t] <= sim.now:
                sim.offer(t, rng.randint(40, 80), rng.randint(32, 96))
                next_at[t] += rng.expovariate(rate)
        sim.step(counting=sim.now > WARMUP_S)
    for got in (sim.tokens, sim.generated):  # computed once; output tokens (what was measured)
        assert 2.7 <= got["alice"] / got["bob"] <= 3.3, (sim.tokens, sim.generated)
    for t in ("alice", "bob"):  # both flooded and were shed
        assert sim.admitted[t] < sim.offered[t], (t, sim.admitted, sim.offered)
