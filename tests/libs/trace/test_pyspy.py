"""Real profiler output: py-spy sampling a real Python program (data/small_program.py).

The committed capture (data/pyspy_small_program.txt, ``py-spy record --format raw -r 200 -d 2``)
keeps the parsing checks independent of ptrace; the live test records a fresh one and skips,
with the reason, where py-spy may not attach (no ptrace permission in a container).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from libs.trace import CallTree, TraceError

from .tracetext import tree_of

DATA = Path(__file__).parent / "data"
PROGRAM = DATA / "small_program.py"
CAPTURE = DATA / "pyspy_small_program.txt"


def _function_times(text: str) -> tuple[CallTree, dict[str, tuple[float, float]]]:
    tree, trace = tree_of(text, strip_lines=True)
    assert trace.format == "collapsed" and trace.unit == "samples"
    times = {s.name.split(" (")[0]: (s.inclusive, s.exclusive) for s in tree.functions()}
    return tree, times


def _check_profile(text: str, *, proportions: bool = True) -> None:
    """The known functions, recursion as nested frames, spin as the leaf that owns the time;
    with ``proportions``, also the shares of the work (fixed capture only, see below)."""
    tree, times = _function_times(text)
    for name in ("main", "heavy", "light", "recurse", "spin"):
        assert name in times, f"{name} missing from the profile"
    # spin is the leaf: it owns almost all of main's time, and nearly nothing else is exclusive.
    # (Robust live too: a sample lands where the CPU time goes, and spin has ~99% of it.)
    assert times["spin"][1] >= (0.9 if proportions else 0.75) * times["main"][0]
    if proportions:
        heavy, light = times["heavy"][0], times["light"][0]
        # heavy does 3x light's work per round; sampling noise keeps it near, not at, 3.
        assert 2.0 <= heavy / light <= 4.5, (heavy, light)
        # recurse(2) does one unit of work, like light.
        assert 0.4 <= times["recurse"][0] / light <= 2.5
    # recursion is kept as separate frames: recurse -> recurse -> recurse -> spin.
    deep = [
        path
        for path, _ in tree.root.walk()
        if [p.split(" (")[0] for p in path[-4:]] == ["recurse"] * 3 + ["spin"]
    ]
    assert deep, "recurse(2) should appear three frames deep"


def test_committed_pyspy_capture_has_known_functions_in_sensible_proportions() -> None:
    _check_profile(CAPTURE.read_text())


def test_committed_capture_total_is_its_sample_count() -> None:
    text = CAPTURE.read_text()
    tree, _ = tree_of(text)
    assert tree.total == sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.strip())


def test_live_pyspy_record_of_a_real_program(tmp_path: Path) -> None:
    pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if pyspy is None:
        pytest.skip("py-spy not installed (it is in the dev extra)")
    out = tmp_path / "out.txt"
    # The whole run of a fixed amount of work (about 1 s unloaded), not `-d SECONDS` of a
    # timed one: under load a recording of fixed length could end before the program got
    # going. How many samples it takes does not matter to the checks.
    command = [
        pyspy, "record", "--format", "raw", "-r", "200", "-o", str(out),
        "--", sys.executable, str(PROGRAM), "--rounds", "200",
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("py-spy did not finish recording a ~1 s program within 120 s (could not attach?)")
    if result.returncode != 0 or not out.exists():
        reason = (result.stderr or result.stdout).strip().splitlines()
        pytest.skip(f"py-spy could not record here (ptrace not permitted?): {reason[-1] if reason else '?'}")
    text = out.read_text()
    try:
        # No proportions here: py-spy samples wall-clock time, so on a loaded machine a
        # function preempted mid-run collects the samples of the time it waited (heavy/light
        # was 6.0 instead of ~3 in 1 of 5 runs at load 9 on 2 cores). The committed capture
        # checks the shares; this checks that real, fresh py-spy output reads right.
        _check_profile(text, proportions=False)
    except TraceError as exc:  # keep the offending line in the report: live output varies
        lines = text.splitlines()
        bad = lines[exc.line - 1] if 0 < exc.line <= len(lines) else "?"
        pytest.fail(f"{exc}\noffending line: {bad[:300]!r}")
