"""A stack started the way `make run` starts it (deploy/launch.py), for tests that need one.

One place for what every stack fixture did by hand: start the launcher, read its output until it
says "stack up" (or fail with that output), and on exit send Ctrl-C and require that nothing it
started is left running.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil
import pytest

from deploy.topology import ROOT


@dataclass
class Launched:
    proc: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)


@contextmanager
def launched(args: list[str], *, up_within_s: float = 240, stop_within_s: float = 60) -> Iterator[Launched]:
    """`python -m deploy.launch ARGS`, yielded once it says "stack up"; stopped with Ctrl-C after."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.launch", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run = Launched(proc)
    deadline = time.monotonic() + up_within_s
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        run.output.append(line)
        if "stack up" in line:
            break
    if not any("stack up" in line for line in run.output):
        proc.kill()
        pytest.fail("the stack did not come up:\n" + "".join(run.output))
    children = psutil.Process(proc.pid).children(recursive=True)
    try:
        yield run
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=stop_within_s)
        _, alive = psutil.wait_procs(children, timeout=10)
        for p in alive:
            p.kill()
    assert not alive, f"left running after Ctrl-C: {alive}"
