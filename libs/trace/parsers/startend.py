"""Start/end logs: one ``name:start:ts`` or ``name:end:ts`` per line (LeetCode "exclusive
time" style, but with the half-open end convention of ``events.py``).

The name may itself contain colons (``module:fn:start:3``): the last two fields are split off.
``begin`` is accepted for ``start``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from libs.trace.errors import Diagnostics, FormatError
from libs.trace.events import BEGIN, END, Event

_PHASES = {"start": BEGIN, "begin": BEGIN, "end": END}


def parse(lines: Iterable[str], diag: Diagnostics) -> Iterator[Event]:
    phases = _PHASES
    for number, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text[0] == "#":
            continue
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[0]:
            diag.report(FormatError, f"expected 'name:start:ts' or 'name:end:ts', got {text[:80]!r}", number)
            continue
        name, phase, stamp = parts
        kind = phases.get(phase)
        if kind is None:
            diag.report(FormatError, f"expected 'start' or 'end', got {phase[:40]!r}", number)
            continue
        try:
            ts = float(stamp)
            if ts - ts != 0.0:  # NaN or an infinity, inlined: this loop is the hot path
                raise ValueError
        except ValueError:
            diag.report(FormatError, f"expected a number as timestamp, got {stamp[:40]!r}", number)
            continue
        yield Event(kind, ts, name, number)
