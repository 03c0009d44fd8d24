"""From text lines to the well-formed event stream: detect, parse, validate.

This is the seam every consumer (CLI, writers, tests, benchmarks) goes through::

    trace = read_trace(open("run.log"), source="run.log", lenient=True)
    tree = CallTree.from_events(trace.events)
    for warning in trace.warnings: ...

Nothing is read until ``trace.events`` is iterated, and the whole chain streams.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from libs.trace.decode import utf8_lines
from libs.trace.detect import FORMATS, detect, peek
from libs.trace.errors import KEEP_WARNINGS, Diagnostics, TraceError, TraceWarning
from libs.trace.events import UNITS_TO_MICROSECONDS, Event
from libs.trace.parsers import collapsed, phase, samples, spans, startend, tree
from libs.trace.stack import well_formed

Parser = Callable[[Iterable[str], Diagnostics], Iterator[Event]]

PARSERS: dict[str, Parser] = {
    "startend": startend.parse,
    "phase": phase.parse,
    "collapsed": collapsed.parse,
    "samples": samples.parse,
    "tree": tree.parse,
    "spans": spans.parse,
}
assert set(PARSERS) == set(FORMATS)

# Formats whose timestamps have a fixed unit; the others take the caller's ``time_unit``.
FIXED_UNITS = {"collapsed": "samples", "samples": "s", "spans": "s"}


@dataclass
class Trace:
    """A parsed input: its format, the unit of its timestamps, the validated event stream and
    (filled while the stream is consumed, lenient mode only) the warnings: the first
    ``max_warnings`` of them in ``warnings``, how many there were in all in ``warning_count``."""

    format: str
    unit: str
    events: Iterator[Event]
    diagnostics: Diagnostics = field(repr=False)

    @property
    def warnings(self) -> list[TraceWarning]:
        return self.diagnostics.warnings

    @property
    def warning_count(self) -> int:
        return self.diagnostics.count


def read_trace(
    lines: Iterable[str] | BinaryIO | io.RawIOBase,
    *,
    format: str = "auto",
    source: str = "<input>",
    lenient: bool = False,
    time_unit: str = "s",
    strip_lines: bool = False,
    max_warnings: int = KEEP_WARNINGS,
) -> Trace:
    """Parse ``lines`` in ``format`` ("auto" detects it) into a validated event stream.

    ``lines`` is text lines (a text file, a list) or a binary stream (``open(path, "rb")``,
    ``sys.stdin.buffer``), decoded as strict UTF-8 so that a byte that is not UTF-8 is a
    :class:`FormatError` naming its line and byte offset (see ``decode.py``). A UTF-8 byte
    order mark at the start of the input is dropped.

    ``max_warnings`` caps the warnings kept (lenient mode); every one is still counted.
    ``strip_lines`` folds py-spy's per-line frame names ``fn (file.py:12)`` into ``fn (file.py)``.
    Raises :class:`TraceError` for undetectable input at once; every other problem is raised
    (or, lenient, recorded) while ``events`` is iterated, naming its line.
    """
    if time_unit not in UNITS_TO_MICROSECONDS:
        raise ValueError(f"time_unit must be one of {sorted(UNITS_TO_MICROSECONDS)}, got {time_unit!r}")
    diag = Diagnostics(source=source, lenient=lenient, keep=max_warnings)
    if isinstance(lines, io.BufferedIOBase | io.RawIOBase):
        lines = utf8_lines(lines, diag)
    lines = _without_bom(lines)  # type: ignore[arg-type]
    if format == "auto":
        head, lines = peek(lines)
        try:
            format = detect(head)
        except ValueError as exc:
            raise TraceError(str(exc), source=source) from None
    parser = PARSERS.get(format)
    if parser is None:
        raise ValueError(f"format must be 'auto' or one of {', '.join(FORMATS)}, got {format!r}")
    unit = FIXED_UNITS.get(format, time_unit)
    events = parser(lines, diag)
    if strip_lines:
        events = _strip_lines(events)
    return Trace(format, unit, well_formed(events, diag), diag)


def _without_bom(lines: Iterable[str]) -> Iterator[str]:
    """``lines`` with a UTF-8 byte order mark (U+FEFF, as Windows editors write it) dropped
    from the start of the first line, so it never becomes part of a frame name."""
    rest = iter(lines)
    for first in rest:
        yield first[1:] if first.startswith("\ufeff") else first
        break
    yield from rest


# py-spy names frames "function (file.py:LINE)" with the line executing in that frame, so one
# function shows up once per line it was sampled on; this folds them into "function (file.py)".
_LINE_SUFFIX = re.compile(r"^(.*) \((.*):\d+\)$")


def _strip_lines(events: Iterator[Event]) -> Iterator[Event]:
    cache: dict[str, str] = {}
    for ev in events:
        name = cache.get(ev.name)
        if name is None:
            name = cache[ev.name] = _LINE_SUFFIX.sub(r"\1 (\2)", ev.name)
        ev.name = name
        yield ev
