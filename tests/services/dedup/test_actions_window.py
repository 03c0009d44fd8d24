"""A write racing an action is never lost: the window between the byte compare and the replace.

The race is made deterministic with the hooks actions.py calls right before its last check
(`_in_the_window`) and right after the replace (`_after_replace`); no sleeps, no threads.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from services.dedup.files import actions
from services.dedup.files.actions import Step, plan_and_run, undo
from services.dedup.files.scanner import scan
from services.dedup.files.stages import ScanConfig
from tests.services.dedup.test_actions import _make_dups, _state

VICTIM = "g0001-1.dat"  # keep=oldest keeps copy 0, so copy 1 of every pair is acted on


def _reflink_works(where: Path) -> bool:
    src, dst = where / "rl-src", where / "rl-dst"
    src.write_bytes(b"x" * 4096)
    try:
        actions._reflink(os.fsencode(src), os.fsencode(dst))
    except actions.Unsupported:
        return False
    finally:
        src.unlink()
        if dst.exists():
            dst.unlink()
    return True


def _setup(tmp_path: Path, action: str) -> tuple[Path, dict[str, object]]:
    if action == "reflink" and not _reflink_works(tmp_path):
        pytest.skip("this filesystem cannot reflink")
    root = tmp_path / "t"
    _make_dups(root, 4)
    extra: dict[str, object] = {"quarantine_dir": str(tmp_path / "q") if action == "quarantine" else None}
    return root, extra


def _apply(root: Path, action: str, log: Path, **kw: object) -> tuple[int, str]:
    out = io.StringIO()
    result = scan([root], config=ScanConfig(workers=1))
    failures = plan_and_run(
        result,
        action=action,
        keep="oldest",
        apply=True,
        undo_log=str(log),
        out=out,
        **kw,  # type: ignore[arg-type]
    )
    return failures, out.getvalue()


def _victim_records(log: Path, victim: Path) -> list[str]:
    """The types of the undo-log records of the victim's step, in order."""
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    want = base64.b64encode(os.fsencode(victim)).decode()
    (seq,) = [r["seq"] for r in recs if r["type"] == "intent" and r["path"] == want]
    return [r["type"] for r in recs if r.get("seq") == seq]


def _append(p: Path) -> None:
    with p.open("ab") as f:
        f.write(b"written in the window")


def _overwrite(p: Path) -> None:
    with p.open("r+b") as f:
        f.write(b"\x00OVERWRITTEN\x00")


WRITES = {
    "append": _append,
    "overwrite-same-size": _overwrite,
    "chmod": lambda p: os.chmod(p, 0o604),  # not data, but a change stat sees (ctime)
}


@pytest.mark.parametrize("how", sorted(WRITES))
@pytest.mark.parametrize("action", ["hardlink", "reflink", "symlink", "delete", "quarantine"])
def test_a_write_between_compare_and_replace_aborts_that_file_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str, how: str
) -> None:
    root, extra = _setup(tmp_path, action)
    victim = root / VICTIM
    ino = victim.stat().st_ino
    seen: list[str] = []

    def race(step: Step, seq: int) -> None:
        if step.path == os.fsencode(victim):
            WRITES[how](victim)
            seen.append(how)

    monkeypatch.setattr(actions, "_in_the_window", race)
    log = tmp_path / "u.jsonl"
    failures, text = _apply(root, action, log, **extra)
    assert seen == [how], text  # the window was reached after the compare passed
    assert failures == 1, text  # partial: the CLI turns this into its partial exit code
    assert f"skipped {victim}: changed during the action" in text
    after = _state(root)
    assert VICTIM in after and not victim.is_symlink()
    expected = _state_of_write(how)
    assert expected(after[VICTIM]), (how, after[VICTIM][:2])
    assert after[VICTIM][3] == 1  # still its own inode, not linked to the kept file
    assert victim.stat().st_ino == ino  # caught before the replace: the name never changed
    assert not list(root.glob(".dedup-tmp-*"))
    assert _victim_records(log, victim) == ["intent", "aborted"]
    for i in (0, 2, 3):  # the other duplicates were acted on
        other = root / f"g{i:04d}-1.dat"
        if action in ("delete", "quarantine"):
            assert not other.exists()
        elif action == "symlink":
            assert other.is_symlink()
    undo(str(log), io.StringIO())
    assert _state(root)[VICTIM] == after[VICTIM]  # undo leaves the written file as it is


