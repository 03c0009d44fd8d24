"""Stack sample diffing: consecutive stacks -> begin/end events by longest common prefix.

Given the stack held until now and the stack of the next sample (both root first), the frames
they share as a prefix keep running; the rest of the old stack ends, deepest first, and the
rest of the new stack begins, shallowest first, all at the new sample's timestamp (ends before
begins, so the frames touch without overlapping: see ``events.py``). State is the current
stack only, O(depth).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from libs.trace.events import BEGIN, END, Event


class StackDiffer:
    """Holds one track's current stack and diffs each new sample against it."""

    __slots__ = ("stack", "track")

    def __init__(self, track: str = "main") -> None:
        self.track = track
        self.stack: list[str] = []

    def advance(self, new: Sequence[str], ts: float, line: int) -> Iterator[Event]:
        old = self.stack
        common = 0
        limit = min(len(old), len(new))
        while common < limit and old[common] == new[common]:
            common += 1
        track = self.track
        for depth in range(len(old) - 1, common - 1, -1):
            yield Event(END, ts, old[depth], line, track, depth)
        for depth in range(common, len(new)):
            yield Event(BEGIN, ts, new[depth], line, track, depth)
        self.stack = list(new)

    def close(self, ts: float, line: int) -> Iterator[Event]:
        """End every frame still held (end of input)."""
        return self.advance((), ts, line)
