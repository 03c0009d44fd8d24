"""The scheduler lends a slot rather than leave it idle while requests wait.

Shares are rounded down and counted among every tenant about, of any class, so they can add up
to fewer slots than the batch has: two batch tenants beside one interactive stream had 14 / 3 =
4 slots each of the 14 batch slots, and with both at their share and both waiting, nothing more
was admitted: 9 of 16 rows ran while 32 requests waited.
"""

from __future__ import annotations

from collections import Counter

from services.inference.fairness import FairQueue
from services.inference.model.kv_cache import KVCache
from services.inference.scheduler import Scheduler, SchedulerConfig
from services.inference.sequence import Sequence


def _run(sched: Scheduler, steps: int) -> None:
    for _ in range(steps):
        plan = sched.schedule()
        sched.commit(
            plan, [1 if s.num_computed + n == s.num_tokens else None for s, n in plan.chunks], eos_id=-1
        )


def test_two_batch_tenants_beside_an_interactive_stream_fill_the_batch() -> None:
    cache = KVCache(n_layers=1, n_heads=1, head_dim=1, num_tokens=4096, block_size=4)
    sched = Scheduler(SchedulerConfig(max_seqs=16, max_step_tokens=512, prefill_chunk=64), cache, FairQueue())
    n = 0

    def add(tenant: str, klass: str) -> None:
        nonlocal n
        n += 1
        sched.add(Sequence(f"s{n}", tenant, [5] * 4, max_tokens=1000, klass=klass, stop_at_eos=False))

    add("alice", "interactive")
    for _ in range(20):
        add("bob", "batch")
        add("carol", "batch")
    _run(sched, 30)
    held = Counter(s.tenant for s in sched.running)
    # The batch class may fill 16 - 16 // 8 = 14 rows while interactive traffic is about.
    assert len(sched.running) == 14, held
    assert held["alice"] == 1
    assert abs(held["bob"] - held["carol"]) <= 1, held  # lent alike: fair order, not first come
    assert not sched.fair.waiting_tenants_by_class()["interactive"]
