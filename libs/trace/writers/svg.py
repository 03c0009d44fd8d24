"""A self-contained SVG flame graph: no script, no external style or font.

The root ("all") is the bottom row, each caller sits under its callees, and a frame's width is
proportional to its inclusive time. Every frame is a ``<g>`` with a ``<title>`` (the tooltip:
name, inclusive and exclusive time with shares of the total), a ``<rect>`` and, when wide
enough, a ``<text>`` label cut to fit. Frames narrower than ``MIN_WIDTH`` pixels are left
out, with everything above them (they would be invisible).
"""

from __future__ import annotations

import hashlib
from xml.sax.saxutils import escape

from libs.trace.calltree import CallTree, Node

WIDTH = 1200
ROW = 17
PAD = 10
FONT = 12
CHAR = 7.0  # average glyph width at FONT px in a monospace-ish estimate, for label cutting
MIN_WIDTH = 0.1


def _colour(name: str) -> str:
    # Stable warm colours per name (flamegraph.pl's "hot" palette), so a function keeps its
    # colour across graphs.
    digest = hashlib.blake2b(name.encode(), digest_size=3).digest()
    return f"rgb({205 + digest[0] % 50},{digest[1] % 230},{digest[2] % 55})"


def _num(value: float, unit: str) -> str:
    return f"{round(value):,} samples" if unit == "samples" else f"{value:.6g} {unit}"


def _depth(tree: CallTree) -> int:
    return max((depth for depth, _ in tree.root.descend()), default=0)


def render(tree: CallTree, *, unit: str, title: str = "Flame graph") -> str:
    total = tree.total
    depth = _depth(tree)
    height = (depth + 1) * ROW + 3 * PAD + FONT
    scale = (WIDTH - 2 * PAD) / total if total > 0 else 0.0
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="{FONT}">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#f8f8f8"/>',
        f'<text x="{WIDTH / 2}" y="{PAD + FONT}" text-anchor="middle" font-size="{FONT + 2}">'
        f"{escape(title)}</text>",
    ]

    def frame(node: Node, level: int, x: float, label: str) -> None:
        width = node.inclusive * scale
        y = height - PAD - (level + 1) * ROW
        share = 100 * node.inclusive / total if total else 0.0
        # The virtual root has no calls of its own: show how many outermost frames it holds.
        calls = node.calls if node is not tree.root else sum(c.calls for c in node.children.values())
        tip = (
            f"{label} — inclusive {_num(node.inclusive, unit)} ({share:.2f}%), "
            f"exclusive {_num(node.exclusive, unit)}, calls {calls:,}"
        )
        out.append(f"<g><title>{escape(tip)}</title>")
        out.append(
            f'<rect x="{x:.2f}" y="{y}" width="{width:.2f}" height="{ROW - 1}" '
            f'fill="{_colour(label)}" rx="2"/>'
        )
        fits = int((width - 6) // CHAR)
        if fits >= 3:
            text = label if len(label) <= fits else label[: fits - 2] + ".."
            out.append(f'<text x="{x + 3:.2f}" y="{y + ROW - 5}">{escape(text)}</text>')
        out.append("</g>")

    root = tree.root
    frame(root, 0, PAD, "all")
    todo: list[tuple[Node, int, float]] = [(root, 0, float(PAD))]
    while todo:
        node, level, x = todo.pop()
        cursor = x
        for child in node.children.values():
            if child.inclusive * scale >= MIN_WIDTH:
                frame(child, level + 1, cursor, child.name)
                todo.append((child, level + 1, cursor))
            cursor += child.inclusive * scale
    out.append("</svg>")
    return "\n".join(out) + "\n"
