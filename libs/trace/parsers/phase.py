"""Timestamped name/phase lines: ``ts name B`` and ``ts name E`` (the Chrome trace phases).

The name is everything between the first and the last whitespace-separated field, so it may
contain spaces.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from libs.trace.errors import Diagnostics, FormatError
from libs.trace.events import BEGIN, END, Event

_PHASES = {"B": BEGIN, "E": END}


def parse(lines: Iterable[str], diag: Diagnostics) -> Iterator[Event]:
    phases = _PHASES
    for number, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text[0] == "#":
            continue
        fields = text.split(None, 1)
        tail = fields[1].rsplit(None, 1) if len(fields) == 2 else []
        if len(tail) != 2:
            diag.report(FormatError, f"expected 'ts name B|E', got {text[:80]!r}", number)
            continue
        head = fields[0]
        name, phase = tail
        kind = phases.get(phase)
        if kind is None:
            diag.report(FormatError, f"expected phase B or E, got {phase[:40]!r}", number)
            continue
        try:
            ts = float(head)
            if ts - ts != 0.0:  # NaN or an infinity, inlined: this loop is the hot path
                raise ValueError
        except ValueError:
            diag.report(FormatError, f"expected a number as timestamp, got {head[:40]!r}", number)
            continue
        yield Event(kind, ts, name, number)
