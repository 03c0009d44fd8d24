"""Admission control: the front door every generation, embedding and scoring request passes.

Checks, in order, each with its own rejection reason (metric label):
  kill_switch / draining (503) -> size limits (400/413, naming the field) -> larger than the
  tenant's token burst, so never admissible (400 request_too_large) -> tenant in-flight
  cap (429) -> tenant request bucket (429) -> tenant token bucket (429) -> deadline: the
  estimated wait for this tenant (see WaitModel) would miss the request's deadline (503) ->
  overload: that estimate exceeds the class's max queue wait, or too many requests are
  waiting (503).
Every 429/503 carries Retry-After. Nothing is charged to a bucket unless the request is admitted.

The wait is estimated per tenant, from its own weighted share of capacity (WaitModel): a
tenant that floods sees its own estimate grow and is shed early, while a tenant with nothing
queued is admitted at once; under equal floods each tenant's admitted work follows its weight.
Since session 7 the estimate is a schedule of the tenant's own slots (WaitModel._slot_schedule:
its weighted share of the batch, each slot free when the sequence in it ends, its waiting
requests taking them in turn), so a tenant may queue only what its own share starts within
the class cap, and admission holds that to (1 - admission_headroom) x the cap (the rest for the
step time drifting over the wait): a request it cannot start in time is refused at once (503
overloaded, Retry-After how far its estimate is past that) instead of admitted and dropped at
the cap (the late drops of docs/bench/inference.md). Since session 8 two exceptions are
settled by what the batch holds, not the share: a batch request that finds rows free for all
that waits and for itself (an eighth to spare) while every other tenant is under its share is
admitted as starting next step (shed on its share, it left rows idle); and a tenant under its
share in a full batch is held to the cap on the scheduler's patience like any other.
Each admitted request's estimate is compared with the wait it then had (Ticket.bind), which
both calibrates the estimate and is exported (inference_wait_estimate_error_seconds); one
dropped at its class cap before a first token calibrates it as a wait of at least the cap
(WaitModel.observe_dropped), so the estimate learns from the requests it got most wrong too.

API keys are stored as SHA-256 digests and compared in constant time.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import hmac
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.inference import metrics as m
from services.inference.errors import InvalidRequest, Overloaded, RateLimited, Unauthenticated
from services.inference.sequence import SeqStatus

if TYPE_CHECKING:
    from services.inference.sequence import Sequence

CLASS_ORDER = ("interactive", "batch")  # priority order, as sequence.CLASSES


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TenantConfig:
    name: str
    key_sha256: str
    weight: float = 1.0
    requests_per_s: float = 50.0
    burst_requests: float = 100.0
    tokens_per_s: float = 50_000.0
    burst_tokens: float = 100_000.0
    max_in_flight: int = 256


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int = 768
    max_output_tokens: int = 256
    max_total_tokens: int = 1024  # model context and KV budget, whichever is smaller
    max_waiting: int = 2048
    max_queue_wait_s: dict[str, float] | None = None  # by class
    # See queue_timeout() and the note on the class caps: at 1.0 and 0.0 the cap is enforced.
    queue_timeout_factor: float = 1.0
    queue_timeout_min_s: float = 0.0
    # Admission admits a queued request only while its estimate is within (1 - headroom) x
    # its class cap: the rest is for the engine's step time drifting over the wait (the
    # estimate is exact at the step time measured; see WaitModel._slot_schedule).
    admission_headroom: float = 0.2

    def queue_wait_limit(self, klass: str) -> float:
        limits = self.max_queue_wait_s or DEFAULT_QUEUE_WAIT_S
        return limits.get(klass, DEFAULT_QUEUE_WAIT_S["interactive"])

    def queue_timeout(self, klass: str) -> float:
        """How long an admitted request may wait for its first step before it is dropped (503
        queue_timeout): max(queue_timeout_min_s, queue_timeout_factor x the class cap), by
        default the cap itself. The estimate that admitted it can be wrong (by as much as the
        cap: a tenant at its share, the prefill budget, interactive work overtaking batch);
        the cap is a promise the engine keeps, not only a figure admission aims at."""
        return max(self.queue_timeout_min_s, self.queue_timeout_factor * self.queue_wait_limit(klass))


# The class caps on the estimated wait for a first token. Interactive: its time-to-first-token
# objective (0.5 s, deploy/prometheus/rules/generation.yml) less a margin for the estimate's
# error and the first step itself; batch: its objective is a first token within 10 s, so 8 s
# (a batch request admitted to wait two minutes would miss it and hold its connection).
DEFAULT_QUEUE_WAIT_S = {"interactive": 0.35, "batch": 8.0}
# The caps are also enforced: an admitted request still waiting for its first step at its
# class cap is dropped by the engine with 503 queue_timeout + Retry-After (as Triton's queue
# policy with timeout_action REJECT), so it has its first step within the cap (its first token
# within the cap plus that step) or that answer, and the drops are counted per tenant and class
# (inference_queue_timeouts_total: the estimate's error, as a rate). Shedding on the estimate
# at arrival stays the main mechanism (early, cheap, most requests). The fairness experiment
# found admitted interactive waits up to 3.2 s (p99 0.36-3.2 s) against the 0.35 s cap, the
# estimate's p95 error being as large as the cap; drill 5 found batch requests admitted on a
# 1.7 s estimate waiting up to 60 s. The old bound, max(5 s, 2.5 x the cap), is
# --queue-timeout-factor 2.5 --queue-timeout-min 5 (Limits.queue_timeout_factor, _min_s).


class TokenBucket:
    """`rate` per second up to `capacity`; not thread-safe on its own (Admission locks)."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` is available (0 if now)."""
        self._refill(now)
        if amount <= self.level:
            return 0.0
        if amount > self.capacity:
            return float("inf")
        return (amount - self.level) / self.rate

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level -= amount