def _state_of_write(how: str) -> Callable[[tuple], bool]:
    if how == "append":
        return lambda st: st[0].endswith(b"written in the window")
    if how == "overwrite-same-size":
        return lambda st: st[0].startswith(b"\x00OVERWRITTEN\x00")
    return lambda st: st[1] & 0o777 == 0o604


@pytest.mark.parametrize("action", ["hardlink", "reflink", "symlink", "delete"])
def test_a_write_through_a_held_descriptor_after_the_replace_is_put_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    root, extra = _setup(tmp_path, action)
    victim = root / VICTIM
    original = victim.read_bytes()
    mode = victim.stat().st_mode & 0o777
    fd = os.open(victim, os.O_WRONLY)  # a writer that opened the file before the action
    try:

        def late_write(step: Step, seq: int) -> None:
            if step.path == os.fsencode(victim):
                os.pwrite(fd, b"LATE", 0)  # lands in the old inode: the name is already gone

        monkeypatch.setattr(actions, "_after_replace", late_write)
        log = tmp_path / "u.jsonl"
        failures, text = _apply(root, action, log, **extra)
    finally:
        os.close(fd)
    assert failures == 1, text
    assert f"skipped {victim}: changed during the action (written after the replace)" in text
    assert not victim.is_symlink()
    assert victim.read_bytes() == b"LATE" + original[4:]
    st = victim.stat()
    assert st.st_nlink == 1 and st.st_mode & 0o777 == mode
    assert not list(root.glob(".dedup-tmp-*"))
    assert _victim_records(log, victim) == ["intent", "aborted"]
    undo(str(log), io.StringIO())
    assert victim.read_bytes() == b"LATE" + original[4:]


def test_quarantine_keeps_a_late_write_in_the_moved_inode_and_undo_returns_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, extra = _setup(tmp_path, "quarantine")
    victim = root / VICTIM
    fd = os.open(victim, os.O_WRONLY | os.O_APPEND)
    try:

        def late_write(step: Step, seq: int) -> None:
            if step.path == os.fsencode(victim):
                os.write(fd, b"LATE")

        monkeypatch.setattr(actions, "_after_replace", late_write)
        log = tmp_path / "u.jsonl"
        failures, text = _apply(root, "quarantine", log, **extra)
    finally:
        os.close(fd)
    assert failures == 0, text  # same filesystem: a rename, so the write went with the inode
    undo(str(log), io.StringIO())
    assert victim.read_bytes().endswith(b"LATE")


@pytest.mark.parametrize("when", ["in_the_window", "after_replace"])
def test_an_inode_with_an_outside_name_keeps_its_identity_through_a_racing_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    root, extra = _setup(tmp_path, "hardlink")
    victim = root / VICTIM
    (tmp_path / "outside").mkdir()
    os.link(victim, tmp_path / "outside" / "ext")  # so an aside link is made beside the log
    ino = victim.stat().st_ino
    fd = os.open(victim, os.O_WRONLY)
    try:

        def write(step: Step, seq: int) -> None:
            if step.path == os.fsencode(victim):
                os.pwrite(fd, b"RACE", 0)

        monkeypatch.setattr(actions, f"_{when}", write)
        log = tmp_path / "u.jsonl"
        failures, text = _apply(root, "hardlink", log, **extra)
    finally:
        os.close(fd)
    assert failures == 1 and f"skipped {victim}: changed during the action" in text, text
    st = victim.stat()
    assert st.st_ino == ino and st.st_nlink == 2  # the very inode, shared with its outside name
    assert victim.read_bytes().startswith(b"RACE")
    assert not (tmp_path / "u.jsonl.aside").exists()  # no aside link left behind
    assert _victim_records(log, victim) == ["intent", "aborted"]
