"""Every gauge and backlog comes back to zero on an idle engine, however the work ended.

The disconnect-storm drill found an idle engine (nothing running, nothing waiting, no KV held)
still reporting a backlog of thousands of tokens: the backlog was only recomputed at the end of
a step, so sequences ended between steps (client gone, cancel, kill switch) left it stale and
admission answered 503 "overloaded" forever.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY

from services.inference.admission import hash_key
from services.inference.proto import inference_pb2 as pb
from services.inference.proto import inference_pb2_grpc as pb_grpc
from services.inference.scheduler import StepPlan
from services.inference.sequence import CLASSES

from .conftest import LiveServer

TENANTS = {"g1": {"key_sha256": hash_key("k-g1")}, "g2": {"key_sha256": hash_key("k-g2")}}
ADMIN = {"Authorization": "Bearer dev-admin-key"}
HOLD = {"prompt": "hold on", "max_tokens": 200, "ignore_eos": True, "stream": True}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def server():
    s = LiveServer(tenants=TENANTS, max_seqs=8)
    yield s
    s.stop()


def _gauges(server: LiveServer) -> dict[str, Any]:
    eng = server.runtime.engine
    st = eng.stats()
    return {
        "running": st.running,
        "waiting": st.waiting,
        "kv_used": st.kv_used_tokens,
        "backlog": {c: eng.backlog_tokens(c) for c in CLASSES},
        "in_flight": {t: server.runtime.admission.in_flight(t) for t in TENANTS},
        "metric_running": REGISTRY.get_sample_value("inference_running_sequences"),
        "metric_waiting": REGISTRY.get_sample_value("inference_waiting_sequences"),
        "metric_kv_used": REGISTRY.get_sample_value("inference_kv_cache_used_tokens"),
    }


_ZERO = {
    "running": 0,
    "waiting": 0,
    "kv_used": 0,
    "backlog": dict.fromkeys(CLASSES, 0),
    "in_flight": dict.fromkeys(TENANTS, 0),
    "metric_running": 0.0,
    "metric_waiting": 0.0,
    "metric_kv_used": 0.0,
}


def _wait_idle(server: LiveServer, timeout: float = 20.0) -> None:
    """Poll (bounded) until every gauge is zero; fail with the last reading if it never is."""
    deadline = time.monotonic() + timeout
    seen = _gauges(server)
    while seen != _ZERO:
        assert time.monotonic() < deadline, f"gauges stuck on an idle engine: {seen}"
        time.sleep(0.01)
        seen = _gauges(server)


class _Gate:
    """A step_observer that holds every step after the first one that generated a token for
    each of `n` sequences, until released: the test then ends the work between steps."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.started: set[str] = set()
        self.holding = threading.Event()
        self.release = threading.Event()

    def __call__(self, plan: StepPlan) -> None:
        for seq, _ in plan.chunks:
            if seq.output:
                self.started.add(seq.seq_id)
        if len(self.started) >= self.n:
            self.holding.set()
            assert self.release.wait(30), "gate never released"


def _open_streams(stack: contextlib.ExitStack, c: httpx.Client, n: int, key: str) -> list[Any]:
    lines = []
    for _ in range(n):
        r = stack.enter_context(c.stream("POST", "/v1/completions", json=HOLD, headers=auth(key)))
        assert r.status_code == 200, r.read()
        lines.append(r.iter_lines())  # keep referenced: a dropped iterator closes the connection
    return lines


def _admitted(c: httpx.Client, key: str, priority: str = "interactive") -> None:
    r = c.post(
        "/v1/completions", json={"prompt": "x", "max_tokens": 1, "priority": priority}, headers=auth(key)
    )
    assert r.status_code == 200, r.text


def test_client_disconnects_mid_generation_leave_no_backlog(server: LiveServer) -> None:
    eng = server.runtime.engine
    gate = _Gate(3)
    eng.step_observer = gate
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            with contextlib.ExitStack() as stack:
                streams = _open_streams(stack, c, 2, "k-g1") + _open_streams(stack, c, 1, "k-g2")
                for lines in streams:  # each has its first token: the backlog counts all three
                    while not next(lines).startswith("data: "):
                        pass
                assert gate.holding.wait(30)
                assert eng.backlog_tokens("batch") > 0
            # Every client is gone (connections closed) while the engine is held mid-step.
            gate.release.set()
            _wait_idle(server)
            _admitted(c, "k-g1")
    finally:
        gate.release.set()
        eng.step_observer = None
    _wait_idle(server)


def test_kill_switch_on_then_off_leaves_no_backlog(server: LiveServer) -> None:
    eng = server.runtime.engine
    gate = _Gate(2)
    eng.step_observer = gate
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            batch = {**{k: v for k, v in HOLD.items() if k != "stream"}, "priority": "batch"}
            jobs = [c.post("/v1/jobs", json=batch, headers=auth("k-g2")).json()["id"] for _ in range(2)]
            assert gate.holding.wait(30)
            on = c.post("/v1/admin/kill-switch", json={"enabled": True}, headers=ADMIN)
            assert on.status_code == 200
            gate.release.set()
            for j in jobs:  # both jobs end (aborted); poll, bounded
                deadline = time.monotonic() + 20
                while c.get(f"/v1/jobs/{j}", headers=auth("k-g2")).json()["state"] not in (
                    "succeeded",
                    "failed",
                    "cancelled",
                ):
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            assert c.post("/v1/admin/kill-switch", json={"enabled": False}, headers=ADMIN).status_code == 200
            _wait_idle(server)
            _admitted(c, "k-g1")
    finally:
        gate.release.set()
        eng.step_observer = None
    _wait_idle(server)


def test_cancelled_jobs_and_engine_cancels_leave_no_backlog(server: LiveServer) -> None:
    eng = server.runtime.engine
    gate = _Gate(3)
    eng.step_observer = gate
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            batch = {**{k: v for k, v in HOLD.items() if k != "stream"}, "priority": "batch"}
            jobs = [c.post("/v1/jobs", json=batch, headers=auth("k-g1")).json()["id"] for _ in range(2)]
            with contextlib.ExitStack() as stack:
                (lines,) = _open_streams(stack, c, 1, "k-g2")
                while not next(lines).startswith("data: "):
                    pass
                assert gate.holding.wait(30)
                for j in jobs:
                    assert c.post(f"/v1/jobs/{j}/cancel", headers=auth("k-g1")).status_code == 200
                for seq in list(eng._live.values()):  # what the gRPC servicer does on cancel
                    eng.cancel(seq)
                gate.release.set()
            _wait_idle(server)
            _admitted(c, "k-g2")
            _admitted(c, "k-g2", "batch")
    finally:
        gate.release.set()
        eng.step_observer = None
    _wait_idle(server)


def test_grpc_cancels_leave_no_backlog(server: LiveServer) -> None:
    eng = server.runtime.engine
    gate = _Gate(3)
    eng.step_observer = gate
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.InferenceStub(channel)
            calls = [
                stub.Generate(
                    pb.GenerateRequest(prompt="long", max_tokens=200, ignore_eos=True),
                    metadata=(("authorization", f"Bearer {key}"),),
                    timeout=60,
                )
                for key in ("k-g1", "k-g1", "k-g2")
            ]
            for call in calls:
                next(call)  # its first token: the backlog counts it
            assert gate.holding.wait(30)
            for call in calls:
                call.cancel()
            gate.release.set()
            _wait_idle(server)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            _admitted(c, "k-g2")
    finally:
        gate.release.set()
        eng.step_observer = None
    _wait_idle(server)
