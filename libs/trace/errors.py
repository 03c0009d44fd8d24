"""Errors a trace can have, each naming the input file and line, and lenient-mode warnings.

Every problem with the *input* is a :class:`TraceError`; the CLI turns it into one line on
stderr and exit status 2. The subclasses are grouped by cause so callers (and tests) can tell
them apart; in lenient mode the same findings become :class:`TraceWarning` records instead and the
stack machine repairs the trace (see ``stack.py`` for the repair rules).
"""

from __future__ import annotations

from dataclasses import dataclass


class TraceError(Exception):
    """The input is not a valid trace; ``str()`` is ``"<source>:<line>: <message>"``."""

    def __init__(self, message: str, *, source: str = "<input>", line: int = 0) -> None:
        self.message = message
        self.source = source
        self.line = line
        super().__init__(f"{source}:{line}: {message}" if line else f"{source}: {message}")


class FormatError(TraceError):
    """A line does not parse in the input format (bad number, missing field, bad JSON)."""


class MissingEnd(TraceError):
    """A frame was begun but the input ended before its end (or a span's parent never came)."""


class UnmatchedEnd(TraceError):
    """An end event names a frame that is not open at all."""


class CrossedNesting(TraceError):
    """An end event closes a frame that is open but not on top of the stack (or a span
    sticks out of its parent)."""


class NegativeDuration(TraceError):
    """A frame ends before it begins, or its children take more time than it has."""


class TimeWentBack(TraceError):
    """A timestamp is smaller than the one before it on the same track."""


@dataclass(frozen=True, slots=True)
class TraceWarning:
    """A problem found and repaired in lenient mode."""

    kind: str  # the TraceError subclass name it would have raised
    message: str
    source: str
    line: int

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.message} [{self.kind}]"


#: Warnings a lenient run keeps (the first ones); later ones are only counted, so a badly broken
#: input of any length costs O(1) memory for its diagnostics.
KEEP_WARNINGS = 100


class Diagnostics:
    """Where the stack machine and parsers report findings: raise (strict) or record (lenient).

    Lenient mode keeps the first ``keep`` warnings in ``warnings`` and counts every one in
    ``count`` (and per kind in ``kinds``), so memory stays bounded however broken the input.
    """

    def __init__(self, *, source: str = "<input>", lenient: bool = False, keep: int = KEEP_WARNINGS) -> None:
        if keep < 0:
            raise ValueError(f"keep must not be negative, got {keep}")
        self.source = source
        self.lenient = lenient
        self.keep = keep
        self.warnings: list[TraceWarning] = []
        self.count = 0
        self.kinds: dict[str, int] = {}

    def report(self, error: type[TraceError], message: str, line: int) -> None:
        """Raise ``error`` in strict mode; in lenient mode record it and return so the caller
        can apply its repair rule."""
        if not self.lenient:
            raise error(message, source=self.source, line=line)
        kind = error.__name__
        self.count += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if len(self.warnings) < self.keep:
            self.warnings.append(TraceWarning(kind, message, self.source, line))
