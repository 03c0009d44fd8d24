"""Input format auto-detection from the first lines of a stream.

Only the head of the input is examined (``HEAD_LINES`` meaningful lines), so detection works
on stdin and never reads a large file twice. The rules, first match wins:

1. a JSON object with ``span_id`` -> ``spans``; with ``stack`` -> ``samples``;
2. ``name:start:ts`` / ``name:end:ts`` -> ``startend``;
3. ``ts name B|E`` -> ``phase``;
4. any indented line ending in a number -> ``tree``;
5. ``frames COUNT`` (integer count) -> ``collapsed``.

Rules 1, 2, 3 and 5 look at the first meaningful line only; rule 4 at the whole head. A line
that is only a count (``" 2"``) is a collapsed stack with no frames, as py-spy writes for
samples taken while the interpreter starts or exits: it is not the line that decides, and a
head of nothing else is collapsed.

A one-level tree without indentation (``main 10``) reads the same as a collapsed stack; it is
detected as collapsed (pass ``--format tree`` to override).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from itertools import chain

FORMATS = ("startend", "phase", "collapsed", "samples", "tree", "spans")
HEAD_LINES = 50

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_STARTEND = re.compile(rf"^.+:(?:start|begin|end):\s*{_NUMBER}$")
_PHASE = re.compile(rf"^{_NUMBER}\s+\S.*\s+[BE]$")
_TREE = re.compile(rf"^[ \t]+\S.*\s{_NUMBER}$")
_COLLAPSED = re.compile(r"^\S.*\s\d+$")
_IDLE = re.compile(r"^\s*\d+$")  # a collapsed stack without frames: idle samples


class UnknownFormat(ValueError):
    """No rule matched the head of the input."""


def detect(head: list[str]) -> str:
    lines = [line.rstrip("\r\n") for line in head if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise UnknownFormat("the input is empty")
    framed = [line for line in lines if not _IDLE.match(line)]
    if not framed:
        return "collapsed"
    if len(framed) < len(lines):
        lines = framed
    first = lines[0].strip()
    if first.startswith("{"):
        try:
            record = json.loads(first)
        except ValueError:
            record = None
        if isinstance(record, dict):
            if "span_id" in record:
                return "spans"
            if "stack" in record:
                return "samples"
        raise UnknownFormat("a JSON line that is neither a span record nor a stack sample")
    # Decide on the first line (so a malformed later line gets its own line-numbered error
    # from the parser rather than an "unknown format"), except that any indented line in the
    # head makes it a tree, whose first line alone looks like a collapsed stack.
    if _STARTEND.match(first):
        return "startend"
    if _PHASE.match(first):
        return "phase"
    if any(_TREE.match(line) for line in lines):
        return "tree"
    if _COLLAPSED.match(first):
        return "collapsed"
    raise UnknownFormat(f"cannot tell the input format from its first line {first[:60]!r}; pass --format")


def peek(stream: Iterable[str]) -> tuple[list[str], Iterator[str]]:
    """Read the head of ``stream`` and return it with an iterator over the *whole* input."""
    rest = iter(stream)
    head: list[str] = []
    meaningful = 0
    for line in rest:
        head.append(line)
        if line.strip():
            meaningful += 1
            if meaningful >= HEAD_LINES:
                break
    return head, chain(head, rest)
