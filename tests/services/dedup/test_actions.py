"""Actions lose no data: re-verified, atomic, logged first, and undoable even after SIGKILL."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.dedup.files.actions import CRASH_ENV, plan_and_run, undo
from services.dedup.files.scanner import scan
from services.dedup.files.stages import ScanConfig
from tests.services.dedup.conftest import REPO, run_cli, write


def _make_dups(root: Path, pairs: int, copies: int = 2) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(pairs):
        data = hashlib.sha256(str(i).encode()).digest() * (40 + i % 7)
        for c in range(copies):
            p = root / f"g{i:04d}-{c}.dat"
            write(p, data)
            os.chmod(p, 0o640 if c else 0o600)
            os.utime(p, ns=(1_600_000_000_000_000_000 + c, 1_600_000_000_000_000_000 + i * 1000 + c))


def _state(root: Path) -> dict[str, tuple]:
    """Everything a user would call "my files": names, bytes, mode, mtime, and whether shared."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out[p.name] = (p.read_bytes(), st.st_mode, st.st_mtime_ns, st.st_nlink)
    return out


def _contents(root: Path) -> dict[str, bytes]:
    return {k: v[0] for k, v in _state(root).items()}


def _run(root: Path, action: str, log: Path, **kw) -> tuple[int, str]:
    out = io.StringIO()
    result = scan([root], config=ScanConfig(workers=1))
    failures = plan_and_run(
        result, action=action, keep="oldest", apply=True, undo_log=str(log), out=out, **kw
    )
    return failures, out.getvalue()


