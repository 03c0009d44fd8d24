"""python -m services.websim as a user runs it: help, bad input, serve, stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from tests.conftest import free_port, wait_for_port

from .conftest import fetch

CMD = [sys.executable, "-m", "services.websim"]


def test_help_lists_the_knobs() -> None:
    out = subprocess.run([*CMD, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--hosts", "--seed", "--port", "--max-pages", "--trap-rate", "--crawl-delay-max"):
        assert flag in out.stdout


def test_bad_input_exits_2_with_one_line() -> None:
    for args, flag in (
        (["--hosts", "0"], "--hosts"),
        (["--port", "x"], "--port"),
        (["--crawl-delay-min", "1", "--crawl-delay-max", "0.5"], "--crawl-delay-min"),
    ):
        out = subprocess.run([*CMD, *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, args
        assert out.stderr.count("\n") == 1 and out.stderr.startswith(f"error: {flag}"), out.stderr
        assert "Traceback" not in out.stderr


def test_serves_until_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*CMD, "--hosts", "20", "--seed", "3", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, timeout=30)
        assert fetch(port, "h0001.sim.test", "/").status == 200
        entries = [json.loads(x) for x in fetch(port, "127.0.0.1", "/log").body.decode().splitlines()]
        assert [e["host"] for e in entries] == ["h0001.sim.test"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"listening on http://127.0.0.1:{port}" in out
    assert "--resolve '*.sim.test=127.0.0.1:" in out
