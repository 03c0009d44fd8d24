"""`make run`'s launcher starts what exists, stops on Ctrl-C and leaves nothing running."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from deploy.topology import ROOT
from tests.conftest import free_port, need_binary


def launcher(*args: str, var_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.launch", "--var-dir", str(var_dir), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 60.0) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    pytest.fail(f"launcher never printed {needle!r}; output:\n{''.join(lines)}")


def test_plan_lists_every_service():
    out = subprocess.run(
        [sys.executable, "-m", "deploy.launch", "--plan"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    for name in ("redis", "websim", "crawler", "dedup", "inference", "prometheus", "grafana"):
        assert name in out


def test_bad_arguments_exit_2_with_one_line(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "deploy.launch", "--only", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "nope" in result.stderr


def test_ctrl_c_stops_every_child(tmp_path: Path):
    need_binary("prometheus")
    offset = free_port() - 9090
    proc = launcher("--only", "prometheus", "--port-offset", str(offset), var_dir=tmp_path)
    try:
        wait_for_line(proc, "stack up")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the launcher started nothing"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        _gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"left running: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
