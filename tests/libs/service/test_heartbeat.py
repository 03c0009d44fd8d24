from __future__ import annotations

import time

from prometheus_client import REGISTRY

from libs.service.heartbeat import Heartbeat


def test_beat_exports_the_time_of_the_last_turn():
    before = time.time()
    hb = Heartbeat("testsvc", "loop")
    first = REGISTRY.get_sample_value(
        "worker_heartbeat_timestamp_seconds", {"service": "testsvc", "worker": "loop"}
    )
    assert first is not None and first >= before
    time.sleep(0.01)
    hb.beat()
    second = REGISTRY.get_sample_value(
        "worker_heartbeat_timestamp_seconds", {"service": "testsvc", "worker": "loop"}
    )
    assert second > first


def test_stop_removes_the_series():
    hb = Heartbeat("testsvc", "finished-loop")
    hb.stop()
    labels = {"service": "testsvc", "worker": "finished-loop"}
    assert REGISTRY.get_sample_value("worker_heartbeat_timestamp_seconds", labels) is None
    hb.stop()  # idempotent
