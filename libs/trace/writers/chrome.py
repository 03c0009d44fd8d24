"""Chrome Trace Event JSON (opens in Perfetto and chrome://tracing), streamed.

Duration events ``ph: "B"``/``"E"`` with ``ts`` in microseconds; one ``tid`` per track, named
by a ``thread_name`` metadata event, all in ``pid`` 1. Events are written as they arrive, so
memory stays O(tracks).

Why B/E and not X: importers (Perfetto, chrome://tracing, speedscope) stable-sort by ``ts``,
so with equal timestamps the file order decides nesting. The stack machine's order is the
nesting order, so B/E keep it exactly; X events can only be written when a frame ends, which
puts a parent after its children and is mis-nested when they share a start (the case of
google/perfetto#878).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TextIO

from libs.trace.events import BEGIN, Event


def write(events: Iterable[Event], out: TextIO, *, us_per_unit: float, name: str = "libs.trace") -> int:
    """Write the trace; returns the number of B/E events written."""
    tids: dict[str, int] = {}
    dumps = json.dumps
    out.write('{"displayTimeUnit": "ms", "traceEvents": [\n')
    out.write(dumps({"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": name}}))
    count = 0
    for ev in events:
        tid = tids.get(ev.track)
        if tid is None:
            tid = tids[ev.track] = len(tids) + 1
            meta = {"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": ev.track}}
            out.write(",\n" + dumps(meta))
        record = {
            "ph": "B" if ev.kind == BEGIN else "E",
            "name": ev.name,
            "ts": round(ev.ts * us_per_unit, 3),
            "pid": 1,
            "tid": tid,
        }
        out.write(",\n" + dumps(record))
        count += 1
    out.write("\n]}\n")
    return count
