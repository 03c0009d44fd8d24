"""libs.trace: stack traces and profiler logs -> one event stream -> profiles.

Inputs (``parsers/``): start/end logs, ``ts name B|E`` phase lines, collapsed stacks (py-spy
``--format raw``), timestamped stack samples (JSON lines), indentation call trees and the span
log of libs.service. Every input becomes one stream of begin/end :class:`Event` s, validated
by the stack machine (``stack.py``) and aggregated into a :class:`CallTree`
(``calltree.py``); writers (``writers/``) produce a table, Chrome trace JSON, collapsed
stacks, speedscope JSON and an SVG flame graph.

One interval convention everywhere: a frame occupies the half-open interval ``[begin, end)``;
events with equal timestamps apply in input order (``events.py`` states the details).
"""

from libs.trace.calltree import CallTree, FunctionStats, Node
from libs.trace.errors import (
    CrossedNesting,
    FormatError,
    MissingEnd,
    NegativeDuration,
    TimeWentBack,
    TraceError,
    TraceWarning,
    UnmatchedEnd,
)
from libs.trace.events import BEGIN, END, Event
from libs.trace.pipeline import Trace, read_trace

__all__ = [
    "BEGIN",
    "END",
    "CallTree",
    "CrossedNesting",
    "Event",
    "FormatError",
    "FunctionStats",
    "MissingEnd",
    "NegativeDuration",
    "Node",
    "TimeWentBack",
    "Trace",
    "TraceError",
    "TraceWarning",
    "UnmatchedEnd",
    "read_trace",
]
