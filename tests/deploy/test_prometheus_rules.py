"""Prometheus config and rules pass promtool, and the alert rules pass their unit tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

from deploy.topology import ROOT, load_compose, local_services, write_localised_files
from tests.conftest import need_binary

PROM = ROOT / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([need_binary("promtool"), *args], capture_output=True, text=True, timeout=120)


def test_the_scrape_config_as_make_run_writes_it_is_valid(tmp_path: Path):
    prometheus = next(s for s in local_services(var_dir=tmp_path) if s.name == "prometheus")
    write_localised_files(prometheus, set(load_compose()["services"]))
    (config,) = prometheus.files.values()
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule files found" in result.stdout


def test_rules_are_valid():
    result = promtool("check", "rules", *map(str, sorted((PROM / "rules").glob("*.yml"))))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass():
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert tests
    result = promtool("test", "rules", *map(str, tests))
    assert result.returncode == 0, result.stdout + result.stderr
