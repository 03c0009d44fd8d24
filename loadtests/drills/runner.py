"""Run a drill (a Chaos Toolkit experiment), decide its verdict, and write its evidence.

A drill is `loadtests/drills/<name>.json`, a Chaos Toolkit experiment with one extension of
ours (`"name": "proving-ground"`) saying what the drill proves:

    invariant    the property that must hold through the fault (one sentence)
    alert        the Prometheus alert that must fire during the fault and resolve after it
    needs        what the stack must run for the drill to mean anything ("redis", "faultproxy",
                 "root"); a drill whose needs are missing is SKIP, with the reason
    key_figures  names of record figures shown in the table
    series       {label: PromQL} drawn on the timeline

Verdict: PASS when the steady-state hypothesis held before and after the method, every
activity of the method succeeded (waiting probes raise when what they wait for never comes),
and the journal says "completed"; FAIL otherwise, with each failed activity's message as
evidence. Rollbacks always run. Writes reports/drills/<name>/{journal.json, report.md,
timeline.png}.
"""

from __future__ import annotations

import copy
import json
import logging
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deploy.topology import ROOT
from loadtests.drills import record, stack

DRILLS = Path(__file__).resolve().parent
REPORTS = ROOT / "reports" / "drills"
EXTENSION = "proving-ground"


@dataclass
class Outcome:
    name: str
    title: str
    verdict: str  # PASS, FAIL, SKIP
    evidence: list[str]
    figures: dict[str, Any]
    key_figures: list[str]
    marks: dict[str, float]
    started: float
    ended: float
    journal: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def duration_s(self) -> float:
        return round(self.ended - self.started, 1)

    def key_text(self) -> str:
        shown = [f"{k}={self.figures[k]}" for k in self.key_figures if k in self.figures]
        return ", ".join(shown) or "-"


def available() -> list[str]:
    """Every drill, in the order of issue 11 (its `drill-N` tag; 3a before 3b by name)."""

    def number(name: str) -> tuple[int, str]:
        tags = json.loads((DRILLS / f"{name}.json").read_text(encoding="utf-8")).get("tags", [])
        n = next((int(t[6:]) for t in tags if t.startswith("drill-") and t[6:].isdigit()), 99)
        return n, name

    return sorted((p.stem for p in DRILLS.glob("*.json")), key=number)


def load(name: str | Path) -> dict[str, Any]:
    """A drill by name (loadtests/drills/<name>.json) or an experiment file by path."""
    path = name if isinstance(name, Path) else DRILLS / f"{name}.json"
    if not path.exists():
        raise ValueError(f"no drill {name!r}; drills: {', '.join(available())}")
    return json.loads(path.read_text(encoding="utf-8"))


def extension(experiment: dict[str, Any]) -> dict[str, Any]:
    return next((e for e in experiment.get("extensions", []) if e.get("name") == EXTENSION), {})


def missing_needs(needs: list[str], configuration: dict[str, Any]) -> list[str]:
    """What the running stack lacks for this drill (each with how to get it)."""
    from loadtests.drills import actions, probes

    missing = []
    for need in needs:
        if need == "redis" and not probes.service_healthy("redis", configuration):
            missing.append("redis (install redis-server with `make setup`, then `make run` starts it)")
        elif need == "faultproxy":
            try:
                httpx.get(f"{actions.toxiproxy_url(configuration)}/proxies", timeout=2).raise_for_status()
            except httpx.HTTPError:
                missing.append(f"a Toxiproxy API at {actions.toxiproxy_url(configuration)}")
        elif need == "root":
            import os

            if os.geteuid() != 0:
                missing.append("root (the drill mounts a small tmpfs)")
            elif not actions.crawler_data_dir(configuration).is_dir():
                missing.append(
                    f"the crawler's data dir {actions.crawler_data_dir(configuration)} (--var-dir)"
                )
        elif need not in ("redis", "faultproxy", "root") and not probes.service_healthy(need, configuration):
            missing.append(f"{need} (not answering)")
    return missing


