"""The stack machine: turns a raw begin/end stream into a well-formed one, in O(depth) memory.

Input: events from any parser, in input order, possibly broken. Output: the same events with
``depth`` filled in, guaranteed well-formed per track: every end closes the frame on top of
its track's stack, timestamps never decrease, every begun frame is ended. The only state is
one stack of open begin events per track plus the last timestamp per track, so memory is
O(max depth) per track whatever the length of the input (a single-threaded log has one
track; a span log has one per trace, and of a finished one only an empty stack and a
timestamp stay behind); aggregates (``calltree.py``) are separate consumers of the output.

Checks, in strict mode each one raises the named :mod:`errors` class with the input line:

* ``UnmatchedEnd``: an end whose name is not open on its track.
* ``NegativeDuration``: an end earlier than its own frame's begin.
* ``TimeWentBack``: any other timestamp smaller than the previous one on its track.
* ``CrossedNesting``: an end of a frame that is open but not on top (``a b /a``).
* ``MissingEnd``: frames still open when the input ends (reported at the outermost one's
  begin line).

Repair rules in lenient mode (each repair also records a warning):

* a timestamp that goes back (or an end before its begin) is clamped to the previous
  timestamp on its track, so durations become zero rather than negative;
* an unmatched end is dropped;
* a crossed end closes, at its timestamp, every frame above the one it names (deepest first),
  then that frame; the later ends of the frames closed early are then unmatched and dropped;
* frames still open at the end of input are closed at the last timestamp seen on their
  track, deepest first.

Equal timestamps follow ``events.py``: applied in input order, never an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from libs.trace.errors import (
    CrossedNesting,
    Diagnostics,
    MissingEnd,
    NegativeDuration,
    TimeWentBack,
    UnmatchedEnd,
)
from libs.trace.events import BEGIN, END, Event


def _fmt(ts: float) -> str:
    return f"{ts:.15g}"  # Unix-time stamps need all their digits


def well_formed(events: Iterable[Event], diag: Diagnostics) -> Iterator[Event]:
    """Validate (and in lenient mode repair) ``events``; yield them with depths set."""
    stacks: dict[str, list[Event]] = {}
    last_ts: dict[str, float] = {}
    for ev in events:
        track = ev.track
        stack = stacks.get(track)
        if stack is None:
            stack = stacks[track] = []
        ts = ev.ts
        prev = last_ts.get(track, ts)
        if ev.kind == BEGIN:
            if ts < prev:
                diag.report(TimeWentBack, f"timestamp {_fmt(ts)} goes back from {_fmt(prev)}", ev.line)
                ev.ts = ts = prev
            ev.depth = len(stack)
            stack.append(ev)
            last_ts[track] = ts
            yield ev
            continue

        # An end: find the frame it closes, nearest the top (identity is stack position, so
        # with recursion the innermost frame of that name is the one being closed).
        name = ev.name
        if stack and stack[-1].name == name:
            index = len(stack) - 1
        else:
            index = len(stack) - 2
            while index >= 0 and stack[index].name != name:
                index -= 1
            if index < 0:
                open_note = f" (innermost open frame: {stack[-1].name!r})" if stack else ""
                diag.report(UnmatchedEnd, f"end of {name!r} without a start{open_note}", ev.line)
                continue  # repair: drop it
        begin = stack[index]
        if ts < begin.ts:
            diag.report(
                NegativeDuration,
                f"{name!r} ends at {_fmt(ts)}, before it begins at {_fmt(begin.ts)} (line {begin.line})",
                ev.line,
            )
            ev.ts = ts = prev
        elif ts < prev:
            diag.report(TimeWentBack, f"timestamp {_fmt(ts)} goes back from {_fmt(prev)}", ev.line)
            ev.ts = ts = prev
        last_ts[track] = ts
        while len(stack) - 1 > index:
            above = stack.pop()
            diag.report(
                CrossedNesting,
                f"end of {name!r} (begun line {begin.line}) while {above.name!r} "
                f"(begun line {above.line}) is still open",
                ev.line,
            )
            yield Event(END, ts, above.name, ev.line, track, above.depth)
        stack.pop()
        ev.depth = index
        yield ev

    for track, stack in stacks.items():
        if not stack:
            continue
        outer = stack[0]
        more = f" ({len(stack) - 1} more frames inside it are open too)" if len(stack) > 1 else ""
        diag.report(MissingEnd, f"{outer.name!r} begun here has no end{more}", outer.line)
        ts = last_ts[track]
        while stack:
            frame = stack.pop()
            if frame is not outer:
                diag.report(MissingEnd, f"{frame.name!r} begun here has no end", frame.line)
            yield Event(END, ts, frame.name, 0, track, frame.depth)
