"""What one drill run observed, shared by its probes and actions (they run in this process).

Chaos Toolkit calls each activity on its own; a drill's figures (time to detect, time to
recover, pages lost ...) come from several of them. Activities write here, the runner
(runner.py) resets it before an experiment and reads it after: marks are wall-clock instants
(the timeline's vertical lines), figures are the numbers the verdict table shows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Record:
    marks: dict[str, float] = field(default_factory=dict)  # event -> unix time
    figures: dict[str, Any] = field(default_factory=dict)  # name -> number or short text
    state: dict[str, Any] = field(default_factory=dict)  # ids handed from one activity to another
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


RECORD = Record()


def reset() -> None:
    with RECORD.lock:
        RECORD.marks.clear()
        RECORD.figures.clear()
        RECORD.state.clear()


def mark(event: str, at: float | None = None) -> float:
    """Note when an event happened (the first time only: a retry must not move it)."""
    with RECORD.lock:
        return RECORD.marks.setdefault(event, time.time() if at is None else at)


def figure(name: str, value: Any) -> Any:
    with RECORD.lock:
        RECORD.figures[name] = value
    return value


def since(event: str, until: float | None = None) -> float | None:
    """Seconds from a marked event to `until` (now by default), None when it was never marked."""
    start = RECORD.marks.get(event)
    if start is None:
        return None
    return round((time.time() if until is None else until) - start, 2)
