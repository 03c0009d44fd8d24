"""Wait (bounded) until threads are parked on a condition, so a test acts on real waiters.

threading.Condition keeps its parked waiters in `_waiters`; reading its length is the only way
to know a thread is inside wait() rather than about to enter it. Tests use it so that "close()
wakes a blocked get()" is proven on a get() that was blocked, not one that had not started yet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.001)


def parked(condition: threading.Condition, count: int) -> None:
    until(lambda: len(condition._waiters) == count, what=f"{count} thread(s) parked")  # type: ignore[attr-defined]
