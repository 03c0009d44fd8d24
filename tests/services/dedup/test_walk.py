"""Traversal: one entry per inode, cycle-safe symlinks, per-path errors that are never fatal."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from services.dedup.files.walk import WalkError, WalkOptions, iter_files, walk
from tests.services.dedup.conftest import write


def _names(result) -> set[str]:
    return {os.path.basename(f.display) for f in result.files}


def test_hard_links_are_one_entry_with_every_name_listed(tmp_path: Path) -> None:
    write(tmp_path / "a", b"data")
    os.link(tmp_path / "a", tmp_path / "b")
    os.mkdir(tmp_path / "sub")
    os.link(tmp_path / "a", tmp_path / "sub" / "c")
    result = walk([tmp_path])
    assert len(result.files) == 1
    entry = result.files[0]
    assert [os.path.basename(p) for p in [entry.path, *entry.links]] == [b"a", b"b", b"c"]
    assert result.stats.hard_links == 2


def test_symlinks_are_not_followed_by_default(tmp_path: Path) -> None:
    write(tmp_path / "real", b"x" * 10)
    os.symlink("real", tmp_path / "link-to-file")
    os.symlink(".", tmp_path / "loop")
    result = walk([tmp_path])
    assert _names(result) == {"real"}
    assert result.stats.symlinks_skipped == 2
    assert not result.errors


def test_following_symlinks_is_cycle_safe_and_counts_each_inode_once(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    write(tmp_path / "a" / "b" / "f", b"content")
    os.symlink("../..", tmp_path / "a" / "b" / "up")  # loop to the root
    os.symlink("b", tmp_path / "a" / "b2")  # second route to the same directory
    os.symlink("a/b/f", tmp_path / "alias")  # symlink to a file: same inode as f
    os.symlink("missing", tmp_path / "dangling")
    result = walk([tmp_path], WalkOptions(follow_symlinks=True))
    assert len(result.files) == 1
    assert len(result.files[0].links) == 1  # f is also reachable as alias (or via b2)
    assert [os.path.basename(e.path) for e in result.errors] == [b"dangling"]


def test_names_that_are_not_utf8_survive_as_bytes(tmp_path: Path) -> None:
    name = b"caf\xe9-\xff.txt"
    write(os.path.join(os.fsencode(tmp_path), name), b"latin-1 name")
    (entry,) = walk([tmp_path]).files
    assert os.path.basename(entry.path) == name
    assert os.fsencode(entry.display) == entry.path  # surrogateescape round trip


def test_filters_sizes_and_globs(tmp_path: Path) -> None:
    write(tmp_path / "empty.txt", b"")
    write(tmp_path / "small.txt", b"x" * 10)
    write(tmp_path / "big.txt", b"x" * 5000)
    write(tmp_path / "big.log", b"x" * 5000)
    (tmp_path / "skipme").mkdir()
    write(tmp_path / "skipme" / "inner.txt", b"x" * 100)
    assert _names(walk([tmp_path])) == {"small.txt", "big.txt", "big.log", "inner.txt"}
    assert "empty.txt" in _names(walk([tmp_path], WalkOptions(min_size=0)))
    assert _names(walk([tmp_path], WalkOptions(min_size=11, max_size=4999))) == {"inner.txt"}
    assert _names(walk([tmp_path], WalkOptions(include=("*.txt",), exclude=("skipme",)))) == {
        "small.txt",
        "big.txt",
    }


def test_one_filesystem_stops_at_another_device(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        import pytest

        pytest.skip("no second filesystem at /dev/shm")
    other = Path(os.path.join(shm, f"pg-dedup-{os.getpid()}"))
    other.mkdir()
    try:
        write(other / "elsewhere", b"on tmpfs")
        write(tmp_path / "here", b"on disk")
        os.symlink(other, tmp_path / "mnt")
        assert _names(walk([tmp_path], WalkOptions(follow_symlinks=True))) == {"here", "elsewhere"}
        assert _names(walk([tmp_path], WalkOptions(follow_symlinks=True, one_filesystem=True))) == {"here"}
    finally:
        shutil.rmtree(other)


def test_directory_vanishing_mid_walk_is_reported_and_the_walk_goes_on(tmp_path: Path) -> None:
    for d in ("a", "b", "c"):
        (tmp_path / d).mkdir()
        write(tmp_path / d / "f", d.encode() * 5)
    seen = []
    for item in iter_files([tmp_path], WalkOptions()):
        seen.append(item)
        if not isinstance(item, WalkError) and item.path.endswith(b"a/f"):
            shutil.rmtree(tmp_path / "b")  # listed already, not yet entered
    errors = [i for i in seen if isinstance(i, WalkError)]
    files = [i for i in seen if not isinstance(i, WalkError)]
    assert [os.path.basename(e.path) for e in errors] == [b"b"]
    assert "FileNotFoundError" in errors[0].error
    assert sorted(os.path.basename(os.path.dirname(f.path)) for f in files) == [b"a", b"c"]


def test_special_files_are_never_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    write(tmp_path / "f", b"x")
    result = walk([tmp_path])
    assert _names(result) == {"f"}
    assert result.stats.special_skipped == 1


def test_missing_root_is_a_per_path_error(tmp_path: Path) -> None:
    write(tmp_path / "f", b"x")
    result = walk([tmp_path / "nope", tmp_path])
    assert _names(result) == {"f"}
    assert len(result.errors) == 1


def _confined_tree(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    write(root / "sub" / "a", b"inside" * 10)
    write(outside / "secret", b"secret" * 10)
    os.symlink(outside, root / "dir-out")  # a directory outside
    os.symlink(outside / "secret", root / "file-out")  # a file outside
    os.symlink("../../outside/secret", root / "sub" / "dots-out")  # relative, through '..'
    os.symlink("/etc", root / "etc")
    os.symlink("sub/a", root / "file-in")  # stays inside: followed
    os.symlink("sub", root / "dir-in")
    return root, outside


def test_a_confined_walk_follows_only_links_that_stay_inside(tmp_path: Path) -> None:
    root, _ = _confined_tree(tmp_path)
    result = walk([root], WalkOptions(follow_symlinks=True, confine=(str(root),)))
    (entry,) = result.files  # one inode, met as file-in and through dir-in (= sub, entered once)
    names = {os.path.relpath(os.fsdecode(p), root) for p in [entry.path, *entry.links]}
    assert names == {"file-in", "dir-in/a"}
    errors = {os.path.basename(e.display): e.error for e in result.errors}
    assert set(errors) == {"dir-out", "file-out", "dots-out", "etc"}
    assert all("outside the allowed scan roots" in e for e in errors.values()), errors
    # Unconfined, the same walk does read outside (the behaviour the confinement removes).
    free = walk([root], WalkOptions(follow_symlinks=True))
    assert any(f.display.endswith("file-out") for f in free.files)


def test_a_confined_walk_refuses_roots_outside(tmp_path: Path) -> None:
    root, outside = _confined_tree(tmp_path)
    for bad in (outside, root / "dir-out", root / ".." / "outside", root / "file-out"):
        result = walk([bad], WalkOptions(follow_symlinks=True, confine=(str(root),)))
        assert not result.files, bad
        (error,) = result.errors
        assert "outside the allowed scan roots" in error.error


def test_a_directory_swapped_for_a_symlink_after_the_walk_is_not_read(tmp_path: Path) -> None:
    """TOCTOU: the walk admitted root/sub/{a,b}; sub then becomes a symlink to a directory
    outside holding files of the same names, sizes and times. The reader's (device, inode)
    check after open refuses them: errors, never the outside content."""
    from services.dedup.files.scanner import scan

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    for d in (root / "sub", outside):
        for name in ("a", "b"):
            write(d / name, b"same" * 100)
            os.utime(d / name, ns=(1_000_000_000, 1_000_000_000))
    walked = walk([root], WalkOptions(confine=(str(root),)))
    assert len(walked.files) == 2
    os.rename(root / "sub", tmp_path / "moved")
    os.symlink(outside, root / "sub")

    import services.dedup.files.scanner as scanner_mod

    original = scanner_mod.walk
    scanner_mod.walk = lambda roots, options: walked  # type: ignore[assignment]
    try:
        result = scan([root], WalkOptions(confine=(str(root),)))
    finally:
        scanner_mod.walk = original  # type: ignore[assignment]
    assert not result.groups
    assert len(result.errors) == 2 and all("other inode" in e.error for e in result.errors)
