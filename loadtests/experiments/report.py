"""What an experiment leaves behind: reports/experiments/<name>/{report.json, results.csv, report.md, *.png}.

The order is the method: the hypothesis and the prediction are recorded (and printed, with the
time) before the load runs; the measured rows come next; then the client/server cross-checks,
and only then the answer, which says whether the measurement agrees with the prediction. A
report whose cross-checks fail says so first: its numbers rest on a broken load generator or
a broken counter, and the answer is withheld.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TOLERANCE = 0.01  # client and server counts must agree within 1%


@dataclass
class Check:
    """One client count held against the server's counter for the same thing."""

    what: str
    client: float
    server: float
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        scale = max(abs(self.client), abs(self.server))
        return abs(self.client - self.server) <= self.tolerance * scale

    def line(self) -> str:
        mark = "ok" if self.ok else "MISMATCH"
        return f"{self.what}: client {self.client:g}, server {self.server:g} ({mark})"


@dataclass
class Report:
    name: str
    title: str
    question: str
    hypothesis: str = ""
    prediction: str = ""
    predicted: dict[str, Any] = field(default_factory=dict)
    predicted_at: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)  # headline figures the answer rests on
    checks: list[Check] = field(default_factory=list)
    answer: str = ""
    agrees: bool | None = None
    takeaway: str = ""
    plots: list[str] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def predict(self, hypothesis: str, prediction: str, **values: Any) -> None:
        """Fix the hypothesis and prediction before the load runs (printed with the time)."""
        self.hypothesis, self.prediction, self.predicted = hypothesis, prediction, values
        self.predicted_at = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(self.predicted_at))
        print(f"[{self.name}] {stamp} hypothesis: {hypothesis}", flush=True)
        print(f"[{self.name}] {stamp} prediction: {prediction}", flush=True)

    def check(self, what: str, client: float, server: float, tolerance: float = TOLERANCE) -> Check:
        c = Check(what, float(client), float(server), tolerance)
        self.checks.append(c)
        return c

    @property
    def checks_hold(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def conclude(self, agrees: bool, answer: str, takeaway: str) -> None:
        self.agrees, self.answer, self.takeaway = agrees, answer, takeaway

    @property
    def verdict(self) -> str:
        if not self.checks_hold:
            return "INVALID (cross-check failed)"
        if self.agrees is None:
            return "no verdict"
        return "agrees" if self.agrees else "disagrees"

    def write(self, out: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        self.meta.setdefault("written_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.meta.setdefault("command", " ".join([Path(sys.executable).name, *sys.argv]))
        self.meta.setdefault("python", platform.python_version())
        self.meta.setdefault("cpus", os.cpu_count())
        self.meta.setdefault("loadavg_at_end", [round(x, 2) for x in os.getloadavg()])
        data = asdict(self)
        data["checks"] = [{**asdict(c), "ok": c.ok} for c in self.checks]
        data["checks_hold"] = self.checks_hold
        data["verdict"] = self.verdict
        (out / "report.json").write_text(json.dumps(_finite(data), indent=2) + "\n")
        if self.rows:
            columns = list(dict.fromkeys(k for row in self.rows for k in row))
            with (out / "results.csv").open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.rows)
        (out / "report.md").write_text(self.markdown())
        return out

    def markdown(self) -> str:
        lines = [f"# {self.title}", "", f"**Question.** {self.question}", ""]
        lines += [
            f"**Hypothesis.** {self.hypothesis}",
            "",
            "**Prediction** (fixed before the load ran).",
            "",
        ]
        lines += [self.prediction, ""]
        if self.rows:
            columns = list(dict.fromkeys(k for row in self.rows for k in row))
            lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in self.rows]
            lines.append("")
        for plot in self.plots:
            lines += [f"![{plot}]({plot})", ""]
        lines += [f"**Client vs server** ({'all hold' if self.checks_hold else 'FAILED'}, within 1%):", ""]
        lines += [f"- {c.line()}" for c in self.checks] + [""]
        lines += [f"**Answer ({self.verdict}).** {self.answer}", "", f"**Takeaway.** {self.takeaway}", ""]
        if self.notes:
            lines += ["**Notes.**", ""] + [f"- {n}" for n in self.notes] + [""]
        meta = ", ".join(f"{k}: {v}" for k, v in self.meta.items())
        lines += [f"<sub>{meta}</sub>", ""]
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings so the file stays strict JSON."""
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (8, 5)) -> tuple[Any, Any]:
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    return fig, axes


def save(fig: Any, report: Report, out: Path, name: str) -> None:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    report.plots.append(name)
