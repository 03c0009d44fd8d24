"""Every drill is a valid Chaos Toolkit experiment that says what it proves, names only
probes and actions that exist with arguments they take, and the runner's verdict follows the
journal: PASS only when every activity succeeded and the steady state held before and after."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from chaoslib.experiment import ensure_experiment_is_valid

from deploy.topology import ROOT
from loadtests.drills import actions, probes, runner

DRILLS = runner.available()
MODULES = {"loadtests.drills.probes": probes, "loadtests.drills.actions": actions}


def activities(experiment: dict) -> list[dict]:
    return [
        *experiment["steady-state-hypothesis"]["probes"],
        *experiment["method"],
        *experiment.get("rollbacks", []),
    ]


def test_the_nine_drills_of_issue_11_are_there():
    tags = {t for name in DRILLS for t in runner.load(name)["tags"] if t.startswith("drill-")}
    assert tags == {f"drill-{i}" for i in range(1, 9)} | ({"drill-9"} & tags), tags
    assert len(DRILLS) >= 9


@pytest.mark.parametrize("name", DRILLS)
def test_each_drill_is_a_valid_experiment_that_says_what_it_proves(name: str):
    experiment = runner.load(name)
    ensure_experiment_is_valid(experiment)
    ext = runner.extension(experiment)
    assert ext["invariant"] and "alert" in ext and ext["needs"], ext
    assert experiment["steady-state-hypothesis"]["probes"], "a drill states its steady state"
    assert set(ext.get("key_figures", [])), "the table shows its key figures"


@pytest.mark.parametrize("name", DRILLS)
def test_each_activity_names_a_function_that_takes_its_arguments(name: str):
    for activity in activities(runner.load(name)):
        provider = activity["provider"]
        assert provider["type"] == "python", activity["name"]
        func = getattr(MODULES[provider["module"]], provider["func"])
        params = inspect.signature(func).parameters
        unknown = set(provider.get("arguments", {})) - set(params)
        assert not unknown, f"{name}/{activity['name']}: {func.__name__} takes no {unknown}"
        required = {
            p for p, v in params.items() if v.default is inspect.Parameter.empty and p != "configuration"
        }
        assert required <= set(provider.get("arguments", {})), f"{name}/{activity['name']} misses {required}"


@pytest.mark.parametrize("name", DRILLS)
def test_a_drill_that_waits_for_an_alert_waits_for_the_one_it_declares(name: str):
    experiment = runner.load(name)
    alert = runner.extension(experiment)["alert"]
    waited = {
        a["provider"]["arguments"]["alertname"]
        for a in experiment["method"]
        if a["provider"]["func"] in ("wait_for_alert", "wait_for_alert_resolved")
    }
    assert waited == ({alert} if alert else set()), (alert, waited)


def run_run(status: str, *, before=True, after=True, failed: str | None = None) -> dict:
    def state(met: bool) -> dict:
        probe = {"activity": {"name": "p", "tolerance": True}, "status": "succeeded", "output": met}
        return {"steady_state_met": met, "probes": [{**probe, "tolerance_met": met}]}

    runs = [{"activity": {"name": "a"}, "status": "succeeded"}]
    if failed:
        runs.append(
            {"activity": {"name": "b"}, "status": "failed", "exception": ["x", f"ActivityFailed: {failed}"]}
        )
    return {
        "status": status,
        "deviated": not after,
        "steady_states": {"before": state(before), "after": state(after)},
        "run": runs,
    }


def test_verdict_pass_only_when_everything_held():
    assert runner.verdict_of(run_run("completed")) == ("PASS", [])


def test_verdict_fail_names_the_failed_activity_and_its_message():
    verdict, evidence = runner.verdict_of(run_run("completed", failed="3 of 40 pages never reached dedup"))
    assert verdict == "FAIL"
    assert any(e.startswith("b: failed:") and "3 of 40 pages" in e for e in evidence), evidence


def test_verdict_fail_when_the_steady_state_deviated():
    verdict, evidence = runner.verdict_of(run_run("completed", after=False))
    assert verdict == "FAIL"
    assert any("steady state after" in e for e in evidence), evidence


def test_a_tiny_experiment_runs_end_to_end_and_writes_its_evidence(tmp_path: Path):
    """The runner on an experiment that needs no stack: a mark, a figure, a verdict, a report."""
    experiment: dict[str, Any] = {
        "version": "1.0.0",
        "title": "tiny",
        "description": "no stack",
        "tags": ["test"],
        "extensions": [
            {
                "name": "proving-ground",
                "invariant": "x",
                "alert": None,
                "needs": [],
                "key_figures": ["held_s"],
            }
        ],
        "steady-state-hypothesis": {
            "title": "no frozen pid",
            "probes": [
                {
                    "type": "probe",
                    "name": "nothing-waits",
                    "tolerance": {"event": "fault_start", "at": 0.0},
                    "provider": {
                        "type": "python",
                        "module": "loadtests.drills.probes",
                        "func": "wait_for_mark",
                        "arguments": {"event": "never", "timeout_s": 0},
                    },
                }
            ],
        },
        "method": [],
    }
    # A steady-state probe that raises: the verdict is FAIL and says which probe.
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(experiment))
    outcome = runner.run(path, {}, tmp_path / "out")
    assert outcome.verdict == "FAIL" and any("nothing-waits" in e for e in outcome.evidence), outcome.evidence
    # A method that holds 0 s and a steady state that holds: PASS, with journal and report.
    experiment["steady-state-hypothesis"]["probes"] = []
    experiment["method"] = [
        {
            "type": "action",
            "name": "hold",
            "provider": {
                "type": "python",
                "module": "loadtests.drills.actions",
                "func": "hold",
                "arguments": {"seconds": 0},
            },
        }
    ]
    del experiment["steady-state-hypothesis"]
    path.write_text(json.dumps(experiment))
    outcome = runner.run(path, {}, tmp_path / "out")
    assert outcome.verdict == "PASS", outcome.evidence
    report = (tmp_path / "out" / "tiny" / "report.md").read_text()
    assert report.startswith("# Drill tiny: PASS")
    assert json.loads((tmp_path / "out" / "tiny" / "journal.json").read_text())["status"] == "completed"


def test_a_drill_whose_stack_is_not_there_is_skip_with_the_reason(tmp_path: Path):
    # An offset under which nothing listens: every need is missing, nothing is injected.
    outcome = runner.run("inference-disconnects", {"port_offset": 7}, tmp_path)
    assert outcome.verdict == "SKIP"
    assert any("inference" in e for e in outcome.evidence), outcome.evidence


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadtests.drills", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_lists_the_drills():
    done = cli()
    assert done.returncode == 0
    assert all(name in done.stdout for name in DRILLS)


def test_cli_unknown_drill_is_exit_2_with_one_line():
    done = cli("no-such-drill")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no-such-drill" in done.stderr and "Traceback" not in done.stderr


def _frozen_targets(configuration: dict[str, Any]) -> tuple[set[str], str]:
    """What frozen-service signals and waits for, and its heartbeat series, as Chaos Toolkit
    substitutes `${...}` from the runner's configuration (the drill's own block, then ours)."""
    from chaoslib import substitute

    experiment = runner.load("frozen-service")
    merged = {**experiment["configuration"], **configuration}
    targets = {
        substitute(a["provider"]["arguments"], merged, {})["service"]
        for a in experiment["method"]
        if a["provider"]["func"] in ("freeze_service", "wait_healthy")
    }
    return targets, runner.series_of(experiment, merged)["heartbeat age (s)"]


def test_frozen_service_freezes_the_crawler_unless_told_otherwise():
    targets, heartbeat = _frozen_targets({"port_offset": 0})
    assert targets == {"crawler"}
    assert heartbeat == 'time() - worker_heartbeat_timestamp_seconds{job="crawler"}'
    targets, heartbeat = _frozen_targets({"frozen_service": "dedup"})
    assert targets == {"dedup"}
    assert heartbeat == 'time() - worker_heartbeat_timestamp_seconds{job="dedup"}'


def test_cli_set_takes_a_declared_setting_of_a_known_service():
    from loadtests.drills.__main__ import _settings

    assert _settings(["frozen_service=dedup"], ["frozen-service"]) == {"frozen_service": "dedup"}
    assert _settings([], ["crawler-kill"]) == {}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("frozen-service", "--set", "frozen_service"), "KEY=VALUE"),
        (("frozen-service", "--set", "nope=1"), "'nope' is not a setting"),
        (("crawler-kill", "--set", "frozen_service=dedup"), "'frozen_service' is not a setting"),
        (("frozen-service", "--set", "frozen_service=nope"), "no such service"),
    ],
)
def test_cli_bad_set_is_exit_2_with_one_line(args: tuple[str, ...], says: str):
    done = cli(*args)
    assert done.returncode == 2, done.stdout
    assert done.stderr.count("\n") == 1 and says in done.stderr and "Traceback" not in done.stderr


def test_a_figure_with_a_bar_stays_in_its_table_cell():
    assert runner._cell("ServiceDown|WorkerHeartbeatMissing never fired") == (
        "ServiceDown\\|WorkerHeartbeatMissing never fired"
    )
    assert runner._cell(1.5) == "1.5" and runner._cell(None) == "-"


@pytest.mark.parametrize(
    ("after_5xx", "healthy", "passes"),
    [
        ([2.36, 2.4, 2.2], [1.38, 1.3, 1.4], True),  # the per-host backoff doubles the delay
        ([2.34, 2.3, 2.4], [1.3, 1.29, 1.33], True),  # the run whose faulty hosts' gap after a 2xx was 2.0 s
        ([1.29, 1.3, 1.28], [1.31, 1.3, 1.32], False),  # no backoff: equal medians but for noise
        ([1.35, 1.36, 1.34], [1.31, 1.3, 1.32], False),  # longer by noise only is not a backoff
        ([1.0], [], False),  # nothing to compare with
    ],
)
def test_backoff_is_judged_on_a_ratio_not_on_noise(
    after_5xx: list[float], healthy: list[float], passes: bool
):
    from chaoslib.exceptions import ActivityFailed

    from loadtests.drills import record

    record.reset()
    if passes:
        assert probes.judge_backoff(after_5xx, healthy, 1.25)["ratio"] >= 1.25
    else:
        with pytest.raises(ActivityFailed, match=r"did not back off|too few"):
            probes.judge_backoff(after_5xx, healthy, 1.25)