class Ticket:
    """Held while a request is in flight; release() exactly once (idempotent).

    bind(seq) ties it to the engine sequence it admitted: while that waits, its tokens count in
    its tenant's queue for the next estimates, and once it is scheduled its real wait is
    compared with the estimate made here (calibration)."""

    def __init__(
        self,
        admission: Admission,
        tenant: str,
        klass: str = "interactive",
        cost: int = 0,
        estimate: WaitEstimate | None = None,
        prompt_tokens: int = 0,
    ) -> None:
        self._admission = admission
        self.tenant = tenant
        self.klass = klass
        self.cost = cost  # prompt + max_tokens
        self.prompt_tokens = prompt_tokens
        self.estimate: WaitEstimate | None = estimate
        self.seq: Sequence | None = None
        self.observed = False  # its real wait went into the calibration
        self._released = False

    def bind(self, seq: Sequence) -> None:
        self.seq = seq

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release(self)


@dataclass(frozen=True)
class EngineView:
    """What the wait estimate reads from the engine (values may be one step old)."""

    tokens_per_s: float  # tokens computed per second of engine steps, recently
    step_s: float = 0.0  # recent mean duration of one step
    max_seqs: int = 0  # the running batch's slots (0: unknown)
    running: int = 0  # sequences in it now
    # The fair queue's virtual times (tokens served / weight, fairness.py) and the virtual time
    # of its last admission, where an idle tenant restarts: a tenant served ahead of its share
    # waits for the others to catch up before its next request runs.
    vtime: dict[str, float] = field(default_factory=dict)
    vclock: float = 0.0
    prefill_chunk: int = 256  # prompt tokens one sequence prefills per step


@dataclass(frozen=True)
class WaitEstimate:
    seconds: float  # the calibrated estimate admission compares with the caps
    raw_s: float  # slot-steps ahead x step time / running sequences, before calibration
    floor_s: float  # the part that does not scale with the queue (one step, a slot to free)
    ahead_steps: float  # slot-steps of work ahead of it
    margin_s: float = 0.0  # how far real waits recently ran past their estimate (p95, >= 0)
    # False when it starts in the next step: a row is free for it (its tenant under its share
    # of the batch, or rows to spare while the others are under theirs). Admission sheds only
    # queued requests. A tenant under its share in a full batch waits the scheduler's patience
    # before it takes a lent slot back: queued, so shed where that passes the cap (a slow box).
    queued: bool = True
    own_waiting: int = 0  # this tenant's requests of this class not yet started
    own_running: int = 0  # this tenant's running sequences
    share_slots: int = 0  # its weighted share of the batch's slots (0: unknown)


@dataclass
class _Calibration:
    """Estimated against real queue waits of one class's admitted requests."""

    factors: dict[str, float] = field(default_factory=dict)  # by tenant
    recent: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=200))
    n: int = 0
    sum_err: float = 0.0
    sum_abs_err: float = 0.0
    sum_est: float = 0.0
    sum_actual: float = 0.0
    errors: list[float] = field(default_factory=list)  # the last few, for quantiles
    actuals: list[float] = field(default_factory=list)  # the same requests' real waits
    margin: float | None = None  # WaitModel._margin of `recent`; None: to compute again
    # Requests dropped at the class cap before a first token (503 queue_timeout): censored
    # observations, each a wait of at least what it had waited (WaitModel.observe_dropped).
    dropped: int = 0

    def summary(self) -> dict[str, Any]:
        errs = sorted(self.errors)

        def q(p: float) -> float:
            return round(errs[min(len(errs) - 1, int(p * len(errs)))], 4) if errs else 0.0

        n = max(self.n, 1)
        waits = sorted(self.actuals)
        return {
            "observed": self.n,
            "dropped": self.dropped,
            "factor": {t: round(f, 3) for t, f in sorted(self.factors.items())},
            "mean_estimate_s": round(self.sum_est / n, 4),
            "mean_actual_s": round(self.sum_actual / n, 4),
            "mean_error_s": round(self.sum_err / n, 4),
            "mean_abs_error_s": round(self.sum_abs_err / n, 4),
            "error_p05_s": q(0.05),
            "error_p50_s": q(0.5),
            "error_p95_s": q(0.95),
            # The real waits themselves (arrival to first token), against the class's cap.
            "wait_p95_s": round(waits[min(len(waits) - 1, int(0.95 * len(waits)))], 4) if waits else 0.0,
            "wait_max_s": round(waits[-1], 4) if waits else 0.0,
        }


_DECISION_FIELDS = (
    "seconds",
    "raw_s",
    "floor_s",
    "margin_s",
    "ahead_steps",
    "own_waiting",
    "own_running",
    "share_slots",
)


@dataclass
class _Decisions:
    """Admission's answers to one tenant at one class, and the mean estimate behind each kind of
    answer (admin state: why a tenant was shed, not only how often)."""

    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    sums: dict[str, dict[str, float]] = field(default_factory=dict)  # outcome -> field -> sum
    estimated: collections.Counter[str] = field(default_factory=collections.Counter)

    def record(self, outcome: str, est: WaitEstimate | None) -> None:
        self.counts[outcome] += 1
        if est is None:
            return
        self.estimated[outcome] += 1
        sums = self.sums.setdefault(outcome, dict.fromkeys(_DECISION_FIELDS, 0.0))
        for name in _DECISION_FIELDS:
            sums[name] += float(getattr(est, name))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(sorted(self.counts.items()))
        for outcome, sums in sorted(self.sums.items()):
            n = max(self.estimated[outcome], 1)
            out[f"{outcome}_mean"] = {k: round(v / n, 4) for k, v in sums.items()}
        return out


