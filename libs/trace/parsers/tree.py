"""Indentation call trees: one frame per line, indented under its caller, with its inclusive
time as the last field::

    main 10
      parse 3
        read 1
      compute 6

Children are laid out one after another from their parent's start, so the tree becomes a
timeline with the same inclusive and exclusive times (a parent's exclusive time is what its
children leave of it, placed after them). Roots follow one another from time 0. Indentation
works as in Python: deeper than the line above opens a child, and a dedent must return to a
level that is open (tabs count as 4 spaces).

Errors: children whose inclusive times add up to more than their parent's is
``NegativeDuration`` (the parent's exclusive time would be negative); lenient repair clips
the child to the room left. A dedent to no open level is ``FormatError``; lenient repair
attaches the line to the nearest shallower open level.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from libs.trace.errors import Diagnostics, FormatError, NegativeDuration
from libs.trace.events import BEGIN, END, Event, finite

# Accumulated float error tolerated when children exactly fill their parent (0.1 + 0.2 > 0.3).
_SLACK = 1e-9


class _Open:
    __slots__ = ("cursor", "end", "indent", "line", "name")

    def __init__(self, indent: int, name: str, start: float, end: float, line: int) -> None:
        self.indent = indent
        self.name = name
        self.cursor = start  # where the next child starts
        self.end = end
        self.line = line


def parse(lines: Iterable[str], diag: Diagnostics) -> Iterator[Event]:
    stack: list[_Open] = []
    root_cursor = 0.0
    for number, raw in enumerate(lines, 1):
        expanded = raw.rstrip("\r\n").expandtabs(4)
        text = expanded.strip()
        if not text or text[0] == "#":
            continue
        indent = len(expanded) - len(expanded.lstrip())
        name, _, amount = text.rpartition(" ")
        name = name.strip()
        try:
            inclusive = finite(amount)
        except ValueError:
            diag.report(FormatError, f"expected 'name INCLUSIVE_TIME', got {text[:80]!r}", number)
            continue
        if not name:
            diag.report(FormatError, f"expected 'name INCLUSIVE_TIME', got {text[:80]!r}", number)
            continue
        if inclusive < 0:
            diag.report(NegativeDuration, f"{name!r} has negative inclusive time {inclusive:g}", number)
            inclusive = 0.0
        # Close every open frame at this indentation or deeper: this line is their sibling
        # or belongs to an ancestor.
        closed_indent = None
        while stack and stack[-1].indent >= indent:
            closing = stack.pop()
            closed_indent = closing.indent
            yield Event(END, closing.end, closing.name, closing.line)
        if closed_indent is not None and closed_indent != indent:
            # Between two open levels: Python's "unindent does not match any outer level".
            diag.report(FormatError, f"dedent to column {indent} matches no open level", number)
        if stack:
            parent = stack[-1]
            start = parent.cursor
            room = parent.end - start
            if inclusive > room + _SLACK * max(1.0, abs(parent.end)):
                diag.report(
                    NegativeDuration,
                    f"children of {parent.name!r} (line {parent.line}) add up to more than its "
                    f"inclusive time: {name!r} needs {inclusive:g}, {max(room, 0.0):g} left",
                    number,
                )
                inclusive = max(room, 0.0)
            end = min(start + inclusive, parent.end)
            parent.cursor = end
        else:
            start = root_cursor
            end = start + inclusive
            root_cursor = end
        stack.append(_Open(indent, name, start, end, number))
        yield Event(BEGIN, start, name, number)
    while stack:
        closing = stack.pop()
        yield Event(END, closing.end, closing.name, closing.line)
