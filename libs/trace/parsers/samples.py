"""Timestamped stack samples, one JSON object per line:
``{"ts": 12.5, "stack": ["main", "handle", "parse"], "thread": "worker-1"}``.

``stack`` is root first; ``thread`` is optional (default "main") and each thread is its own
track. A sample's stack is held from its ``ts`` until the next sample of the same thread
(half-open, ``events.py``); consecutive samples are diffed by longest common prefix
(``stackdiff.py``). The last sample of a thread has no successor: it is held for as long as
the gap before it (zero when it is the thread's only sample). Timestamps are seconds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator

from libs.trace.errors import Diagnostics, FormatError, TimeWentBack
from libs.trace.events import Event
from libs.trace.stackdiff import StackDiffer


class _Thread:
    __slots__ = ("differ", "gap", "last_ts")

    def __init__(self, track: str) -> None:
        self.differ = StackDiffer(track)
        self.last_ts: float | None = None
        self.gap = 0.0


def parse(lines: Iterable[str], diag: Diagnostics) -> Iterator[Event]:
    threads: dict[str, _Thread] = {}
    number = 0
    for number, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text[0] == "#":
            continue
        try:
            record = json.loads(text)
        except ValueError as exc:
            diag.report(FormatError, f"not a JSON object: {exc}", number)
            continue
        if not isinstance(record, dict):
            diag.report(FormatError, "expected a JSON object with 'ts' and 'stack'", number)
            continue
        ts = record.get("ts")
        stack = record.get("stack")
        thread = record.get("thread", "main")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            diag.report(FormatError, f"field 'ts': expected a number, got {ts!r}", number)
            continue
        if not isinstance(stack, list) or not all(isinstance(f, str) and f for f in stack):
            diag.report(FormatError, "field 'stack': expected a list of non-empty strings", number)
            continue
        if not isinstance(thread, str):
            diag.report(FormatError, f"field 'thread': expected a string, got {thread!r}", number)
            continue
        state = threads.get(thread)
        if state is None:
            state = threads[thread] = _Thread(thread)
        if state.last_ts is not None:
            if ts < state.last_ts:
                # Reported here rather than by the stack machine, which would see an end before
                # its begin and call it a negative duration; lenient: clamp (zero-length sample).
                diag.report(TimeWentBack, f"timestamp {ts:.15g} goes back from {state.last_ts:.15g}", number)
                ts = state.last_ts
            state.gap = ts - state.last_ts
        state.last_ts = ts
        yield from state.differ.advance(stack, float(ts), number)
    for state in threads.values():
        end = (state.last_ts or 0.0) + max(state.gap, 0.0)
        yield from state.differ.close(end, number)
