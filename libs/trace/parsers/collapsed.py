"""Collapsed stacks, as ``py-spy record --format raw`` and flamegraph.pl's stackcollapse write
them: ``root;child;leaf COUNT`` per line.

Collapsed stacks have no timestamps. Each line is laid on a synthetic timeline in the order
read: it lasts COUNT units (unit "samples"), and consecutive lines are diffed by longest
common prefix (``stackdiff.py``), so frames shared by adjacent lines stay open. Per call path
the inclusive and exclusive sample counts are therefore exactly those of the file; only the
number of "calls" depends on line order. A line with an empty stack (``" 3"``) is idle time:
it advances the timeline without any frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from libs.trace.errors import Diagnostics, FormatError
from libs.trace.events import Event
from libs.trace.stackdiff import StackDiffer


def parse(lines: Iterable[str], diag: Diagnostics) -> Iterator[Event]:
    differ = StackDiffer()
    now = 0
    number = 0
    for number, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text[0] == "#":
            continue
        stack, _, count_text = text.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            diag.report(FormatError, f"expected 'frame;frame;... COUNT', got {text[:80]!r}", number)
            continue
        if count < 0:
            diag.report(FormatError, f"sample count must not be negative, got {count}", number)
            continue
        stack = stack.rstrip()
        # A line with no frames at all (" 3") is samples of a thread with an empty Python
        # stack, as py-spy can record while an interpreter starts or exits: time passes, no
        # frame owns it.
        frames = stack.split(";") if stack else []
        if "" in frames:
            diag.report(FormatError, f"empty frame name in stack {stack[:80]!r}", number)
            continue
        yield from differ.advance(frames, now, number)
        now += count
    yield from differ.close(now, number)
