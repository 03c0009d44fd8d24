"""The stage pipeline: each stage prunes, only byte-proven groups come out, errors stay per path."""

from __future__ import annotations

import json
import os
import random
import tracemalloc
from pathlib import Path

import pytest

from services.dedup.files import compare, stages
from services.dedup.files.scanner import scan
from services.dedup.files.stages import (
    LOCKSTEP_GROUP,
    ScanConfig,
    ScanContext,
    find_duplicates,
    full_stage,
    head_stage,
    size_groups,
    tail_stage,
    verify_stage,
)
from services.dedup.files.walk import walk
from tests.services.dedup.conftest import write


def _group_names(result) -> list[list[str]]:
    return sorted(sorted(os.path.basename(f.display) for f in g.files) for g in result.groups)


def test_each_stage_prunes_what_it_can_see(tmp_path: Path) -> None:
    rng = random.Random(1)
    base = rng.randbytes(100 * 1024)  # above DIRECT_MAX: the partial stages run
    write(tmp_path / "unique-size", base[:1000])
    write(tmp_path / "a", base)
    write(tmp_path / "a-copy", base)
    head, tail, mid = bytearray(base), bytearray(base), bytearray(base)
    head[0] ^= 1
    tail[-1] ^= 1
    mid[len(base) // 2] ^= 1
    write(tmp_path / "head-differs", bytes(head))
    write(tmp_path / "tail-differs", bytes(tail))
    write(tmp_path / "middle-differs", bytes(mid))
    result = scan([tmp_path], config=ScanConfig(workers=1))
    assert _group_names(result) == [["a", "a-copy"]]
    by_name = {s.name: s for s in result.stages}
    assert (by_name["size"].files_in, by_name["size"].files_out) == (6, 5)
    assert (by_name["head"].files_in, by_name["head"].files_out) == (5, 4)
    assert (by_name["tail"].files_in, by_name["tail"].files_out) == (4, 3)
    # A group this small skips the full hash: verify hashes while comparing, one read per byte.
    assert (by_name["full"].files_in, by_name["full"].files_out, by_name["full"].bytes_read) == (3, 3, 0)
    assert (by_name["verify"].files_in, by_name["verify"].files_out) == (3, 2)
    # The head stage reads each file's tail through the same descriptor as its head (one open
    # per file for both digests): the tail stage reads nothing more.
    assert by_name["head"].bytes_read == 5 * 2 * 4096
    assert by_name["tail"].bytes_read == 0
    assert by_name["verify"].bytes_read == 3 * len(base)
    # Without a cache to keep it, no digest is computed: the byte compare is the proof.
    assert result.groups[0].digest is None


def test_small_groups_go_straight_to_verification(tmp_path: Path) -> None:
    data = random.Random(8).randbytes(20_000)
    for name in ("a", "b"):
        write(tmp_path / name, data)
    changed = bytearray(data)
    changed[0] ^= 1
    write(tmp_path / "c", bytes(changed))
    result = scan([tmp_path], config=ScanConfig(workers=1))
    by_name = {s.name: s for s in result.stages}
    assert by_name["head"].bytes_read == by_name["tail"].bytes_read == by_name["full"].bytes_read == 0
    assert by_name["verify"].bytes_read <= 3 * len(data)  # each file read at most once
    assert _group_names(result) == [["a", "b"]]


def test_large_groups_are_fully_hashed_before_verification(tmp_path: Path) -> None:
    rng = random.Random(4)
    base = rng.randbytes(30_000)
    for i in range(LOCKSTEP_GROUP + 4):
        data = bytearray(base)
        if i % 2:
            data[15_000] ^= 0xFF  # two contents, differing only in the middle
        write(tmp_path / f"f{i:02d}", bytes(data))
    result = scan([tmp_path], config=ScanConfig(workers=1))
    by_name = {s.name: s for s in result.stages}
    assert (by_name["full"].groups_out, by_name["full"].bytes_read) == (2, (LOCKSTEP_GROUP + 4) * len(base))
    assert sorted(len(g.files) for g in result.groups) == [(LOCKSTEP_GROUP + 4) // 2] * 2


def test_verification_catches_what_the_hashes_missed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Content changed after hashing, with size and mtime put back: only the byte compare can tell."""
    monkeypatch.setattr(stages, "LOCKSTEP_GROUP", 0)  # make the full stage hash this small group
    data = random.Random(2).randbytes(100_000)
    for name in ("x", "y", "z"):
        write(tmp_path / name, data)
    ctx = ScanContext(config=ScanConfig(workers=1))
    files = walk([tmp_path]).files
    groups = size_groups(files)
    for stage in (head_stage, tail_stage, full_stage):
        from services.dedup.files.stages import StageStats

        ctx.stages.append(StageStats(stage.__name__))
        groups = stage(groups, ctx)
    assert [len(g.files) for g in groups] == [3]
    st = os.stat(tmp_path / "y")
    changed = bytearray(data)
    changed[50_000] ^= 0xFF
    write(tmp_path / "y", bytes(changed))
    os.utime(tmp_path / "y", ns=(st.st_atime_ns, st.st_mtime_ns))
    from services.dedup.files.stages import StageStats

    ctx.stages.append(StageStats("verify"))
    groups = verify_stage(groups, ctx)
    assert [sorted(os.path.basename(f.path) for f in g.files) for g in groups] == [[b"x", b"z"]]


def test_files_changed_or_removed_after_the_walk_are_reported_not_trusted(tmp_path: Path) -> None:
    data = b"same content " * 1000
    for name in ("a", "b", "c", "d"):
        write(tmp_path / name, data)
    files = walk([tmp_path]).files
    with open(tmp_path / "b", "ab") as f:
        f.write(b"grown")
    os.unlink(tmp_path / "c")
    ctx = ScanContext(config=ScanConfig(workers=1))
    groups = find_duplicates(files, ctx)
    assert [sorted(os.path.basename(f.path) for f in g.files) for g in groups] == [[b"a", b"d"]]
    errors = {os.path.basename(e.path): e.error for e in ctx.errors}
    assert set(errors) == {b"b", b"c"}
    assert "changed during scan" in errors[b"b"]
    assert "FileNotFoundError" in errors[b"c"]


def test_file_replaced_by_a_fifo_mid_scan_does_not_hang(tmp_path: Path) -> None:
    write(tmp_path / "a", b"q" * 9000)
    write(tmp_path / "b", b"q" * 9000)
    files = walk([tmp_path]).files
    os.unlink(tmp_path / "b")
    os.mkfifo(tmp_path / "b")
    ctx = ScanContext(config=ScanConfig(workers=1))
    assert find_duplicates(files, ctx) == []
    assert [os.path.basename(e.path) for e in ctx.errors] == [b"b"]


def test_sparse_files_equal_a_dense_file_with_the_same_bytes(tmp_path: Path) -> None:
    for name in ("sparse1", "sparse2"):
        with open(tmp_path / name, "wb") as f:
            f.truncate(3 << 20)
            f.seek(2 << 20)
            f.write(b"island")
    dense = bytearray(3 << 20)
    dense[2 << 20 : (2 << 20) + 6] = b"island"
    write(tmp_path / "dense", bytes(dense))
    with open(tmp_path / "other-sparse", "wb") as f:
        f.truncate(3 << 20)
        f.seek(1 << 20)
        f.write(b"island")
    assert _group_names(scan([tmp_path], config=ScanConfig(workers=1))) == [["dense", "sparse1", "sparse2"]]


def test_memory_does_not_grow_with_file_size(tmp_path: Path) -> None:
    for name in ("big1", "big2"):
        with open(tmp_path / name, "wb") as f:
            f.truncate(96 << 20)  # sparse: cheap to create, read as 96 MiB of zeros
            f.write(b"start")
    tracemalloc.start()
    try:
        result = scan([tmp_path], config=ScanConfig(workers=1, algorithm="xxh3-128"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(result.groups) == 1
    assert result.bytes_read >= 2 * (96 << 20)  # both files read whole (once, hashed while compared)
    assert peak < 8 << 20, f"peak {peak} bytes while reading {result.bytes_read}"


@pytest.mark.parametrize("algorithm", ["blake3", "xxh3-128", "sha256"])
def test_every_hash_algorithm_finds_the_same_groups(tree: Path, algorithm: str) -> None:
    reference = _group_names(scan([tree], config=ScanConfig(workers=1)))
    assert _group_names(scan([tree], config=ScanConfig(workers=1, algorithm=algorithm))) == reference


def test_parallel_and_inode_ordered_reads_give_the_same_groups(tree: Path) -> None:
    reference = scan([tree], config=ScanConfig(workers=1))
    parallel = scan([tree], config=ScanConfig(workers=4, order="inode"))
    assert _group_names(parallel) == _group_names(reference)
    assert parallel.bytes_read == reference.bytes_read  # same work, only in another order


def test_groups_larger_than_the_open_file_limit_are_compared_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compare, "MAX_OPEN", 4)
    contents = [bytes([i]) * 20_000 for i in range(3)]
    for i in range(15):
        write(tmp_path / f"f{i:02d}", contents[i % 3])
    files = walk([tmp_path]).files
    classes = compare.equal_classes(files, compare.ByteCounter(), lambda e, exc: pytest.fail(str(exc)))
    names = sorted(sorted(int(os.path.basename(f.path)[1:]) for f in c) for c, _ in classes)
    assert names == [list(range(k, 15, 3)) for k in range(3)]


def test_unreadable_files_and_directories_are_reported_per_path(world_readable_tmp: Path) -> None:
    """Tests run as root, which reads through chmod 000; the scan runs in a forked child that
    has dropped to user `nobody` (setgid/setuid), so the kernel really refuses the reads."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    root = world_readable_tmp / "t"
    (root / "locked-dir").mkdir(parents=True)
    for name in ("a", "b", "locked-file"):
        write(root / name, b"readable?" * 1000)
    write(root / "locked-dir" / "c", b"readable?" * 1000)
    os.chmod(root / "locked-file", 0)
    os.chmod(root / "locked-dir", 0)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges for good, scan, send the result, exit without cleanup
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = scan([root], config=ScanConfig(workers=1))
            payload = {
                "groups": [sorted(os.path.basename(f.display) for f in g.files) for g in result.groups],
                "errors": {os.path.basename(e.display): e.error for e in result.errors},
            }
            os.write(write_fd, json.dumps(payload).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        payload = json.loads(f.read() or b"{}")
    os.waitpid(pid, 0)
    assert payload["groups"] == [["a", "b"]]
    assert set(payload["errors"]) == {"locked-dir", "locked-file"}
    assert all("PermissionError" in e for e in payload["errors"].values())


def test_a_file_written_while_it_is_being_compared_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer changes the file between two chunks of the lock-step compare: the real
    write is made from inside the read loop, at a known point, so the race is deterministic."""
    from services.dedup.files import reader

    data = random.Random(10).randbytes(3 << 20)  # several chunks
    for name in ("a", "b", "c"):
        write(tmp_path / name, data)
    original = reader.OpenedFile.read_into
    calls = {"n": 0}

    def read_then_someone_writes(self, offset: int, buf: bytearray) -> int:
        n = original(self, offset, buf)
        if self.entry.path.endswith(b"/b"):
            calls["n"] += 1
        if calls["n"] == 2 and self.entry.path.endswith(b"/b"):
            with open(self.entry.path, "r+b") as f:  # same size, new bytes after the read point
                f.seek(len(data) - 10)
                f.write(b"X" * 10)
        return n

    monkeypatch.setattr(reader.OpenedFile, "read_into", read_then_someone_writes)
    result = scan([tmp_path], config=ScanConfig(workers=1))
    assert _group_names(result) == [["a", "c"]]
    assert [os.path.basename(e.path) for e in result.errors] == [b"b"]
    assert "changed during scan" in result.errors[0].error


def test_file_entry_keeps_inode_and_times_exactly() -> None:
    from services.dedup.files.walk import FileEntry

    for ino in (0, 1, 3_048_630, 2**64 - 1):
        for mtime in (-(2**63), -1, 0, 1_600_000_000_123_456_789, 2**63 - 1):
            for ctime in (mtime, mtime + 1 if mtime < 2**63 - 1 else 0):
                e = FileEntry(b"/x/y", 7, ino, 123, mtime, ctime)
                assert (e.ino, e.mtime_ns, e.ctime_ns, e.key) == (ino, mtime, ctime, (7, ino))


def test_sort_groups_orders_by_size_then_first_path() -> None:
    import random

    from services.dedup.files.stages import Group, sort_groups
    from services.dedup.files.walk import FileEntry

    rng = random.Random(4)
    names = [b"a/b", b"a/b-x", b"a/b/c", b"a/z", b"b", b"a/b/c/d", b"\xff", b"a/\xc3\x28"]
    groups = []
    for i in range(200):
        path = rng.choice(names) + b"/" + str(i).encode()
        groups.append(Group(rng.choice([1, 2, 3, 4096]), [FileEntry(path, 1, i, 1, 0, 0)]))
    expected = sorted(groups, key=lambda g: (g.size, g.files[0].path))
    assert sort_groups(list(groups)) == expected


def test_find_duplicates_leaves_the_callers_list_alone_unless_it_is_given_away(tmp_path: Path) -> None:
    from services.dedup.files.walk import walk

    for i in range(6):
        (tmp_path / f"f{i}").write_bytes(b"same" if i % 2 else b"other" * (i + 1))
    files = walk([tmp_path]).files
    before = list(files)
    groups = find_duplicates(files, ScanContext(config=ScanConfig(workers=1)))
    assert files == before and len(groups) == 1
    again = find_duplicates(files, ScanContext(config=ScanConfig(workers=1)), consume=True)
    assert files == []
    assert [[f.path for f in g.files] for g in again] == [[f.path for f in g.files] for g in groups]


def test_small_and_larger_groups_come_out_in_the_reports_order(tree: Path) -> None:
    """find_duplicates joins the small stage's groups and the pipeline's without sorting again:
    each list is sorted and every small size is below every other."""
    from services.dedup.files.stages import SMALL_MAX, sort_groups

    for workers in (0, 1):
        result = scan([tree], config=ScanConfig(workers=workers))
        sizes = {g.size <= SMALL_MAX for g in result.groups}
        assert sizes == {True, False}  # both kinds present
        assert result.groups == sort_groups(list(result.groups))


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 6000, 8191, 8192, 8193, 20_000])
def test_head_and_tail_from_one_open_equal_the_two_partial_digests(tmp_path: Path, size: int) -> None:
    from services.dedup.files.reader import ByteCounter, head_and_tail_digests, partial_digest

    write(tmp_path / "f", random.Random(size).randbytes(size))
    (entry,) = walk([tmp_path]).files
    counter = ByteCounter()
    head, tail = head_and_tail_digests(entry, counter, 4096, "blake3")
    assert head == partial_digest(entry, ByteCounter(), "head", 4096, "blake3")
    assert tail == partial_digest(entry, ByteCounter(), "tail", 4096, "blake3")
    assert counter.total == (size if size <= 2 * 4096 else 2 * 4096)


def test_a_file_changed_after_the_head_stage_read_its_tail_is_still_caught(tmp_path: Path) -> None:
    """The tail digest comes from the head stage's read: a change between the two stages is
    the verify stage's to catch (it checks every file before and after reading it)."""
    from services.dedup.files.stages import StageStats

    data = random.Random(3).randbytes(100_000)
    for name in ("x", "y", "z"):
        write(tmp_path / name, data)
    ctx = ScanContext(config=ScanConfig(workers=1))
    groups = size_groups(walk([tmp_path]).files)
    ctx.stages.append(StageStats("head"))
    groups = head_stage(groups, ctx)
    with open(tmp_path / "y", "ab") as f:  # grown (an mtime may not move within a tick)
        f.write(b"grown")
    for name, stage in (("tail", tail_stage), ("full", full_stage), ("verify", verify_stage)):
        ctx.stages.append(StageStats(name))
        groups = stage(groups, ctx)
    assert not ctx.tails
    assert [sorted(os.path.basename(f.path) for f in g.files) for g in groups] == [[b"x", b"z"]]
    assert [os.path.basename(e.path) for e in ctx.errors] == [b"y"]
