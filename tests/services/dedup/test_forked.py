"""Issue 15, warm speed: a forked copy of the scan settles part of the small and verify groups
on a second core (stages._Helper). The groups, their order, errors and byte counts are those
of a scan in one process, whatever the copy does."""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.dedup.files import stages
from services.dedup.files.scanner import scan
from services.dedup.files.stages import ScanConfig, ScanContext
from services.dedup.files.walk import walk
from tests.services.dedup.conftest import write


def _shape(groups) -> list[tuple[int, bytes | None, list[bytes]]]:
    return [(g.size, g.digest, [f.path for f in g.files]) for g in groups]


@pytest.fixture
def forking(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every scan may fork (no minimum work, the page cache said warm); the forks made."""
    if not hasattr(os, "fork") or stages._cores() < 2:
        pytest.skip("needs fork and two cores")
    if threading.active_count() != 1:
        # the whole suite leaves threads behind; test_the_fork_tests_run_in_a_fresh_interpreter
        # runs this file again where they are not, so these never go untested
        pytest.skip("another thread is running: the scan does not fork then")
    monkeypatch.setattr(stages, "FORK_MIN_WORK", 1)
    monkeypatch.setattr(stages, "in_page_cache", lambda e: True)
    forks: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    return forks


def test_a_forked_scan_finds_what_one_process_finds(tree: Path, forking: list[int]) -> None:
    one = scan([tree], config=ScanConfig(workers=1))
    two = scan([tree], config=ScanConfig(workers=0))
    assert forking
    assert _shape(two.groups) == _shape(one.groups)
    assert two.bytes_read == one.bytes_read
    assert [(s.name, s.bytes_read, s.groups_out, s.files_out) for s in two.stages] == [
        (s.name, s.bytes_read, s.groups_out, s.files_out) for s in one.stages
    ]


def test_verification_forks_too(tmp_path: Path, forking: list[int]) -> None:
    # 6 sizes above SMALL_MAX, 3 files each; in every size the third differs in its last byte.
    for size in range(stages.SMALL_MAX + 1, stages.SMALL_MAX + 7):
        body = os.urandom(size - 1)
        for k, last in enumerate(b"aab"):
            write(tmp_path / f"b{size}-{k}", body + bytes([last]))
    one = scan([tmp_path], config=ScanConfig(workers=1))
    two = scan([tmp_path], config=ScanConfig(workers=0))
    assert forking
    assert _shape(two.groups) == _shape(one.groups)
    assert [len(g.files) for g in two.groups] == [2] * 6
    assert two.bytes_read == one.bytes_read


def test_errors_met_by_the_copy_are_reported(tmp_path: Path, forking: list[int]) -> None:
    # 20 sizes of 3 equal files; the copy takes the larger sizes, where one file changes.
    for size in range(10, 30):
        for k in range(3):
            write(tmp_path / f"s{size}-{k}", b"x" * size)
    walked = walk([tmp_path])
    write(tmp_path / "s29-1", b"y" * 31)  # changed after the walk
    ctx = ScanContext(config=ScanConfig(workers=0))
    groups = stages.find_duplicates(walked.files, ctx)
    assert forking
    assert [e.path for e in ctx.errors] == [os.fsencode(tmp_path / "s29-1")]
    assert [len(g.files) for g in groups] == [3] * 19 + [2]
    assert ctx.counter.total == sum(3 * s for s in range(10, 29)) + 2 * 29  # not read: fstat said


def test_a_copy_that_fails_leaves_its_groups_to_this_process(
    tree: Path, forking: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def dumps(value: object) -> bytes:
        raise RuntimeError("the copy fails before it answers")

    one = scan([tree], config=ScanConfig(workers=1))
    monkeypatch.setattr(stages, "marshal", SimpleNamespace(dumps=dumps, loads=marshal.loads))
    two = scan([tree], config=ScanConfig(workers=0))
    assert forking
    assert _shape(two.groups) == _shape(one.groups)
    assert two.bytes_read >= one.bytes_read  # the copy's part read again here


def test_no_fork_with_a_fixed_reader_count_or_another_thread(tree: Path, forking: list[int]) -> None:
    scan([tree], config=ScanConfig(workers=1))
    assert not forking
    started, stop = threading.Event(), threading.Event()

    def idle() -> None:
        started.set()
        stop.wait(30)

    t = threading.Thread(target=idle)
    t.start()
    try:
        started.wait(30)
        scan([tree], config=ScanConfig(workers=0))
    finally:
        stop.set()
        t.join(30)
    assert not forking


def test_the_fork_tests_run_in_a_fresh_interpreter() -> None:
    """In the whole suite other tests leave threads running, and a scan never forks beside a
    thread: the tests above skip there. Run them in an interpreter of their own, where they
    must pass, not skip."""
    if os.environ.get("PG_FORKED_INNER"):
        pytest.skip("the inner run")
    if not hasattr(os, "fork") or stages._cores() < 2:
        pytest.skip("needs fork and two cores")
    root = Path(__file__).resolve().parents[3]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-rs"],
        cwd=root,
        env={**os.environ, "PG_FORKED_INNER": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "5 passed, 1 skipped" in r.stdout, r.stdout[-3000:]