def _activity_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for run in runs:
        name = run["activity"]["name"]
        if run["status"] != "succeeded":
            message = (run.get("exception") or [""])[-1].strip()
            message = message.replace("chaoslib.exceptions.ActivityFailed: ", "")
            lines.append(f"{name}: {run['status']}: {message}")
    return lines


def verdict_of(journal: dict[str, Any]) -> tuple[str, list[str]]:
    """PASS or FAIL, and why (each failing activity or out-of-tolerance probe)."""
    evidence: list[str] = []
    states = journal.get("steady_states", {})
    for when in ("before", "after"):
        state = states.get(when)
        if state is None:  # no hypothesis, or the run stopped before it (the status says so)
            continue
        for probe in state.get("probes", []):
            if probe["status"] != "succeeded" or not probe.get("tolerance_met", True):
                evidence.append(
                    f"steady state {when}: {probe['activity']['name']} = {probe.get('output')!r}, "
                    f"expected {probe['activity'].get('tolerance')!r}"
                )
    evidence += _activity_lines(journal.get("run", []))
    if journal.get("status") != "completed":
        evidence.append(f"journal status {journal.get('status')}")
    if journal.get("deviated"):
        evidence.append("the steady state deviated")
    return ("PASS" if not evidence else "FAIL"), evidence


def run(
    name: str | Path,
    configuration: dict[str, Any] | None = None,
    out: Path = REPORTS,
    skip: tuple[str, ...] = (),
) -> Outcome:
    """Run one drill; `skip` leaves out method activities by name (a test that proves the
    invariant and the alert firing may leave the slow alert-resolves wait to `make drills`)."""
    from chaoslib.experiment import run_experiment

    experiment = copy.deepcopy(load(name))
    experiment["method"] = [a for a in experiment["method"] if a["name"] not in skip]
    name = name.stem if isinstance(name, Path) else name
    ext = extension(experiment)
    configuration = {**experiment.get("configuration", {}), **(configuration or {})}
    experiment["configuration"] = configuration
    record.reset()
    started = time.time()
    missing = missing_needs(ext.get("needs", []), configuration)
    if missing:
        outcome = Outcome(
            name,
            experiment["title"],
            "SKIP",
            [f"needs {m}" for m in missing],
            {},
            [],
            {},
            started,
            time.time(),
        )
        write(outcome, experiment, configuration, out)
        return outcome
    logging.getLogger("chaostoolkit").setLevel(logging.CRITICAL + 1)  # the journal holds the rest
    journal = run_experiment(experiment, settings={"runtime": {"rollbacks": {"strategy": "always"}}})
    ended = time.time()
    verdict, evidence = verdict_of(journal)
    rollback_errors = _activity_lines(journal.get("rollbacks", []))
    evidence += [f"rollback {line}" for line in rollback_errors]
    if rollback_errors:
        verdict = "FAIL"
    outcome = Outcome(
        name,
        experiment["title"],
        verdict,
        evidence,
        dict(record.RECORD.figures),
        list(ext.get("key_figures", [])),
        dict(record.RECORD.marks),
        started,
        ended,
        journal,
    )
    write(outcome, experiment, configuration, out)
    return outcome


# -- evidence ----------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _cell(value: Any) -> str:
    """A value in a markdown table cell (an alert pair `A|B` must not split the row)."""
    return _fmt(value).replace("|", "\\|")


def series_of(experiment: dict[str, Any], configuration: dict[str, Any]) -> dict[str, str]:
    """The timeline's PromQL series, `${key}` replaced from the configuration (as Chaos Toolkit
    does in activity arguments), e.g. frozen-service's `${frozen_service}`."""
    series: dict[str, str] = dict(extension(experiment).get("series", {}))
    return {label: string.Template(q).safe_substitute(configuration) for label, q in series.items()}


