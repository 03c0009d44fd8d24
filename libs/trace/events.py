"""The one internal event stream every input is turned into, and the interval convention.

Interval convention (used by every parser, the stack machine, the aggregates and every writer):
a frame that begins at ``b`` and ends at ``e`` occupies the half-open interval ``[b, e)``.
Consequences, stated once so that no module decides them again:

* A frame's inclusive time is ``e - b``; it may be zero (``b == e``): an empty frame is still a
  call, it just owns no time.
* Two frames where one ends at ``t`` and the next begins at ``t`` touch but do not overlap, so
  a sibling that starts exactly when its predecessor ends is *not* concurrent with it.
* A child ending exactly when its parent ends is inside the parent (``[b, e)`` ⊆ ``[pb, pe)``).
* Events with equal timestamps are applied in input order: an end at ``t`` followed by a begin
  at ``t`` closes one frame and opens the next; a begin followed by its end at ``t`` is an
  empty frame. Equal timestamps are never "time going back"; only a strictly smaller one is.
* Sample diffing (collapsed stacks, timestamped samples) emits the ends of the old stack
  before the begins of the new one at the same timestamp, which gives exactly the adjacency
  above.
* LeetCode-style logs use an *inclusive* end (``f:end:5`` means the end of unit 5); here
  ``f:end:5`` means the frame ends at time 5 exactly. Add one to such ends before reading them.

Frame identity is the position on the stack, never the name: ``f`` calling ``f`` gives two
frames (and two call-tree nodes ``f`` and ``f;f``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BEGIN = "B"
END = "E"

#: Units a trace's timestamps can be in. "samples" means one unit per stack sample.
UNITS_TO_MICROSECONDS: dict[str, float] = {
    "s": 1e6,
    "ms": 1e3,
    "us": 1.0,
    "ns": 1e-3,
}


def finite(text: str) -> float:
    """Parse a timestamp or duration; NaN and infinities are refused (they break ordering)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


@dataclass(slots=True)
class Event:
    """A frame begins (``kind == BEGIN``) or ends (``kind == END``) at ``ts`` on ``track``.

    ``depth`` is the frame's position on its track's stack (0 = outermost); parsers leave it at
    -1 and the stack machine fills it in. ``line`` is the 1-based input line the event came
    from (0 when it was synthesised, e.g. an auto-close in lenient mode), so that errors and
    warnings can point at the input.
    """

    kind: str
    ts: float
    name: str
    line: int = 0
    track: str = "main"
    depth: int = -1
