"""The per-function text table: calls, inclusive and exclusive time, each with its share of the
total, sortable and truncatable."""

from __future__ import annotations

from libs.trace.calltree import CallTree, FunctionStats

SORT_KEYS = ("inclusive", "exclusive", "calls", "name")


def _order(stats: list[FunctionStats], sort: str) -> list[FunctionStats]:
    if sort == "name":
        return sorted(stats, key=lambda s: s.name)
    if sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}, got {sort!r}")
    # Largest first; ties by name so the output is deterministic.
    return sorted(stats, key=lambda s: (-getattr(s, sort), s.name))


def _num(value: float, unit: str) -> str:
    if unit == "samples":
        return f"{round(value):,}"
    return f"{value:.6g}"


def render(tree: CallTree, unit: str, *, sort: str = "inclusive", top: int | None = None) -> str:
    rows = _order(tree.functions(), sort)
    shown = rows if top is None else rows[:top]
    total = tree.total
    header = ("function", "calls", f"inclusive ({unit})", "incl%", f"exclusive ({unit})", "excl%")
    body = [
        (
            s.name,
            f"{s.calls:,}",
            _num(s.inclusive, unit),
            f"{100 * s.inclusive / total:.1f}%" if total else "-",
            _num(s.exclusive, unit),
            f"{100 * s.exclusive / total:.1f}%" if total else "-",
        )
        for s in shown
    ]
    name_width = min(max([len(header[0])] + [len(r[0]) for r in body]), 80)
    widths = [name_width] + [max([len(header[i])] + [len(r[i]) for r in body]) for i in range(1, 6)]

    def line(cells: tuple[str, ...]) -> str:
        name = cells[0] if len(cells[0]) <= name_width else cells[0][: name_width - 1] + "…"
        numbers = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([name.ljust(widths[0]), *numbers])

    out = [line(header), line(tuple("-" * w for w in widths))]
    out.extend(line(r) for r in body)
    footer = f"total {_num(total, unit)} {unit} in {len(rows)} functions"
    if len(shown) < len(rows):
        footer += f" ({len(rows) - len(shown)} not shown)"
    out.append(footer)
    return "\n".join(out) + "\n"