def write(outcome: Outcome, experiment: dict[str, Any], configuration: dict[str, Any], out: Path) -> Path:
    folder = out / outcome.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "journal.json").write_text(json.dumps(outcome.journal or {}, indent=2, default=str) + "\n")
    png = folder / "timeline.png"
    if outcome.verdict != "SKIP":
        try:
            timeline(outcome, experiment, configuration, png)
        except Exception as exc:
            outcome.evidence.append(f"timeline not drawn: {exc}")
    ext = extension(experiment)
    lines = [
        f"# Drill {outcome.name}: {outcome.verdict}",
        "",
        f"**{outcome.title}**",
        "",
        experiment.get("description", ""),
        "",
        f"- Invariant: {ext.get('invariant', '-')}",
        f"- Alert that must fire and resolve: {ext.get('alert') or '-'}",
        f"- Ran: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(outcome.started))}, "
        f"{outcome.duration_s:g} s",
        f"- Time to detect: {_fmt(outcome.figures.get('time_to_detect_s'))} s; "
        f"time to recover: {_fmt(outcome.figures.get('time_to_recover_s'))} s",
        "",
        "## Evidence",
        "",
    ]
    lines += [f"- {e}" for e in outcome.evidence] or [
        "- every activity succeeded; steady state held before and after"
    ]
    lines += ["", "## Figures", "", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in outcome.figures.items()]
    lines += ["", "## Timeline", ""]
    t0 = outcome.started
    lines += [
        f"- +{m - t0:.1f} s: {event}" for event, m in sorted(outcome.marks.items(), key=lambda kv: kv[1])
    ]
    if png.exists():
        lines += ["", "![timeline](timeline.png)"]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return folder


def query_range(query: str, start: float, end: float, configuration: dict[str, Any]) -> list[dict]:
    step = max(1.0, (end - start) / 300)
    r = httpx.get(
        f"{stack.url('prometheus', configuration)}/api/v1/query_range",
        params={"query": query, "start": start, "end": end, "step": step},
        timeout=15,
    )
    r.raise_for_status()
    return r.json()["data"]["result"]


def timeline(outcome: Outcome, experiment: dict[str, Any], configuration: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ext = extension(experiment)
    series = series_of(experiment, configuration)
    if ext.get("alert"):
        series[f"ALERTS {ext['alert']} (1 pending, 2 firing)"] = (
            f'max(ALERTS{{alertname="{ext["alert"]}",alertstate="firing"}}) * 2 '
            f'or max(ALERTS{{alertname="{ext["alert"]}",alertstate="pending"}})'
        )
    if not series:
        return
    start, end = outcome.started - 15, outcome.ended + 5
    fig, axes = plt.subplots(len(series), 1, figsize=(9, 1.9 * len(series) + 0.6), sharex=True, squeeze=False)
    for ax, (label, query) in zip(axes[:, 0], series.items(), strict=True):
        for result in query_range(query, start, end, configuration):
            xs = [float(t) - outcome.started for t, _ in result["values"]]
            ys = [float(v) for _, v in result["values"]]
            tag = ",".join(
                f"{k}={v}" for k, v in result["metric"].items() if k not in ("__name__", "instance")
            )
            ax.plot(xs, ys, label=tag[:40] or None, linewidth=1.2)
        ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=6, loc="upper left")
        for event, at in outcome.marks.items():
            if event.startswith("fault_") or event in ("detected", "recovered"):
                color = {"fault_start": "red", "fault_end": "green", "detected": "orange"}.get(event, "blue")
                ax.axvline(at - outcome.started, color=color, linestyle="--", linewidth=0.8)
    axes[0, 0].set_title(
        f"{outcome.name}: {outcome.verdict}  (red: fault, green: fault ends, orange: alert fires, "
        "blue: recovered)",
        fontsize=8,
    )
    axes[-1, 0].set_xlabel("seconds from the drill's start")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def table(outcomes: list[Outcome]) -> str:
    head = "| drill | verdict | key figures | time to detect (s) | time to recover (s) | duration (s) |"
    rows = [head, "|---|---|---|---|---|---|"]
    for o in outcomes:
        detect, recover = _fmt(o.figures.get("time_to_detect_s")), _fmt(o.figures.get("time_to_recover_s"))
        rows.append(f"| {o.name} | {o.verdict} | {o.key_text()} | {detect} | {recover} | {o.duration_s:g} |")
    return "\n".join(rows)
