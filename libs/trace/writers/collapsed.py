"""Collapsed stacks for flamegraph.pl (and speedscope, and this tool's own reader):
``root;child;leaf WEIGHT``, one line per call path with exclusive time.

Weights must be integers: sample counts when the unit is "samples" (so collapsed in, collapsed
out is exact), otherwise microseconds (rounded). A ``;`` inside a frame name would split the
frame, so it is written as ``:``.
"""

from __future__ import annotations

from typing import TextIO

from libs.trace.calltree import CallTree
from libs.trace.events import UNITS_TO_MICROSECONDS


def weight_scale(unit: str) -> float:
    return 1.0 if unit == "samples" else UNITS_TO_MICROSECONDS[unit]


def write(tree: CallTree, out: TextIO, *, unit: str) -> int:
    """Write every path whose weight rounds above zero; returns the lines written.

    Linear in the size of the tree plus the output at any depth: the current path is kept as
    a list (push/pop as the walk goes down and up) and joined only for a line written."""
    scale = weight_scale(unit)
    lines = 0
    path: list[str] = []
    for depth, node in tree.root.descend():
        del path[depth - 1 :]
        path.append(node.name.replace(";", ":").replace("\n", " "))
        weight = round(node.exclusive * scale)
        if weight > 0:
            out.write(";".join(path))
            out.write(f" {weight}\n")
            lines += 1
    return lines
