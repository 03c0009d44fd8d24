"""Fixtures every part shares: real binaries and real servers on free loopback ports.

A test that needs a Debian binary (redis-server, prometheus, jdupes...) calls
`need_binary(name)`: on a developer machine without it the test skips with the reason;
under CI=true a missing binary is a failure, because CI's `make setup` installs it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Shared with the benchmarks through libs.testkit; re-exported for the tests that import them here.
from libs.testkit.net import free_port, wait_for_port

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


class _SnapshotLoggerDict(dict):
    """logging's table of loggers, whose values() is a list copied in one C call (atomic under
    the GIL). pytest 9.1+ walks `loggerDict.values()` without a lock as every test phase starts
    (_pytest/logging.py, catching_logs.__enter__; pytest-dev/pytest#14375), so a thread of the
    test process creating a logger meanwhile (an in-process server's first connection creates
    uvicorn.access) failed that phase with "dictionary changed size during iteration", reported
    at contextlib.py:137 (test_admission, 1 run in 17 at load 7-11; forced and seen at
    _pytest/logging.py:366 with --full-trace, session 9). The inference LiveServer also waits
    for a first answer now; this covers every other in-process server."""

    def values(self):
        return list(super().values())


# At conftest import only one thread runs, so no logger can be added during the swap.
logging.Logger.manager.loggerDict = _SnapshotLoggerDict(logging.Logger.manager.loggerDict)

# CI explores the same examples every run (a landing must not hinge on a lucky draw); locally every
# run draws new examples and may find more. Neither times examples: a per-example deadline on a
# shared 2-core machine fails on load, not on a bug (timing stays out of tests).
settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if IN_CI else "dev")


def need_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not installed (run `make setup`)"
        if IN_CI:
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server of our own on a free port, stopped after the test."""
    binary = need_binary("redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
