"""Every experiment, as a bounded smoke run (`--smoke`: seconds, small loads) against a real stack.

One stack for the module (deploy.launch, what `make run REDIS=1` runs, on shifted ports, without
Prometheus and Grafana); each experiment runs as the command a user types and must write its
report (JSON, CSV, markdown, a PNG) with every client/server cross-check holding. Nothing here
asserts a latency or a throughput: on a shared machine those are measurements, not facts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from deploy.topology import ROOT, local_services
from libs.testkit.net import free_port_offset
from tests.conftest import need_binary
from tests.launched import launched

pytestmark = pytest.mark.slow

SERVICES = "websim,dedup,crawler,inference"


def _free_offset() -> int:
    return free_port_offset([p for s in local_services(redis=True) for p in s.ports], start=6000, step=149)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, bool]]:
    """(port offset, whether Redis runs) of a stack started for this module, stopped after it."""
    redis = shutil.which("redis-server") is not None
    var_dir = tmp_path_factory.mktemp("experiments-stack")
    offset = _free_offset()
    only = ("redis," if redis else "") + SERVICES
    argv = ["--only", only, "--port-offset", str(offset)]
    argv += ["--var-dir", str(var_dir)] + (["--redis"] if redis else [])
    with launched(argv):
        yield offset, redis


EXPERIMENTS = [
    "inference-capacity",
    "utilisation",
    "batching",
    "fairness",
    "embeddings-delay",
    "crawler-hosts",
    "dedup-consumers",
]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_smoke_run_writes_its_report_and_every_cross_check_holds(
    stack: tuple[int, bool], name: str, tmp_path: Path
) -> None:
    offset, redis = stack
    if name == "dedup-consumers" and not redis:
        need_binary("redis-server")
    marker = f"{name}-{time.time_ns()}"  # inherited by every process the experiment starts
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.experiments",
            name,
            "--smoke",
            "--port-offset",
            str(offset),
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env={**os.environ, "PG_EXPERIMENT_SMOKE": marker},
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = tmp_path / name
    report = json.loads((out / "report.json").read_text())
    assert report["checks"] and report["checks_hold"], report["checks"]
    assert report["hypothesis"] and report["prediction"] and report["answer"]
    assert report["predicted_at"] is not None and report["rows"]
    assert (out / "results.csv").read_text().count("\n") == len(report["rows"]) + 1
    assert "**Prediction**" in (out / "report.md").read_text()
    assert report["plots"] and all((out / png).stat().st_size > 0 for png in report["plots"])
    # Side servers and side workers the experiment started are gone with it.
    assert not _started_by(marker)


def _started_by(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("PG_EXPERIMENT_SMOKE") == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_make_experiments_smoke_prints_a_summary_table(stack: tuple[int, bool], tmp_path: Path) -> None:
    """The `--all` path (what `make experiments` runs), with the stack-free experiments left out so
    the run stays short: the summary table and reports/experiments/README.md list each one."""
    offset, redis = stack
    skip = "utilisation,batching,fairness,embeddings-delay" + ("" if redis else ",dedup-consumers")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.experiments",
            "--all",
            "--smoke",
            "--skip",
            skip,
            "--port-offset",
            str(offset),
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    table = result.stdout[result.stdout.index("experiment  ") :]
    for name in ("inference-capacity", "crawler-hosts"):
        assert name in table
        assert f"[{name}]({name}/report.md)" in (tmp_path / "README.md").read_text()