class WaitModel:
    """How long a new request of tenant t, class k, waits for its first token (queue, slot, first step).

    Work ahead of it: every waiting token of a higher class, then, within its class, the
    tenants share the engine in proportion to their weights (weighted fair queueing; the fluid
    model is GPS). t's request runs once t's virtual time (tokens served / weight) has passed
    its own waiting tokens b_t: F_t = V_t + b_t / w_t. Until then another tenant u, at V_u and
    with work waiting (so taken to keep flooding), is served w_u * (F_t - V_u) tokens, so

        ahead = higher + b_t + sum_u max(0, w_u * (F_t - V_u)).

    Work is counted in slot-steps (one per output token, one per prefill chunk), since the
    batch's slots are the bottleneck. With the batch size and a step time known (the server,
    always), the wait is the tenant's own slot schedule (_slot_schedule): steps until one of
    its share of the slots is free for it after its own queue, x the step time, plus the
    waiting work of a higher class over the batch; `ahead` is kept for the report. Without
    them (no step measured yet): raw = ahead / steps per token / tokens per second.

    A tenant with nothing waiting sees only the floor: one step, plus the wait for a slot (at
    its weighted share of the batch, until one of its own sequences finishes; short of it in
    a full batch, the scheduler's few steps of patience before it preempts). A flooding
    tenant's own backlog raises only its own estimate; a low-weight tenant's estimate grows
    faster, as its share of the engine is smaller.

    The estimate is `floor + factor * raw`; `factor` (per tenant and class) is learnt from the
    real waits of admitted requests, since work ahead and step time are only proxies (the
    scheduler's slot shares and its rounding treat tenants unevenly: one factor per class ran
    2x low for a low-weight tenant's mix and high for the others).
    """

    ALPHA = 0.05  # weight of one observation in the factor's moving average
    # Never below 1: the slot schedule is exact at the step time measured, so a factor under
    # 1 (learnt from requests that started early: a slot lent, a sequence ending sooner than
    # its max_tokens) only made it admit more than the cap allows (batch late drops 2.9-6.8%
    # in simulation at 0.75, 0.1-0.2% at 1.0).
    FACTOR_RANGE = (1.0, 8.0)
    KEEP_ERRORS = 512
    # Admission holds the estimate plus the p95 of how far the class's last 200 real waits ran
    # past their estimates: the estimate is a mean, and the cap is a promise to (nearly) all.
    # Per class, not per tenant: a tenant shed for its margin would never be admitted again to
    # bring it down. Admission also keeps it under half the cap.
    MARGIN_QUANTILE = 0.95
    MIN_FOR_MARGIN = 20
    # Steps a request under its tenant's share waits for a slot in a full batch: the scheduler's
    # patience before it takes one back from a tenant over its share (fair_preempt_after_steps),
    # plus the step that runs it.
    SLOT_STEPS = 2

    def __init__(self, weights: dict[str, float]) -> None:
        self.weights = weights
        self.calibration = {k: _Calibration() for k in CLASS_ORDER}

    def weight(self, tenant: str) -> float:
        return max(self.weights.get(tenant, 1.0), 1e-9)

    def estimate(
        self,
        tenant: str,
        klass: str,
        waiting: dict[tuple[str, str], Work],
        view: EngineView,
        running: dict[str, list[int]] | None = None,
        serving: int | None = None,
    ) -> WaitEstimate:
        """`waiting`: work not started, by (tenant, class); `running`: slot-steps left of each
        running sequence, by tenant; `serving`: running sequences whose slots this class's
        work can take as they finish (all of them for the top class; for batch only batch
        ones, as interactive work keeps its slots while it keeps arriving). None: all."""
        rank = CLASS_ORDER.index(klass) if klass in CLASS_ORDER else 0
        all_tokens = sum(w.tokens for w in waiting.values())
        # Virtual time counts tokens; the engine's bottleneck is slots (a decode computes one
        # token per sequence per step, a prefill chunk many): convert at the waiting mix's rate.
        steps_per_token = sum(w.steps for w in waiting.values()) / all_tokens if all_tokens else 1.0
        higher = sum(w.steps for (_, k), w in waiting.items() if k in CLASS_ORDER[:rank])
        mine = waiting.get((tenant, klass), Work())
        running = running or {}
        cal = self._cal(klass)
        share = self._share(tenant, waiting, view, running, klass)
        own_running = len(running.get(tenant, []))
        # Running sequences the engine counts but no ticket names (one turn apart) are taken
        # as this tenant's: a slot it cannot prove another tenant holds is not one it can take.
        unknown = max(0, view.running - sum(len(r) for r in running.values()))
        own_waiting = sum(w.seqs for (u, _), w in waiting.items() if u == tenant)
        everyone = view.running + sum(w.seqs for w in waiting.values())
        ahead = 0.0
        margin = self._margin(cal)
        if share and not higher and own_running + unknown + own_waiting < share:
            # Under its weighted share of the batch's slots, counting its own requests that
            # wait: this one gets a slot as soon as one frees, or takes back one lent to a
            # tenant over its share after the scheduler's patience (fair_preempt_after_steps).
            # The work queued ahead does not delay it (its own waiting requests start side by
            # side with it, the others' wait behind it), so it is not shed for them: that would
            # not shorten its wait. Counted as queued work, a steady tenant's requests still in
            # flight to the engine process (a step or two) made it look backlogged, and with
            # equal weights it was shed while it held 23 of its 32 slots (inference_rejections
            # by tenant; the per-tenant decisions in /v1/admin/state).
            # In a full batch it waits for that patience, and that is its estimate like any
            # other's: on a box whose steps pass a third of the class cap, admitting it only
            # moved its 503 to the cap (queue_timeout) or its first token past it (session 8;
            # before, it was never shed). Without the class's margin: that is the error of
            # queue estimates (with it, at 50 ms steps the margin's cap/2 alone shed a steady
            # tenant under its share, the very thing this branch is for).
            full = everyone >= view.max_seqs
            raw, floor, queued = 0.0, view.step_s * (1 + (self.SLOT_STEPS if full else 0)), full
            margin = 0.0
        elif (
            rank > 0
            and view.max_seqs
            and view.step_s > 0
            and self.class_slots(klass, view) - everyone >= max(1, self.class_slots(klass, view) // 8)
            and self._others_under_share(tenant, waiting, view, running)
        ):
            # Rows of the batch its class may fill are free for every request waiting and for
            # this one, an eighth of them to spare, and every other tenant is under its own
            # share: it starts once the prompts ahead of it are prefilled, whatever its share
            # (the scheduler is work-conserving: a free row goes to whoever waits). Counted on
            # its share alone, bob's batch requests were shed at 1.0-1.5x in windows whose
            # batch ran 19 and 58 rows of 112 (bench_inference, session 8): alice's few
            # interactive streams halved bob's share, and his running sequences over it were
            # counted as taken back. Not while another tenant holds its share (its next
            # requests would take the free rows first, and this one would wait for its own
            # share's slots), nor with less to spare or for the interactive class, whose cap is
            # a few steps: with one row to spare, a flood of the other tenant's took it and the
            # request admitted on it waited 2.4 s for a 0.35 s cap (test_admission_slots).
            # The prompts ahead are prefilled at least a chunk a step (a step's token budget
            # goes to the running decodes first), so on a starved engine a long list of them is
            # still held to the cap.
            fill = -(-sum(w.prompt for w in waiting.values()) // max(view.prefill_chunk, 1))
            raw, floor, queued = fill * view.step_s, view.step_s, fill > 0
        else:
            backlogged = any(w.tokens for (u, _), w in waiting.items() if u == tenant)
            v_start = view.vtime.get(tenant, 0.0)
            if not backlogged:  # an idle tenant restarts at the queue's clock (no credit saved up)
                v_start = max(v_start, view.vclock)
            finish = v_start + mine.tokens / self.weight(tenant)
            # Another tenant with work waiting is taken to keep it up (a flood goes on
            # arriving), so its share is not capped by what it has queued now: capped, a
            # low-weight tenant's estimate ran 2x low under a high-weight flood.
            share_of_others = sum(
                steps_per_token * max(0.0, self.weight(u) * (finish - view.vtime.get(u, 0.0)))
                for (u, k), w in waiting.items()
                if k == klass and u != tenant and w.tokens
            )
            ahead = higher + mine.steps + share_of_others  # slot-steps of work before it starts
            raw, floor, queued = self._queued_wait(
                tenant, rank, waiting, view, running, serving, share, higher, ahead, steps_per_token
            )
        factor = cal.factors.get(tenant, 1.0)
        return WaitEstimate(
            floor + factor * raw,
            raw,
            floor,
            ahead,
            margin,
            queued,
            own_waiting=mine.seqs,
            own_running=own_running,
            share_slots=share,
        )

    def _queued_wait(
        self,
        tenant: str,
        rank: int,
        waiting: dict[tuple[str, str], Work],
        view: EngineView,
        running: dict[str, list[int]],
        serving: int | None,
        share: int,
        higher: int,
        ahead: float,
        steps_per_token: float,
    ) -> tuple[float, float, bool]:
        """(raw, floor, queued) of a request with work ahead of it or no row free for it."""
        if view.max_seqs and view.step_s > 0:
            # Its own slots, scheduled: when one is free for it after its own queue has started
            # (WaitModel._slot_schedule), in steps; work of a higher class first, shared by the
            # batch as before.
            start = self._slot_schedule(tenant, rank, waiting, view, running, share)
            raw = start * view.step_s
            if higher:
                raw += higher * view.step_s / max(1, view.running if serving is None else serving)
            return raw, view.step_s, start > 0 or higher > 0
        if view.max_seqs and view.running + sum(w.seqs for w in waiting.values()) < view.max_seqs:
            # A slot is free for every request waiting and for this one: they all start in the
            # next step, side by side, not one after another's work. (The disconnect drill's
            # burst of 64 streams at an idle engine was shed as if in single file.)
            raw = 0.0
        elif view.step_s > 0:
            # The running batch does one slot-step per sequence per step; while it is not full
            # (just after a lull, or short of KV) that is fewer than max_seqs.
            raw = ahead * view.step_s / max(1, view.running if serving is None else serving)
        else:  # no step measured yet: tokens over the prior throughput
            raw = ahead / steps_per_token / max(view.tokens_per_s, 1e-6)
        slot_wait, at_share = self._slot_wait(tenant, waiting, view, running)
        return raw, view.step_s + slot_wait, ahead > 0 or at_share

    def _share(
        self,
        tenant: str,
        waiting: dict[tuple[str, str], Work],
        view: EngineView,
        running: dict[str, list[int]],
        klass: str = CLASS_ORDER[0],
    ) -> int:
        """Its weighted share of the slots `klass` may fill among tenants running or waiting,
        as the scheduler counts it (0: the batch size is unknown)."""
        if not view.max_seqs:
            return 0
        active = set(running) | {u for (u, _), w in waiting.items() if w.tokens} | {tenant}
        slots = self.class_slots(klass, view)
        return max(1, int(slots * self.weight(tenant) / sum(self.weight(u) for u in active)))

    def _others_under_share(
        self,
        tenant: str,
        waiting: dict[tuple[str, str], Work],
        view: EngineView,
        running: dict[str, list[int]],
    ) -> bool:
        """Whether every other tenant running or waiting holds fewer slots (running + waiting,
        any class) than its weighted share of the batch."""
        held: dict[str, int] = {u: len(r) for u, r in running.items() if u != tenant}
        for (u, _), w in waiting.items():
            if u != tenant and w.seqs:
                held[u] = held.get(u, 0) + w.seqs
        return all(n < self._share(u, waiting, view, running) for u, n in held.items())

    @staticmethod
    def class_slots(klass: str, view: EngineView) -> int:
        """Slots `klass` may fill: the batch class leaves the scheduler's interactive reserve
        (max_seqs // 8, SchedulerConfig's default) free while interactive traffic is about,
        which the view does not say, so it is taken as always."""
        return view.max_seqs - view.max_seqs // 8 if klass in CLASS_ORDER[1:] else view.max_seqs

    def _slot_schedule(
        self,
        tenant: str,
        rank: int,
        waiting: dict[tuple[str, str], Work],
        view: EngineView,
        running: dict[str, list[int]],
        share: int,
    ) -> int:
        """Steps until a new request of `tenant` gets a slot in the batch: its own queue (its
        waiting requests of this class and above, in admission order) list-scheduled on its
        own slots. While another tenant waits, a tenant has its weighted share of the slots
        (the scheduler skips it at its share, and takes back a slot lent over it after
        fair_preempt_after_steps), so each of its slots frees when the sequence in it ends:
        after its steps left (exact for a request that ignores end-of-sequence, at most for
        one that may stop early). Each waiting request takes the first slot to free and holds
        it for its own slot-steps; the new one takes the next. A slot of its share it does not
        hold is free now if the batch has one no other tenant's waiting request takes first,
        else after SLOT_STEPS (the scheduler's patience, then a preemption). Sequences it runs
        over its share are the youngest, taken back (recomputed) before its queue; sequences
        the engine runs that no ticket names are taken as its own, of average length.

        Deterministic and independent of the other tenants' backlogs: a tenant may queue only
        as much work as its own share of the batch starts within its cap, whatever the others
        do; the wait of a request admitted on it does not grow with later arrivals (any
        tenant's later requests queue behind it or in their own slots). One pass over its own
        running and waiting requests, a heap of its slots: O((share + waiting) log share)."""
        mine = running.get(tenant, [])
        others_waiting = sum(w.seqs for (u, _), w in waiting.items() if u != tenant and w.tokens)
        jobs: list[int] = []
        for klass in CLASS_ORDER[: rank + 1]:
            w = waiting.get((tenant, klass))
            if w is None or not w.seqs:
                continue
            jobs.extend(w.jobs if w.jobs else [-(-w.steps // w.seqs)] * w.seqs)
        if len(mine) > share:
            # Over its share (slots lent while nobody else waited): the youngest are taken back
            # as soon as another tenant waits, and wait again at the front of its queue.
            jobs = [left + 1 for left in mine[share:]] + jobs
            mine = mine[:share]
        free = max(0, self.class_slots(CLASS_ORDER[rank], view) - view.running - others_waiting)
        pads = share - len(mine)
        heap = list(mine)
        if pads > 0:
            now = min(free, pads)
            # Running sequences the engine counts but no ticket names (one turn apart) are taken
            # as its own, at evenly spread points of an average sequence (its waiting requests',
            # else twice the known running sequences' steps left).
            untracked = view.running - sum(len(lefts) for lefts in running.values())
            unknown = min(pads - now, max(0, untracked))
            if unknown:
                if jobs:
                    length = sum(jobs) / len(jobs)
                else:
                    lefts = [left for lefts in running.values() for left in lefts]
                    length = 2 * sum(lefts) / len(lefts) if lefts else self.SLOT_STEPS
                heap += [math.ceil(length * i / (unknown + 1)) for i in range(1, unknown + 1)]
            heap += [0] * now + [self.SLOT_STEPS] * (pads - now - unknown)
        if not heap:
            heap = [0]
        heapq.heapify(heap)
        for job in jobs:
            heapq.heapreplace(heap, heap[0] + job)
        return heap[0]

    def _margin(self, cal: _Calibration) -> float:
        """The margin, sorted again only when an observation came in since (a sort of 200 per
        estimate, so per request, under overload)."""
        if cal.margin is None:
            errs = sorted(cal.recent)
            if len(errs) < self.MIN_FOR_MARGIN:
                cal.margin = 0.0
            else:
                cal.margin = max(0.0, errs[int(self.MARGIN_QUANTILE * (len(errs) - 1))])
        return cal.margin

    def _slot_wait(
        self,
        tenant: str,
        waiting: dict[tuple[str, str], Work],
        view: EngineView,
        running: dict[str, list[int]],
    ) -> tuple[float, bool]:
        """Time until the batch has a slot for this tenant, and whether it is at its share.

        At its share of the slots (weighted, among tenants running or waiting, as the scheduler
        counts it) while others wait or the batch is full, one of its own sequences must finish
        first; short of its share in a full batch, the scheduler preempts for it after a few
        steps."""
        if not view.max_seqs:
            return 0.0, False
        share = self._share(tenant, waiting, view, running)
        mine = running.get(tenant, [])
        others_waiting = any(w.tokens for (u, _), w in waiting.items() if u != tenant)
        full = view.running >= view.max_seqs
        if mine and len(mine) >= share and (others_waiting or full):
            return min(mine) * view.step_s, True
        if full:
            return self.SLOT_STEPS * view.step_s, False
        return 0.0, False

    def _cal(self, klass: str) -> _Calibration:
        return self.calibration.get(klass) or self.calibration[CLASS_ORDER[0]]

    def observe(self, tenant: str, klass: str, est: WaitEstimate, actual: float) -> None:
        """One admitted request's real wait for its first token (arrival to the end of the
        step that made it: what the class's objective is on) against its estimate."""
        cal = self._cal(klass)
        err = actual - est.seconds
        cal.n += 1
        cal.sum_err += err
        cal.sum_abs_err += abs(err)
        cal.sum_est += est.seconds
        cal.sum_actual += actual
        cal.errors.append(err)
        cal.actuals.append(actual)
        cal.recent.append(err)
        cal.margin = None
        if len(cal.errors) > self.KEEP_ERRORS:
            del cal.errors[: len(cal.errors) - self.KEEP_ERRORS]
            del cal.actuals[: len(cal.actuals) - self.KEEP_ERRORS]
        m.WAIT_ESTIMATE_ERROR.labels(klass).observe(err)
        # Learn only from requests that really queued: for the rest the floor is all there is.
        if est.raw_s >= max(est.floor_s, 0.005):
            lo, hi = self.FACTOR_RANGE
            ratio = min(hi, max(actual - est.floor_s, 0.0) / est.raw_s)
            factor = cal.factors.get(tenant, 1.0)
            factor = cal.factors[tenant] = min(hi, max(lo, factor + self.ALPHA * (ratio - factor)))
            m.WAIT_ESTIMATE_FACTOR.labels(tenant, klass).set(factor)

    def observe_dropped(self, tenant: str, klass: str, est: WaitEstimate, waited: float) -> None:
        """One admitted request dropped at its class cap before its first token (503
        queue_timeout): its real wait is not known, only that it was at least `waited` (a
        censored observation). Left out, the calibration learnt only from the requests the
        estimate got right enough to start in time, and ran low on exactly those it got
        wrong. So the lower bound of its error goes into the class's recent errors (the
        margin's p95: every drop is one of the largest errors, at least the cap less its
        estimate), and the factor moves towards the lower bound of its ratio when that is
        above the factor (below it, the drop says nothing the factor does not already hold).
        Not in the reported error and wait figures, which are of known waits."""
        cal = self._cal(klass)
        cal.dropped += 1
        cal.recent.append(waited - est.seconds)
        cal.margin = None
        if est.raw_s >= max(est.floor_s, 0.005):
            lo, hi = self.FACTOR_RANGE
            # One drop moves it by ALPHA x the range at most (a request admitted on a few
            # milliseconds' estimate and dropped after the cap alone took it to the top).
            ratio = min(hi, max(waited - est.floor_s, 0.0) / est.raw_s)
            factor = cal.factors.get(tenant, 1.0)
            if ratio > factor:
                factor = cal.factors[tenant] = min(hi, max(lo, factor + self.ALPHA * (ratio - factor)))
                m.WAIT_ESTIMATE_FACTOR.labels(tenant, klass).set(factor)


def running_left(tickets: Iterable[Ticket]) -> dict[str, list[int]]:
    """Output tokens (so steps) each running sequence has left at most, by tenant."""
    out: dict[str, list[int]] = {}
    for t in tickets:
        seq = t.seq
        if seq is not None and seq.status is SeqStatus.RUNNING:
            out.setdefault(t.tenant, []).append(max(1, seq.max_tokens - len(seq.output)))
    return out


@dataclass(frozen=True)
class Work:
    """Work of requests waiting to start: tokens to compute, and slot-steps (one per output
    token, one per prefill chunk) they will hold the batch for."""

    tokens: int = 0
    steps: int = 0
    seqs: int = 0  # requests
    # Each request's slot-steps, in admission order (what WaitModel's slot schedule queues);
    # empty: `seqs` requests of equal size. Not compared: the totals are the work.
    jobs: tuple[int, ...] = field(default=(), compare=False)
    # Their prompt tokens still to prefill: the free-row estimate's part (0: not known).
    prompt: int = field(default=0, compare=False)


def waiting_work(tickets: Iterable[Ticket], prefill_chunk: int) -> dict[tuple[str, str], Work]:
    """Work of admitted requests not yet running, by (tenant, class), from the live set."""
    chunk = max(prefill_chunk, 1)
    tokens: dict[tuple[str, str], int] = {}
    steps: dict[tuple[str, str], int] = {}
    seqs: dict[tuple[str, str], int] = {}
    prompts: dict[tuple[str, str], int] = {}
    for t in tickets:
        seq = t.seq
        if seq is None:  # admitted, not yet handed to the engine
            prompt, out = t.prompt_tokens, t.cost - t.prompt_tokens
        elif seq.status is SeqStatus.WAITING:
            prompt, out = seq.pending, seq.max_tokens - len(seq.output)
        else:
            continue
        key = (t.tenant, t.klass)
        tokens[key] = tokens.get(key, 0) + prompt + out
        steps[key] = steps.get(key, 0) + out + -(-prompt // chunk)
        seqs[key] = seqs.get(key, 0) + 1
        prompts[key] = prompts.get(key, 0) + prompt
    return {k: Work(tokens[k], steps[k], seqs[k], prompt=prompts[k]) for k in tokens}


class Admission:
    def __init__(
        self,
        tenants: list[TenantConfig],
        limits: Limits,
        *,
        engine_view: Callable[[], EngineView] = lambda: EngineView(tokens_per_s=1000.0),
        waiting_count: Callable[[], int] = lambda: 0,
        admin_key_sha256: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.tenants = {t.name: t for t in tenants}
        self.wait_model = WaitModel({t.name: t.weight for t in tenants})
        self.engine_view = engine_view  # tests may pin it (a fixed step time)
        self._live: dict[int, Ticket] = {}  # id -> ticket of every admitted, queued request
        self._by_digest = [(t.key_sha256.lower(), t) for t in tenants]
        self._admin = admin_key_sha256
        self._clock = clock
        self._waiting_count = waiting_count
        self._lock = threading.Lock()
        now = clock()
        self._req = {t.name: TokenBucket(t.requests_per_s, t.burst_requests, now) for t in tenants}
        self._tok = {t.name: TokenBucket(t.tokens_per_s, t.burst_tokens, now) for t in tenants}
        self._in_flight = dict.fromkeys(self.tenants, 0)
        self._decisions: dict[tuple[str, str], _Decisions] = {}
        self.draining = False
        self.killed = False

    # -- identity ----------------------------------------------------------------------------
    def authenticate(self, key: str | None) -> TenantConfig:
        if not key:
            raise Unauthenticated("missing API key (Authorization: Bearer <key>)")
        digest = hash_key(key)
        found = None
        for stored, tenant in self._by_digest:  # no early exit: time does not depend on position
            if hmac.compare_digest(stored, digest):
                found = tenant
        if found is None:
            m.REJECTIONS.labels("unknown", "unauthenticated").inc()
            raise Unauthenticated("unknown API key")
        return found

    def is_admin(self, key: str | None) -> bool:
        if not key or self._admin is None:
            return False
        return hmac.compare_digest(self._admin, hash_key(key))

    def in_flight(self, tenant: str) -> int:
        return self._in_flight.get(tenant, 0)

    # -- the checks ----------------------------------------------------------------------------
    def check_sizes(self, prompt_tokens: int, max_tokens: int) -> None:
        lim = self.limits
        if prompt_tokens > lim.max_prompt_tokens:
            raise InvalidRequest(
                f"prompt is {prompt_tokens} tokens, the limit is {lim.max_prompt_tokens}",
                "body.prompt",
                status=413,
                reason="prompt_too_long",
            )
        if max_tokens > lim.max_output_tokens:
            raise InvalidRequest(
                f"max_tokens {max_tokens} exceeds the limit {lim.max_output_tokens}",
                "body.max_tokens",
                reason="max_tokens_too_large",
            )
        if prompt_tokens + max_tokens > lim.max_total_tokens:
            raise InvalidRequest(
                f"prompt ({prompt_tokens}) + max_tokens ({max_tokens}) exceeds {lim.max_total_tokens} tokens",
                "body.max_tokens",
                reason="context_too_long",
            )

    def admit(
        self,
        tenant: TenantConfig,
        *,
        klass: str = "interactive",
        prompt_tokens: int = 0,
        max_tokens: int = 0,
        deadline_s: float | None = None,
        queued: bool = True,
        sized: bool = True,
    ) -> Ticket:
        """Admit or raise; `queued` requests (generation) are checked against the queue;
        `sized=False` (embeddings: their own limits) skips the generation size limits."""
        try:
            ticket = self._admit(tenant, klass, prompt_tokens, max_tokens, deadline_s, queued, sized)
        except (RateLimited, Overloaded, InvalidRequest) as exc:
            m.REJECTIONS.labels(tenant.name, exc.reason).inc()
            raise
        m.ADMISSIONS.labels(tenant.name, klass).inc()
        return ticket

    def _admit(
        self,
        tenant: TenantConfig,
        klass: str,
        prompt_tokens: int,
        max_tokens: int,
        deadline_s: float | None,
        queued: bool,
        sized: bool = True,
    ) -> Ticket:
        if self.killed:
            raise Overloaded("the kill switch is on: the service takes no work", "kill_switch", 60)
        if self.draining:
            raise Overloaded("the service is draining for a deploy", "draining", 5)
        if sized:
            self.check_sizes(prompt_tokens, max_tokens)
        cost = prompt_tokens + max_tokens
        if cost > tenant.burst_tokens:
            # Bigger than the tenant's whole token bucket: no wait would ever admit it, so a 429
            # with Retry-After would have the client retry forever. Say so at once.
            raise InvalidRequest(
                f"this request needs {cost} tokens (prompt {prompt_tokens} + max_tokens {max_tokens}),"
                f" more than tenant {tenant.name}'s token burst of {tenant.burst_tokens:g}:"
                " it can never be admitted; lower max_tokens or shorten the prompt",
                "body.max_tokens",
                reason="request_too_large",
            )
        with self._lock:
            decisions = self._decisions.setdefault((tenant.name, klass), _Decisions())
            try:
                ticket = self._admit_locked(tenant, klass, prompt_tokens, cost, deadline_s, queued, decisions)
            except RateLimited as exc:
                decisions.record(exc.reason, None)
                raise
            decisions.record("admitted", ticket.estimate)
        return ticket

    def _admit_locked(
        self,
        tenant: TenantConfig,
        klass: str,
        prompt_tokens: int,
        cost: int,
        deadline_s: float | None,
        queued: bool,
        decisions: _Decisions,
    ) -> Ticket:
        now = self._clock()
        if self._in_flight[tenant.name] >= tenant.max_in_flight:
            raise RateLimited(
                f"tenant {tenant.name} has {tenant.max_in_flight} requests in flight (its limit)",
                "in_flight",
                1,
            )
        wait = self._req[tenant.name].wait_for(1, now)
        if wait > 0:
            raise RateLimited(
                f"tenant {tenant.name} is over {tenant.requests_per_s} requests/s", "rate_requests", wait
            )
        wait = self._tok[tenant.name].wait_for(cost, now)
        if wait > 0:
            raise RateLimited(
                f"tenant {tenant.name} is over {tenant.tokens_per_s} tokens/s",
                "rate_tokens",
                wait if wait != float("inf") else 60,
            )
        estimate = None
        if queued:
            estimate = self.estimate(tenant.name, klass)
            cap = self.limits.queue_wait_limit(klass)
            est = estimate.seconds + min(estimate.margin_s, cap / 2)
            shed = None
            if deadline_s is not None and est > deadline_s:
                shed = Overloaded(
                    f"estimated queue wait {est:.2f}s exceeds the request deadline {deadline_s:.2f}s",
                    "deadline",
                    est - deadline_s,
                )
            elif est > (aim := cap * (1.0 - self.limits.admission_headroom)) and estimate.queued:
                shed = Overloaded(
                    f"estimated queue wait {est:.2f}s for tenant {tenant.name} exceeds the"
                    f" {aim:.3g}s admission holds to under the {klass} class's {cap:g}s cap"
                    f" ({estimate.ahead_steps:.0f} slot-steps of work ahead): overloaded",
                    "overloaded",
                    est - aim,
                )
            elif self._waiting_count() >= self.limits.max_waiting:
                shed = Overloaded("too many requests waiting", "queue_full", 1)
            if shed is not None:
                decisions.record(shed.reason, estimate)
                raise shed
        self._req[tenant.name].take(1, now)
        self._tok[tenant.name].take(cost, now)
        self._in_flight[tenant.name] += 1
        ticket = Ticket(self, tenant.name, klass, cost, estimate, prompt_tokens)
        if queued:
            self._live[id(ticket)] = ticket
        return ticket

    # -- the wait estimate -----------------------------------------------------------------------
    def estimate(self, tenant: str, klass: str) -> WaitEstimate:
        """The wait a request of `tenant` at `klass` would have now (see WaitModel)."""
        view = self.engine_view()
        waiting, running, serving = self.live_work(view.prefill_chunk, klass)
        return self.wait_model.estimate(tenant, klass, waiting, view, running, serving)

    def live_work(
        self, prefill_chunk: int, klass: str = CLASS_ORDER[0]
    ) -> tuple[dict[tuple[str, str], Work], dict[str, list[int]], int | None]:
        """What the estimate reads, recomputed from the live set in one pass: waiting work by
        (tenant, class) (= waiting_work), running sequences' steps left by tenant
        (= running_left) and, for a class below the top one, the running sequences whose
        slots it can take as they finish (None for the top class: all of them).

        Every admitted request is read as it is now (the engine changes its sequence's state
        on its own thread, so there is no event to keep totals by), once per estimate: one
        pass, not one per figure (four passes of the live set were ~8% of the server's main
        thread under drill 5's overload). It also calibrates on each request that has had its
        first token since the last pass."""
        chunk = max(prefill_chunk, 1)
        below = CLASS_ORDER[CLASS_ORDER.index(klass) :] if klass in CLASS_ORDER[1:] else None
        serving = 0
        tokens: dict[tuple[str, str], int] = {}
        prompts: dict[tuple[str, str], int] = {}
        jobs: dict[tuple[str, str], list[int]] = {}
        running: dict[str, list[int]] = {}
        waiting_status, running_status = SeqStatus.WAITING, SeqStatus.RUNNING
        for t in tuple(self._live.values()):
            seq = t.seq
            if seq is None:  # admitted, not yet handed to the engine
                prompt = t.prompt_tokens
                out = t.cost - prompt
            else:
                if not t.observed and (seq.first_token_at is not None or seq.finish_reason is not None):
                    self._observe_one(t, seq)
                status = seq.status
                if status is waiting_status:
                    prompt = seq.pending
                    out = seq.max_tokens - len(seq.output)
                else:
                    if status is running_status:
                        left = seq.max_tokens - len(seq.output)
                        mine = running.get(t.tenant)
                        if mine is None:
                            running[t.tenant] = [left if left > 1 else 1]
                        else:
                            mine.append(left if left > 1 else 1)
                        if below is not None and t.klass in below:
                            serving += 1
                    continue
            key = (t.tenant, t.klass)
            mine_jobs = jobs.get(key)
            if mine_jobs is None:
                tokens[key] = prompt + out
                prompts[key] = prompt
                jobs[key] = [out + -(-prompt // chunk)]
            else:
                tokens[key] += prompt + out
                prompts[key] += prompt
                mine_jobs.append(out + -(-prompt // chunk))
        waiting = {k: Work(tokens[k], sum(j), len(j), tuple(j), prompts[k]) for k, j in jobs.items()}
        return waiting, running, (serving if below is not None else None)

    def _observe(self, tickets: Iterable[Ticket]) -> None:
        """Calibrate on every admitted request that has had its first token, or was dropped at
        its class cap before one, since last time."""
        for t in tickets:
            seq = t.seq
            if not t.observed and seq is not None:
                self._observe_one(t, seq)

    def _observe_one(self, t: Ticket, seq: Sequence) -> None:
        """Calibrate on `t` if its wait is known (a first token) or bounded below (dropped at its
        class cap: it waited at least to its queue deadline, whichever clock dropped it)."""
        if t.estimate is None:
            return
        if seq.first_token_at is not None:
            t.observed = True
            self.wait_model.observe(t.tenant, t.klass, t.estimate, seq.first_token_at - seq.arrival)
        elif seq.finish_reason == "queue_timeout":
            t.observed = True
            waited = max(
                (seq.finished_at or 0.0) - seq.arrival,
                (seq.queue_deadline or 0.0) - seq.arrival,
                self.limits.queue_timeout(t.klass),
            )
            self.wait_model.observe_dropped(t.tenant, t.klass, t.estimate, waited)

    def queue_timeout_retry_after(self, ticket: Ticket) -> float:
        """Retry-After for a request dropped at its class cap (503 queue_timeout): how long until
        a retry's estimated wait is back where admission admits it (under the cap less the
        headroom), from its tenant's estimate now, with
        the drop already in the calibration, as for a request shed on arrival (0: now; the
        header says at least 1 s)."""
        with self._lock:
            self._observe([ticket])
            est = self.estimate(ticket.tenant, ticket.klass)
            cap = self.limits.queue_wait_limit(ticket.klass)
            aim = cap * (1.0 - self.limits.admission_headroom)
            return max(0.0, est.seconds + min(est.margin_s, cap / 2) - aim)

    def calibration(self) -> dict[str, dict[str, Any]]:
        """Estimated against real waits so far, by class (admin state, experiments)."""
        with self._lock:
            self._observe(list(self._live.values()))
            out = {k: c.summary() for k, c in self.wait_model.calibration.items()}
            for (tenant, klass), d in sorted(self._decisions.items()):
                out.setdefault(klass, {}).setdefault("decisions", {})[tenant] = d.summary()
            return out

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            self._in_flight[ticket.tenant] -= 1
            if self._live.pop(id(ticket), None) is not None:
                self._observe([ticket])
