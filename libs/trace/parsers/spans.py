"""The span log libs.service writes (docs/formats/span-log.schema.json), one JSON object per line.

A record is written when its span ends, so children come before their parent. The call tree
is rebuilt by ``span_id``/``parent_id``: a record's children are the records seen earlier
that name it as parent; when a root (``parent_id: null``) arrives its tree is complete and is
emitted as events, then forgotten. Memory is therefore bounded by the spans of the traces
still in flight, not by the file.

Each trace is its own track, ``"<service> <trace_id>"``; a second root of the same trace
that overlaps the first (or starts earlier) goes to ``"<track> ~<span_id>"``. Spans are intervals
``[ts, ts + dur)`` in seconds. Siblings that overlap in time (concurrent asyncio tasks) cannot
share one stack: a child that starts before the previous sibling on its lane ended is drawn
on a lane of its own, ``"<track> #k"``, as a root there (its time then does not count as its
parent's child time). This is a property of concurrent code, not an error.

``ts`` is wall-clock and ``dur`` monotonic, so a child can stick out of its parent by clock
noise: up to ``TOLERANCE`` seconds it is silently clipped into the parent. Beyond that it is
``CrossedNesting`` (lenient: clipped, with a warning). A record whose parent never arrives is
``MissingEnd`` (lenient: it becomes a root). ``dur < 0`` is ``NegativeDuration`` (lenient: 0).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator

from libs.trace.errors import CrossedNesting, Diagnostics, FormatError, MissingEnd, NegativeDuration
from libs.trace.events import BEGIN, END, Event

TOLERANCE = 1e-3

_HEX16 = re.compile(r"[0-9a-f]{16}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_REQUIRED = ("ts", "dur", "name", "trace_id", "span_id", "parent_id", "service")


class _Span:
    __slots__ = ("children", "end", "line", "name", "parent_id", "span_id", "start", "track")

    def __init__(self, record: dict, line: int) -> None:
        self.name: str = record["name"]
        self.start: float = float(record["ts"])
        self.end: float = self.start + float(record["dur"])
        self.span_id: str = record["span_id"]
        self.parent_id: str | None = record["parent_id"]
        self.track = f"{record['service']} {record['trace_id']}"
        self.line = line
        self.children: list[_Span] = []


def _check(record: object, number: int, diag: Diagnostics) -> bool:
    """Field-level checks of the schema, each naming the field; False means skip the line."""
    if not isinstance(record, dict):
        diag.report(FormatError, "expected a JSON object (a span record)", number)
        return False
    for field in _REQUIRED:
        if field not in record:
            diag.report(FormatError, f"field {field!r} is missing", number)
            return False
    for field in ("ts", "dur"):
        value = record[field]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            diag.report(FormatError, f"field {field!r}: expected a number, got {value!r}", number)
            return False
    if not isinstance(record["name"], str) or not record["name"]:
        diag.report(FormatError, "field 'name': expected a non-empty string", number)
        return False
    if not isinstance(record["service"], str):
        diag.report(FormatError, "field 'service': expected a string", number)
        return False
    if not isinstance(record["trace_id"], str) or not _HEX32.fullmatch(record["trace_id"]):
        diag.report(FormatError, "field 'trace_id': expected 32 lowercase hex digits", number)
        return False
    if not isinstance(record["span_id"], str) or not _HEX16.fullmatch(record["span_id"]):
        diag.report(FormatError, "field 'span_id': expected 16 lowercase hex digits", number)
        return False
    parent = record["parent_id"]
    if parent is not None and (not isinstance(parent, str) or not _HEX16.fullmatch(parent)):
        diag.report(FormatError, "field 'parent_id': expected null or 16 lowercase hex digits", number)
        return False
    if record["dur"] < 0:
        message = f"span {record['name']!r} has negative duration {record['dur']}"
        diag.report(NegativeDuration, message, number)
        record["dur"] = 0
    return True


def _emit(root: _Span, diag: Diagnostics) -> Iterator[Event]:
    """Events of one complete tree: depth first, children by start time, lanes for overlaps."""
    lanes = 0
    pending: list[tuple[_Span, str]] = [(root, root.track)]
    while pending:
        top, track = pending.pop()
        # Iterative DFS on one lane: (span, index of next child, lane cursor).
        work: list[list] = [[top, 0, top.start]]
        yield Event(BEGIN, top.start, top.name, top.line, track)
        top.children.sort(key=lambda s: (s.start, s.line))
        while work:
            frame = work[-1]
            span, index, cursor = frame
            if index == len(span.children):
                work.pop()
                yield Event(END, span.end, span.name, span.line, track)
                continue
            child = span.children[index]
            frame[1] = index + 1
            if child.start < span.start - TOLERANCE or child.end > span.end + TOLERANCE:
                diag.report(
                    CrossedNesting,
                    f"span {child.name!r} [{child.start:.6f}, {child.end:.6f}) sticks out of its parent "
                    f"{span.name!r} (line {span.line}) [{span.start:.6f}, {span.end:.6f})",
                    child.line,
                )
            child.start = min(max(child.start, span.start), span.end)
            child.end = max(min(child.end, span.end), child.start)
            if child.start < cursor:
                lanes += 1
                pending.append((child, f"{root.track} #{lanes}"))
                continue
            frame[2] = child.end
            child.children.sort(key=lambda s: (s.start, s.line))
            yield Event(BEGIN, child.start, child.name, child.line, track)
            work.append([child, 0, child.start])


def parse(lines: Iterable[str], diag: Diagnostics) -> Iterator[Event]:
    waiting: dict[str, list[_Span]] = {}  # parent span_id -> children seen so far
    track_end: dict[str, float] = {}  # per track, the end of the last root emitted on it
    for number, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text[0] == "#":
            continue
        try:
            record = json.loads(text)
        except ValueError as exc:
            diag.report(FormatError, f"not a JSON object: {exc}", number)
            continue
        if not _check(record, number, diag):
            continue
        span = _Span(record, number)
        span.children = waiting.pop(span.span_id, [])
        if span.parent_id is None:
            # Several roots can share a trace id (a client reusing its X-Request-ID); one that
            # starts before the previous root on the track ended gets a track of its own.
            if span.start < track_end.get(span.track, float("-inf")):
                span.track = f"{span.track} ~{span.span_id[:8]}"
            track_end[span.track] = max(span.end, track_end.get(span.track, float("-inf")))
            yield from _emit(span, diag)
        else:
            waiting.setdefault(span.parent_id, []).append(span)
    orphans = sorted((s for group in waiting.values() for s in group), key=lambda s: s.line)
    for span in orphans:
        diag.report(
            MissingEnd,
            f"span {span.name!r} names parent {span.parent_id} which never appears "
            "(records are written children first, so the parent must come later)",
            span.line,
        )
        span.track = f"{span.track} ~{span.span_id[:8]}"  # its own lane: orphans may overlap
        yield from _emit(span, diag)