def test_hardlink_frees_duplicates_and_undo_restores_every_name(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _make_dups(root, 20, copies=3)
    before = _state(root)
    failures, text = _run(root, "hardlink", tmp_path / "undo.jsonl")
    assert failures == 0, text
    after = _state(root)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert {v[3] for v in after.values()} == {3}  # each group now one inode with 3 names
    for i in range(20):  # the oldest (copy 0) was kept: its mode survives on all names
        assert after[f"g{i:04d}-1.dat"][1] & 0o777 == 0o600
    assert undo(str(tmp_path / "undo.jsonl"), io.StringIO()) == 0
    assert _state(root) == before
    assert not list(root.glob(".dedup-tmp-*"))


@pytest.mark.parametrize("action", ["delete", "quarantine"])
def test_delete_and_quarantine_are_undone_exactly(tmp_path: Path, action: str) -> None:
    root = tmp_path / "t"
    _make_dups(root, 10)
    before = _state(root)
    extra = {"quarantine_dir": str(tmp_path / "q")} if action == "quarantine" else {"quarantine_dir": None}
    failures, text = _run(root, action, tmp_path / "undo.jsonl", **extra)
    assert failures == 0, text
    assert len(_state(root)) == 10
    if action == "quarantine":
        moved = list((tmp_path / "q").rglob("*.dat"))
        assert len(moved) == 10 and all(p.name.endswith("-1.dat") for p in moved)
    undo(str(tmp_path / "undo.jsonl"), io.StringIO())
    assert _state(root) == before


def test_content_is_verified_again_just_before_acting(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _make_dups(root, 3)
    result = scan([root], config=ScanConfig(workers=1))
    victim = root / "g0001-1.dat"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[5] ^= 0xFF
    write(victim, bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # the stat check alone would miss it
    out = io.StringIO()
    failures = plan_and_run(
        result,
        action="delete",
        keep="oldest",
        apply=True,
        quarantine_dir=None,
        undo_log=str(tmp_path / "u.jsonl"),
        out=out,
    )
    assert failures == 1
    assert "content differs" in out.getvalue()
    assert victim.read_bytes() == bytes(data)
    assert not (root / "g0000-1.dat").exists()  # the other steps still ran


def test_keep_rules_choose_the_stated_file(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _make_dups(root, 1, copies=3)  # copy 2 is the newest, copy 0 the oldest
    result = scan([root], config=ScanConfig(workers=1))
    out = io.StringIO()
    plan_and_run(
        result, action="delete", keep="newest", apply=False, quarantine_dir=None, undo_log=None, out=out
    )
    assert out.getvalue().count("(keep ") == 2 and "keep " + str(root / "g0000-2.dat") in out.getvalue()


def test_reflink_is_refused_cleanly_where_the_filesystem_cannot(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _make_dups(root, 2)
    before = _state(root)
    proc = run_cli(
        "scan",
        "--no-cache",
        "--action",
        "reflink",
        "--apply",
        "--undo-log",
        str(tmp_path / "u.jsonl"),
        str(root),
    )
    text = proc.stdout.decode()
    if "cloned" in text:  # btrfs/xfs: clones must be separate inodes with identical bytes
        assert proc.returncode == 0
        assert _contents(root) == {k: v[0] for k, v in before.items()}
    else:
        assert proc.returncode == 1 and "reflink not supported" in text
        assert _state(root) == before


@pytest.mark.parametrize("point", ["intent", "tmp", "acted"])
@pytest.mark.parametrize("action", ["hardlink", "delete", "quarantine", "quarantine-xdev"])
def test_sigkill_at_every_step_boundary_loses_nothing_and_undo_restores(
    tmp_path: Path, action: str, point: str
) -> None:
    if action in ("delete", "quarantine") and point == "tmp":
        pytest.skip(f"{action} has no temp name")
    qdir = tmp_path / "q"
    if action == "quarantine-xdev":  # another filesystem: copy + fsync + rename + unlink
        if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("no second filesystem at /dev/shm")
        qdir = Path(f"/dev/shm/pg-dedup-q-{os.getpid()}-{point}")
        shutil.rmtree(qdir, ignore_errors=True)
    root = tmp_path / "t"
    _make_dups(root, 6)
    before = _state(root)
    log = tmp_path / "undo.jsonl"
    verb = action.split("-")[0]
    args = ["scan", "--no-cache", "--action", verb, "--apply", "--undo-log", str(log), str(root)]
    if verb == "quarantine":
        args += ["--quarantine-dir", str(qdir)]
    try:
        _crash_and_undo(args, point, root, before, log, qdir)
    finally:
        if action == "quarantine-xdev":
            shutil.rmtree(qdir, ignore_errors=True)


def _crash_and_undo(args: list[str], point: str, root: Path, before: dict, log: Path, qdir: Path) -> None:
    proc = run_cli(*args, env={**os.environ, CRASH_ENV: f"{point}:4"})
    assert proc.returncode == -signal.SIGKILL
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[-1]["type"] == "intent"  # killed inside step 4, before its done record
    assert sum(r["type"] == "intent" for r in records) == 4
    # Nothing is lost even before undo: every byte string still exists under some name.
    surviving = set(_contents(root).values()) | {p.read_bytes() for p in qdir.rglob("*.dat")}
    assert {v[0] for v in before.values()} <= surviving
    undone = run_cli("undo", str(log))
    assert undone.returncode == 0, undone.stdout
    assert _state(root) == before
    assert not list(root.glob(".dedup-tmp-*"))
    assert run_cli("undo", str(log)).returncode == 0 and _state(root) == before  # idempotent


def test_sigkill_at_a_random_moment_then_undo(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _make_dups(root, 300)
    before = _state(root)
    log = tmp_path / "undo.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.dedup",
            "scan",
            "--no-cache",
            "--action",
            "hardlink",
            "--apply",
            "--undo-log",
            str(log),
            str(root),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_bytes().count(b'"intent"') >= 40:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # Hardlinks never change bytes. A kill between link(keep, tmp) and replace(tmp, dup) leaves
    # the temp name behind (a second name of the kept file): undo removes it, checked below.
    after = {k: v for k, v in _contents(root).items() if not k.startswith(".dedup-tmp-")}
    assert after == {k: v[0] for k, v in before.items()}
    assert run_cli("undo", str(log)).returncode == 0
    assert _state(root) == before


def test_every_name_of_a_duplicate_inode_is_acted_on_and_restored(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _make_dups(root, 2)
    os.link(root / "g0000-1.dat", root / "g0000-1-alias.dat")  # the duplicate has two names
    before = _state(root)
    failures, text = _run(root, "hardlink", tmp_path / "undo.jsonl")
    assert failures == 0, text
    kept = os.stat(root / "g0000-0.dat").st_ino
    assert os.stat(root / "g0000-1.dat").st_ino == kept == os.stat(root / "g0000-1-alias.dat").st_ino
    undo(str(tmp_path / "undo.jsonl"), io.StringIO())
    assert _state(root) == before  # nlink included: the two names share one inode again
    assert os.stat(root / "g0000-1.dat").st_ino == os.stat(root / "g0000-1-alias.dat").st_ino


def test_killed_between_two_names_of_one_inode_undo_relinks_them(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _make_dups(root, 1)
    os.link(root / "g0000-1.dat", root / "g0000-1-alias.dat")
    before = _state(root)
    log = tmp_path / "undo.jsonl"
    proc = run_cli(
        "scan",
        "--no-cache",
        "--action",
        "hardlink",
        "--apply",
        "--undo-log",
        str(log),
        str(root),
        env={**os.environ, CRASH_ENV: "intent:2"},  # first name replaced, second only announced
    )
    assert proc.returncode == -signal.SIGKILL
    assert run_cli("undo", str(log)).returncode == 0
    assert _state(root) == before


def test_an_unsupported_reflink_is_said_once_for_the_whole_run(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _make_dups(root, 12)
    failures, text = _run(root, "reflink", tmp_path / "u.jsonl")
    if "cloned" in text:
        pytest.skip("this filesystem can reflink")
    assert failures == 12
    refused = [line for line in text.splitlines() if "reflink not supported" in line]
    assert len(refused) == 1, text
    assert "12 steps on that filesystem not taken" in text
    assert not [line for line in text.splitlines() if line.startswith("skipped")], text


def _xattrs_supported(path: Path) -> bool:
    probe = path / "xattr-probe"
    write(probe, b"")
    try:
        os.setxattr(probe, "user.pg-probe", b"1")
    except OSError:
        return False
    finally:
        probe.unlink()
    return True


def test_extended_attributes_survive_hardlink_refusal_and_undo(tmp_path: Path) -> None:
    if not _xattrs_supported(tmp_path):
        pytest.skip(f"no user.* extended attributes on the filesystem of {tmp_path}")
    root = tmp_path / "t"
    _make_dups(root, 3)
    # Group 0: the same attribute on both (linkable); group 1: only the duplicate has one.
    for c in range(2):
        os.setxattr(root / f"g0000-{c}.dat", "user.origin", b"same")
    os.setxattr(root / "g0001-1.dat", "user.origin", b"only-mine")
    os.setxattr(root / "g0002-1.dat", "user.tag", b"x")
    os.setxattr(root / "g0002-0.dat", "user.tag", b"x")
    before = {p.name: dict((n, os.getxattr(p, n)) for n in os.listxattr(p)) for p in root.iterdir()}
    failures, text = _run(root, "hardlink", tmp_path / "u.jsonl")
    assert failures == 1 and "extended attributes differ" in text, text
    assert os.getxattr(root / "g0001-1.dat", "user.origin") == b"only-mine"  # not linked
    assert os.stat(root / "g0000-1.dat").st_ino == os.stat(root / "g0000-0.dat").st_ino
    out = io.StringIO()
    assert undo(str(tmp_path / "u.jsonl"), out) == 0
    after = {p.name: dict((n, os.getxattr(p, n)) for n in os.listxattr(p)) for p in root.iterdir()}
    assert after == before
    assert os.stat(root / "g0000-1.dat").st_ino != os.stat(root / "g0000-0.dat").st_ino


def test_symlink_action_and_its_undo(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _make_dups(root, 3)
    before = _state(root)
    failures, text = _run(root, "symlink", tmp_path / "u.jsonl")
    assert failures == 0, text
    links = [p for p in root.iterdir() if p.is_symlink()]
    assert len(links) == 3
    for link in links:
        assert not os.path.isabs(os.readlink(link))  # relative: survives moving the tree
        assert link.read_bytes() == before[link.name][0]
    out = io.StringIO()
    assert undo(str(tmp_path / "u.jsonl"), out) == 0
    assert not [p for p in root.iterdir() if p.is_symlink()]
    assert _state(root) == before


def _inodes(root: Path) -> dict[str, int]:
    return {p.name: p.lstat().st_ino for p in sorted(root.rglob("*")) if p.is_file()}


def test_hardlink_undo_keeps_the_kept_inode_and_gives_the_others_their_own(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _make_dups(root, 5, copies=3)
    os.link(root / "g0000-2.dat", root / "g0000-2-alias.dat")  # one duplicate inode, two names
    before = _inodes(root)
    failures, text = _run(root, "hardlink", tmp_path / "undo.jsonl")
    assert failures == 0, text
    acted = _inodes(root)
    for i in range(5):  # the group is the kept inode now, under every name
        kept = before[f"g{i:04d}-0.dat"]
        assert {acted[n] for n in acted if n.startswith(f"g{i:04d}-")} == {kept}
    assert undo(str(tmp_path / "undo.jsonl"), io.StringIO()) == 0
    after = _inodes(root)
    assert set(after) == set(before)
    for i in range(5):
        g = f"g{i:04d}"
        assert after[f"{g}-0.dat"] == before[f"{g}-0.dat"]  # the inode the action kept: the same one
        others = {after[f"{g}-1.dat"], after[f"{g}-2.dat"]}
        assert len(others) == 2 and after[f"{g}-0.dat"] not in others  # their own files again
    assert after["g0000-2.dat"] == after["g0000-2-alias.dat"]  # names that shared, share again


def test_quarantine_undo_brings_back_the_very_inodes(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _make_dups(root, 6, copies=3)
    before = _inodes(root)
    failures, text = _run(root, "quarantine", tmp_path / "undo.jsonl", quarantine_dir=str(tmp_path / "q"))
    assert failures == 0, text
    assert undo(str(tmp_path / "undo.jsonl"), io.StringIO()) == 0
    assert _inodes(root) == before  # renamed aside, renamed back: every st_ino as before


@pytest.mark.parametrize("action", ["hardlink", "delete", "symlink"])
def test_an_inode_with_names_outside_the_scan_comes_back_by_rename(tmp_path: Path, action: str) -> None:
    root, outside = tmp_path / "t", tmp_path / "outside"
    _make_dups(root, 3)
    outside.mkdir()
    os.link(root / "g0001-1.dat", outside / "ext")  # the duplicate's inode outlives the step
    before = _inodes(root)
    ext_ino = (outside / "ext").stat().st_ino
    log = tmp_path / "undo.jsonl"
    failures, text = _run(root, action, log, quarantine_dir=None)
    assert failures == 0, text
    assert (outside / "ext").stat().st_nlink == 2  # itself and the aside link beside the log
    assert len(list((tmp_path / "undo.jsonl.aside").iterdir())) == 1
    assert undo(str(log), io.StringIO()) == 0
    after = _inodes(root)
    assert set(after) == set(before)
    for i in range(3):  # the kept inodes never changed
        assert after[f"g{i:04d}-0.dat"] == before[f"g{i:04d}-0.dat"]
    assert after["g0001-1.dat"] == before["g0001-1.dat"] == ext_ino  # renamed back: the very inode
    assert (outside / "ext").stat().st_nlink == 2  # shared with its outside name again
    assert not (tmp_path / "undo.jsonl.aside").exists()
    assert undo(str(log), io.StringIO()) == 0 and _inodes(root) == after  # idempotent


def test_no_aside_link_when_every_name_was_seen(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _make_dups(root, 3)
    failures, text = _run(root, "hardlink", tmp_path / "undo.jsonl")
    assert failures == 0, text
    assert not (tmp_path / "undo.jsonl.aside").exists()  # the space is freed: nothing kept aside
