"""Crash test: SIGKILL a process that is writing a PersistentLRU, many times, at random
moments; every recovery must equal the reference model after a prefix of the op sequence at
least as long as what the process had acknowledged (and at most one op longer: the op in
flight when the kill came may or may not have reached the log)."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from libs.lru import PersistentLRU
from tests.libs.lru.crash_child import CAPACITY, apply_to_model, op_at

REPO = Path(__file__).resolve().parents[3]
KILLS = 36
BUDGET_S = 60.0  # hard stop on a loaded machine; the usual run takes 5-10 s


class Prefixes:
    """The model state after the first n ops, advanced incrementally (n never decreases)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.n = 0
        self.state: OrderedDict[str, Any] = OrderedDict()

    def advance_to(self, n: int) -> None:
        assert n >= self.n
        while self.n < n:
            apply_to_model(self.state, op_at(self.seed, self.n))
            self.n += 1

    def peek_next(self) -> list[tuple[str, Any]]:
        nxt = OrderedDict(self.state)
        apply_to_model(nxt, op_at(self.seed, self.n))
        return list(nxt.items())


def _wait_ready(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    """Read stdout until the child says it is ready (or the deadline passes)."""
    assert proc.stdout is not None
    seen = b""
    fd = proc.stdout.fileno()
    while b"ready\n" not in seen and time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        seen += chunk
    return seen


def test_sigkill_at_random_moments_recovers_an_acknowledged_prefix(tmp_path: Path) -> None:
    seed = 20240611
    rng = random.Random(seed)
    prefixes = Prefixes(seed)
    started = time.monotonic()
    kills = mid_op_kills = torn_tails = compactions_seen = 0
    last_generation = 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    while kills < KILLS and time.monotonic() - started < BUDGET_S:
        start = prefixes.n
        sync = ("never", "always", "writes")[kills % 3]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.libs.lru.crash_child",
                str(tmp_path),
                str(seed),
                str(start),
                sync,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
        )
        try:
            if kills % 5 == 4:
                # Sometimes kill blindly, possibly during startup or recovery itself.
                time.sleep(rng.uniform(0.0, 0.3))
                out = b""
            else:
                out = _wait_ready(proc, time.monotonic() + 15)
                assert b"ready\n" in out, f"child never got ready; exit {proc.poll()}"
                time.sleep(rng.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
            rest, _ = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"child exited by itself: {proc.returncode}"
        kills += 1
        lines = (out + rest).decode().split()
        acked = [int(x) for x in lines if x != "ready"]
        assert acked == list(range(start, start + len(acked))), "acks out of order"
        done = start + len(acked)  # ops acknowledged so far, over all runs
        mid_op_kills += bool(acked)

        with PersistentLRU(tmp_path, CAPACITY) as cache:
            recovered = cache.items()
            torn_tails += cache.recovery.dropped_bytes > 0
            compactions_seen += cache.generation > last_generation
            last_generation = cache.generation
        prefixes.advance_to(done)
        if recovered == list(prefixes.state.items()):
            pass  # exactly the acknowledged prefix
        elif recovered == prefixes.peek_next():
            prefixes.advance_to(done + 1)  # the op in flight had reached the log
        else:
            raise AssertionError(
                f"kill {kills}: recovered state is not the prefix of {done} or {done + 1} ops\n"
                f"recovered: {[k for k, _ in recovered]}\nexpected:  {list(prefixes.state)}"
            )
    assert kills >= 30, f"only {kills} kills in {BUDGET_S}s"
    assert mid_op_kills >= kills // 2, "most kills should land while ops were being acknowledged"
    assert compactions_seen > 0 and prefixes.n > 10 * 37, "the run should cross many compactions"
    print(f"kills={kills} ops={prefixes.n} torn_tails={torn_tails} generations={last_generation}")
