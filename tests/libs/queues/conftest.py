"""Every queue test must leave no thread behind: a leaked thread is a worker that never woke."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    # Threads a test started may still be returning from their last call; give them a bound.
    deadline = time.monotonic() + 5.0
    leaked = [t for t in threading.enumerate() if t not in before]
    while leaked and time.monotonic() < deadline:
        leaked[0].join(max(0.0, deadline - time.monotonic()))
        leaked = [t for t in threading.enumerate() if t not in before]
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
