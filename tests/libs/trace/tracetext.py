"""Test helpers: render begin/end operations as text in each line format, and read a text
back into a call tree, so tests state traces once and check them in every syntax."""

from __future__ import annotations

import io
from collections.abc import Iterable

from libs.trace import CallTree, Trace, read_trace

Op = tuple[str, str, float]  # (name, "B" | "E", ts)


def startend(ops: Iterable[Op]) -> str:
    return "".join(f"{name}:{'start' if kind == 'B' else 'end'}:{ts:g}\n" for name, kind, ts in ops)


def phase(ops: Iterable[Op]) -> str:
    return "".join(f"{ts:g} {name} {kind}\n" for name, kind, ts in ops)


RENDER = {"startend": startend, "phase": phase}


def read(text: str, fmt: str = "auto", **options: object) -> Trace:
    return read_trace(io.StringIO(text), format=fmt, source="t.log", **options)  # type: ignore[arg-type]


def tree_of(text: str, fmt: str = "auto", **options: object) -> tuple[CallTree, Trace]:
    trace = read(text, fmt, **options)
    return CallTree.from_events(trace.events), trace


def paths(tree: CallTree) -> dict[str, tuple[int, float, float]]:
    """{"a;b": (calls, inclusive, exclusive)} for every node."""
    return {";".join(path): (node.calls, node.inclusive, node.exclusive) for path, node in tree.root.walk()}
