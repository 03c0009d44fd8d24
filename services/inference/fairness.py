"""Who goes next: priority classes first, then weighted fair queueing across tenants.

Each tenant has a virtual token counter: every token computed for it (prefill or decode) adds
1 / weight. Among tenants with waiting work in the highest non-empty class, the one with the
smallest counter goes first, so a tenant that floods only raises its own counter and another
tenant's requests overtake its backlog. A tenant that was idle restarts at the virtual time of
the last admission (if that is ahead of its own counter), so idleness earns no burst credit.

Within one tenant and class, order is FIFO; preempted sequences go back to the front.

With `fair=False` (the `--no-fair-queueing` switch, for experiments) the heads are served in
arrival order across tenants: plain FIFO within a class, so a flood goes first.
Thread-confined: only the engine thread touches it.

The queue also keeps two figures for the engine, so its per-step bookkeeping does not walk every
waiting sequence (at a 400-deep queue those walks took 0.6-1.8 ms of a ~22 ms step, 3-8% of
the engine's CPU): the tokens of work waiting per class, added at `push` and taken off at
`pop`/`remove` (a sequence's work cannot change while it waits: only running sequences compute
or generate), and a lower bound on the earliest deadline of anything waiting, so the engine
scans the queue for expired requests only when one may have expired.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator

from services.inference.sequence import CLASSES, Sequence


class FairQueue:
    def __init__(
        self, weights: dict[str, float] | None = None, default_weight: float = 1.0, *, fair: bool = True
    ) -> None:
        self.fair = fair
        self.weights = dict(weights or {})
        self.default_weight = default_weight
        self._queues: dict[tuple[str, str], deque[Sequence]] = {}
        self.vtime: dict[str, float] = {}
        self._clock = 0.0  # virtual time of the last admission
        self._len = 0
        self._work = dict.fromkeys(CLASSES, 0)
        # No waiting sequence has a deadline (or a queue deadline) before this: lowered by every
        # push, raised only by the engine after a full scan (`set_earliest_deadline`).
        self._earliest = math.inf

    @property
    def clock(self) -> float:
        """Virtual time of the last admission: where a tenant that was idle starts again."""
        return self._clock

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, self.default_weight)

    def __len__(self) -> int:
        return self._len

    def _waiting_tenants(self) -> set[str]:
        return {t for (_, t), q in self._queues.items() if q}

    def push(self, seq: Sequence, *, front: bool = False) -> None:
        if seq.tenant not in self._waiting_tenants():
            self.vtime[seq.tenant] = max(self.vtime.get(seq.tenant, 0.0), self._clock)
        q = self._queues.setdefault((seq.klass, seq.tenant), deque())
        if front:
            q.appendleft(seq)
        else:
            q.append(seq)
        self._len += 1
        seq.queued_work = seq.pending + seq.max_tokens - len(seq.output)
        self._work[seq.klass] += seq.queued_work
        self._earliest = min(self._earliest, _earliest_deadline(seq))

    def remove(self, seq: Sequence) -> bool:
        q = self._queues.get((seq.klass, seq.tenant))
        if q is None:
            return False
        try:
            q.remove(seq)
        except ValueError:
            return False
        self._len -= 1
        self._work[seq.klass] -= seq.queued_work
        return True

    def candidates(self) -> Iterator[Sequence]:
        """Queue heads in service order: class rank, then tenant virtual time, then arrival."""
        for klass in CLASSES:
            heads = [q[0] for (k, _), q in self._queues.items() if k == klass and q]
            heads.sort(key=lambda s: (self.vtime.get(s.tenant, 0.0) if self.fair else 0.0, s.arrival))
            yield from heads

    def candidates_of(self, klass: str) -> Iterator[Sequence]:
        for (k, _), q in self._queues.items():
            if k == klass and q:
                yield q[0]

    def pop(self, seq: Sequence) -> None:
        """Take `seq`, which must be a head returned by candidates()."""
        q = self._queues[(seq.klass, seq.tenant)]
        assert q[0] is seq, "pop() takes a queue head"
        q.popleft()
        self._len -= 1
        self._work[seq.klass] -= seq.queued_work
        self._clock = max(self._clock, self.vtime.get(seq.tenant, 0.0))

    def charge(self, tenant: str, tokens: int) -> None:
        self.vtime[tenant] = self.vtime.get(tenant, 0.0) + tokens / self.weight(tenant)

    def __iter__(self) -> Iterator[Sequence]:
        for q in self._queues.values():
            yield from q

    def work_by_class(self) -> dict[str, int]:
        """Tokens of work waiting, per class (a copy): prompt still to prefill plus output still
        to generate, as each sequence had when it entered the queue."""
        return dict(self._work)

    @property
    def earliest_deadline(self) -> float:
        """No waiting sequence has a deadline or queue deadline before this (a lower bound)."""
        return self._earliest

    def set_earliest_deadline(self, t: float) -> None:
        """The engine's full scan found nothing waiting with a deadline before `t`."""
        self._earliest = t

    def waiting_tenants_by_class(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {k: set() for k in CLASSES}
        for (k, t), q in self._queues.items():
            if q:
                out[k].add(t)
        return out

    def waiting_by_tenant(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, t), q in self._queues.items():
            if q:
                out[t] = out.get(t, 0) + len(q)
        return out


def _earliest_deadline(seq: Sequence) -> float:
    deadlines = [d for d in (seq.deadline, seq.queue_deadline) if d is not None]
    return min(deadlines, default=math.inf)
