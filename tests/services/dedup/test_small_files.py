"""Issue 15, speed and memory: small files read once, adaptive readers, lean entries, a
streamed report."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from services.dedup.files import report, stages
from services.dedup.files.reader import in_page_cache
from services.dedup.files.scanner import scan
from services.dedup.files.stages import SMALL_MAX, ScanConfig, ScanContext
from services.dedup.files.walk import WalkOptions, walk
from tests.services.dedup.conftest import write


def _names(result) -> list[list[str]]:
    return sorted(sorted(os.path.basename(os.fsdecode(f.path)) for f in g.files) for g in result.groups)


def test_small_files_are_read_once_and_compared_by_their_bytes(tmp_path: Path) -> None:
    # 40 files of one small size (more than a lock-step group): 4 contents, 10 copies each.
    contents = [bytes([i]) * 1000 for i in range(4)]
    for i in range(40):
        write(tmp_path / f"f{i:02d}", contents[i % 4])
    write(tmp_path / "lone", b"x" * 999)
    result = scan([tmp_path], config=ScanConfig(workers=1))
    by_name = {s.name: s for s in result.stages}
    assert by_name["small"].bytes_read == 40 * 1000  # each byte once, no partial hash first
    assert sum(s.bytes_read for s in result.stages) == 40 * 1000
    assert _names(result) == sorted(sorted(f"f{i:02d}" for i in range(k, 40, 4)) for k in range(4))
    assert result.groups[0].digest is None  # no cache to keep a digest: none computed


def test_with_a_cache_small_classes_get_their_digest_and_a_rescan_reads_nothing(tmp_path: Path) -> None:
    import blake3

    from services.dedup.files.hashcache import HashCache

    root = tmp_path / "t"
    root.mkdir()
    for i in range(20):
        write(root / f"f{i:02d}", bytes([i % 2]) * 100)
    for expect_read in (2000, 0):
        with HashCache(tmp_path / "c", [root]) as cache:
            result = scan([root], config=ScanConfig(workers=1), cache=cache)
        assert result.bytes_read == expect_read
        assert sorted(g.digest for g in result.groups) == sorted(
            blake3.blake3(bytes([k]) * 100).digest() for k in (0, 1)
        )


def test_small_and_large_files_together_come_out_sorted(tmp_path: Path) -> None:
    big = os.urandom(SMALL_MAX + 1)
    for name in ("b1", "b2"):
        write(tmp_path / name, big)
    for name in ("s1", "s2"):
        write(tmp_path / name, b"small")
    result = scan([tmp_path], config=ScanConfig(workers=1))
    assert [sorted(os.path.basename(os.fsdecode(f.path)) for f in g.files) for g in result.groups] == [
        ["s1", "s2"],
        ["b1", "b2"],
    ]


def test_a_small_file_changed_after_the_walk_is_reported_not_trusted(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write(tmp_path / name, b"same bytes")
    walked = walk([tmp_path])
    write(tmp_path / "c", b"other size!")
    ctx = ScanContext(config=ScanConfig(workers=1))
    groups = stages.find_duplicates(walked.files, ctx)
    assert [sorted(os.path.basename(os.fsdecode(f.path)) for f in g.files) for g in groups] == [["a", "b"]]
    assert len(ctx.errors) == 1 and ctx.errors[0].path.endswith(b"/c")


def test_small_runs_bound_what_is_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "SMALL_RUN", 3)  # many runs: same groups as one run
    for i in range(30):
        write(tmp_path / f"f{i:02d}", bytes([i % 3]) * (10 + i % 2))
    result = scan([tmp_path], config=ScanConfig(workers=1))
    assert sorted(len(g.files) for g in result.groups) == [5] * 6


def test_adaptive_readers_one_thread_when_cached_more_when_cold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The decision, with the probe's answer set by the test (the real page cache is shared
    # with every other process, which may evict or drop it at any moment).
    import threading

    for i in range(6):
        write(tmp_path / f"f{i}", b"%d" % (i % 2) * 20_000)
    entries = walk([tmp_path]).files
    cold: set[bytes] = set()
    monkeypatch.setattr(stages, "in_page_cache", lambda e: e.path not in cold)
    threads: set[int] = set()

    def size(e):
        threads.add(threading.get_ident())
        return e.size

    ctx = ScanContext(config=ScanConfig(workers=0))
    assert sorted(r for _, r, _ in ctx.map(size, entries, lambda e: e)) == [20_000] * 6
    assert (ctx.segments, ctx.segments_cold) == (1, 0)
    assert threads == {threading.get_ident()}  # one reader: this thread
    cold.add(entries[3].path)
    threads.clear()
    assert sorted(r for _, r, _ in ctx.map(size, entries, lambda e: e)) == [20_000] * 6
    assert (ctx.segments, ctx.segments_cold) == (2, 1)
    assert threading.get_ident() not in threads  # the reader threads did the work


def test_the_page_cache_probe_tells_cached_from_evicted(tmp_path: Path) -> None:
    write(tmp_path / "f", b"x" * 20_000)
    (entry,) = walk([tmp_path]).files
    fd = os.open(entry.path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped
        if in_page_cache(entry) is None:
            pytest.skip("RWF_NOWAIT not supported here")
        # Another process may drop caches at any moment: a few tries, each read-then-probe.
        cached = False
        for _ in range(5):
            os.pread(fd, 20_000, 0)
            cached = cached or in_page_cache(entry) is True
        assert cached
        # The probe asks twice; the first ask starts the read, which a fast virtual disk can
        # finish before the second (about 1 in 3 here): a few tries, each evict-then-probe.
        for _ in range(5):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            if in_page_cache(entry) is False:
                break
        else:
            pytest.skip("this filesystem keeps the pages (tmpfs?): nothing is ever cold")
    finally:
        os.close(fd)


def test_adaptive_and_fixed_readers_find_the_same_groups(tree: Path) -> None:
    auto = scan([tree], config=ScanConfig(workers=0))
    assert _names(auto) == _names(scan([tree], config=ScanConfig(workers=3)))


def test_a_root_that_is_also_inside_another_root_is_one_entry(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "a", b"content")
    write(tmp_path / "d" / "b", b"content")
    for roots in ([tmp_path / "d", tmp_path / "d" / "a"], [tmp_path / "d" / "a", tmp_path / "d"]):
        files = walk(roots).files
        assert sorted(os.path.basename(f.path) for f in files) == [b"a", b"b"]
    # Overlapping directory roots: each directory is listed once, so each file is met once.
    assert len(walk([tmp_path, tmp_path / "d"]).files) == 2
    # A followed symlink to a file with one link: still one entry.
    os.symlink(tmp_path / "d" / "a", tmp_path / "link")
    assert len(walk([tmp_path], WalkOptions(follow_symlinks=True)).files) == 2


def test_entries_share_one_empty_links_tuple(tmp_path: Path) -> None:
    write(tmp_path / "a", b"1")
    write(tmp_path / "b", b"2")
    os.link(tmp_path / "a", tmp_path / "a2")
    by_name = {os.path.basename(f.path): f for f in walk([tmp_path]).files}
    assert by_name[b"b"].links == ()
    assert by_name[b"a"].links == [os.fsencode(tmp_path / "a2")]


@pytest.mark.parametrize("per_write", [1, 2, 5, 1024])
def test_the_streamed_report_is_json_dumps_indent2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, per_write: int
) -> None:
    monkeypatch.setattr(report, "FILES_PER_WRITE", per_write)
    for i in range(7):
        write(tmp_path / f"a{i}", b"x" * (i % 3 + 1))
        write(tmp_path / f"b{i}", b"x" * (i % 3 + 1))
    result = scan([tmp_path], config=ScanConfig(workers=1))
    assert len(result.groups) == 3
    out = io.StringIO()
    report.write_json(result, out)
    assert out.getvalue() == json.dumps(report.to_dict(result), indent=2) + "\n"
    empty = scan([tmp_path / "a0"], config=ScanConfig(workers=1))
    out = io.StringIO()
    report.write_json(empty, out)
    assert out.getvalue() == json.dumps(report.to_dict(empty), indent=2) + "\n"


@pytest.mark.parametrize("workers", [1, 3])
def test_a_scan_leaves_no_descriptor_open(tmp_path: Path, workers: int) -> None:
    for d in range(4):
        (tmp_path / f"d{d}").mkdir()
        for i in range(5):
            write(tmp_path / f"d{d}" / f"f{i}", b"same" if i % 2 else f"own {d} {i}".encode())
    fds_before = set(os.listdir("/proc/self/fd"))
    result = scan([tmp_path], config=ScanConfig(workers=workers))
    assert set(os.listdir("/proc/self/fd")) == fds_before
    assert [len(g.files) for g in result.groups] == [8]
    assert result.bytes_read == sum(p.stat().st_size for p in tmp_path.rglob("f*"))


def test_the_direct_group_text_is_the_generic_encoding(tmp_path: Path) -> None:
    from services.dedup.files.hashcache import HashCache

    root = tmp_path / "t"
    root.mkdir()
    for i in range(3):
        write(root / f"plain{i}", b"plain" * 10)
        write(root / f"big{i}", b"B" * (SMALL_MAX + 10))
        write(os.fsencode(root) + b"/odd-\xff" + str(i).encode(), b"odd bytes")
    write(root / 'quote"and\\back\u00e9', b"plain" * 10)
    os.link(root / "big0", root / "big0-alias")
    for cache_dir in (None, tmp_path / "cache"):
        if cache_dir is None:
            result = scan([root], config=ScanConfig(workers=1))
        else:
            with HashCache(cache_dir, [root]) as cache:
                result = scan([root], config=ScanConfig(workers=1), cache=cache)
        texts = [report._group_text(g) for g in result.groups]
        assert any(t is not None for t in texts) and any(t is None for t in texts)  # both paths ran
        for g, t in zip(result.groups, texts, strict=True):
            assert t is None or t == report.encode_at(report._group_json(g), 2)
        out = io.StringIO()
        report.write_json(result, out)
        assert out.getvalue() == json.dumps(report.to_dict(result), indent=2) + "\n"
        assert any(g.digest for g in result.groups) == (cache_dir is not None)


def test_the_page_cache_probe_asks_twice_before_it_says_cold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached page may refuse the first RWF_NOWAIT read and serve the next: one refusal
    is not "cold" (it would put a warm segment on IO_WORKERS threads); two are."""
    from services.dedup.files import reader

    if getattr(os, "RWF_NOWAIT", None) is None:
        pytest.skip("no RWF_NOWAIT here")
    write(tmp_path / "f", b"x" * 100)
    (entry,) = walk([tmp_path]).files
    real = os.preadv
    refusals = {"left": 0}

    def preadv(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
        if flags and refusals["left"]:
            refusals["left"] -= 1
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real(fd, buffers, offset, flags)

    monkeypatch.setattr(reader.os, "preadv", preadv)
    refusals["left"] = 1
    assert in_page_cache(entry) is True
    refusals["left"] = 2
    assert in_page_cache(entry) is False
