"""An admitted request never waits without bound: past its class's queue timeout it is dropped
with 503 queue_timeout and Retry-After, before any token, and nothing it held stays counted.

Drill 5 (3x overload) found batch requests admitted on a 1.7 s wait estimate waiting 12 s on
average and up to 60 s (interactive work overtakes them) until their clients gave up.
"""

from __future__ import annotations

import dataclasses
import time

import httpx
import pytest

from services.inference.admission import Limits, hash_key
from services.inference.scheduler import StepPlan

from .conftest import LiveServer

TENANTS = {"q1": {"key_sha256": hash_key("k-q1")}}
AUTH = {"Authorization": "Bearer k-q1"}


def test_the_timeout_is_a_multiple_of_the_class_cap_with_a_floor():
    limits = Limits(max_queue_wait_s={"interactive": 0.35, "batch": 8.0})
    assert (limits.queue_timeout("interactive"), limits.queue_timeout("batch")) == (0.35, 8.0)  # the caps
    old = Limits(
        max_queue_wait_s={"interactive": 0.35, "batch": 8.0},
        queue_timeout_factor=2.5,
        queue_timeout_min_s=5.0,
    )
    assert (old.queue_timeout("interactive"), old.queue_timeout("batch")) == (5.0, 20.0)


@pytest.fixture(scope="module")
def server():
    s = LiveServer(tenants=TENANTS, max_seqs=1, max_queue_wait_interactive=60, max_queue_wait_batch=60)
    yield s
    s.stop()


def test_a_request_waiting_past_the_queue_timeout_gets_503(server: LiveServer) -> None:
    admission = server.runtime.admission
    engine = server.runtime.engine
    admission.limits = dataclasses.replace(
        admission.limits, queue_timeout_factor=0.0, queue_timeout_min_s=0.3
    )

    def slow(plan: StepPlan) -> None:  # slows the engine down, so the one slot stays taken
        time.sleep(0.02)

    engine.step_observer = slow
    hold = {"prompt": "hold on", "max_tokens": 256, "ignore_eos": True, "stream": True}
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            with c.stream("POST", "/v1/completions", json=hold, headers=AUTH) as r:
                lines = r.iter_lines()
                while not next(lines).startswith("data: "):
                    pass  # the one slot is taken, for 256 steps of >= 20 ms
                started = time.monotonic()
                queued = c.post(
                    "/v1/completions",
                    json={"prompt": "x", "max_tokens": 4, "priority": "batch"},
                    headers=AUTH,
                )
                waited = time.monotonic() - started
            assert queued.status_code == 503, queued.text
            body = queued.json()["error"]
            assert "queue timeout" in body["message"]
            assert "retry-after" in queued.headers
            assert waited >= 0.3  # it was admitted and waited, then dropped
    finally:
        engine.step_observer = None
    deadline = time.monotonic() + 20
    while engine.stats().running or engine.stats().waiting or admission.in_flight("q1"):
        assert time.monotonic() < deadline, "the dropped request stayed counted"
        time.sleep(0.01)
