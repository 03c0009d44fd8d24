"""A burst at an engine with free slots is not shed as if it ran in single file.

The disconnect drill's 64 streams arriving at once at an idle engine (64 slots) were refused
301 times in 320: each new request's estimate counted every earlier one's whole output as work
ahead of it, though all of them start in the next step, side by side."""

from __future__ import annotations

from services.inference.admission import EngineView, WaitModel, Work


def test_requests_that_all_fit_in_free_slots_wait_only_the_floor():
    model = WaitModel({"a": 1.0, "b": 1.0})
    view = EngineView(tokens_per_s=1000.0, step_s=0.05, max_seqs=64, running=0)
    waiting = {("a", "interactive"): Work(tokens=31 * 70, steps=31 * 65, seqs=31)}
    est = model.estimate("a", "interactive", waiting, view)
    assert est.raw_s == 0.0
    assert est.seconds == est.floor_s == view.step_s


def test_once_the_slots_are_spoken_for_the_queue_counts_again():
    model = WaitModel({"a": 1.0, "b": 1.0})
    view = EngineView(tokens_per_s=1000.0, step_s=0.05, max_seqs=64, running=40)
    waiting = {("a", "interactive"): Work(tokens=30 * 70, steps=30 * 65, seqs=30)}
    est = model.estimate("a", "interactive", waiting, view)
    assert est.raw_s > 0.0
    assert est.seconds > 0.35  # over the interactive cap: shed
