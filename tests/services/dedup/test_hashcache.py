"""The persistent hash cache: an unchanged tree is re-scanned without reading content."""

from __future__ import annotations

import json
import os
from pathlib import Path

from services.dedup.files.hashcache import HashCache, cache_file_name
from services.dedup.files.scanner import scan
from services.dedup.files.stages import ScanConfig
from services.dedup.files.walk import FileEntry
from tests.services.dedup.conftest import run_cli, write


def _groups(result) -> list[list[bytes]]:
    return sorted(sorted(f.path for f in g.files) for g in result.groups)


def _scan_cached(root: Path, cache_dir: Path, roots: list[Path] | None = None, **config) -> object:
    with HashCache(cache_dir, roots or []) as cache:
        return scan([root], config=ScanConfig(workers=1, **config), cache=cache)


def test_warm_rescan_reads_nothing_and_finds_the_same_groups(tree: Path, tmp_path: Path) -> None:
    cold = _scan_cached(tree, tmp_path / "cache")
    warm = _scan_cached(tree, tmp_path / "cache")  # a fresh open: the cache came back from disk
    assert cold.bytes_read > 1 << 20
    assert warm.bytes_read == 0
    assert warm.cache_hits > 0
    assert _groups(warm) == _groups(cold) == _groups(scan([tree], config=ScanConfig(workers=1)))


def test_rescan_through_the_cli_reads_nothing(tree: Path, tmp_path: Path) -> None:
    args = ["scan", "--format", "json", "--cache", str(tmp_path / "c"), str(tree)]
    first = json.loads(run_cli(*args, check=True).stdout)
    second = json.loads(run_cli(*args, check=True).stdout)
    assert first["totals"]["bytes_read"] > 0 and second["totals"]["bytes_read"] == 0
    assert first["groups"] == second["groups"]


def test_a_changed_file_is_a_miss_even_with_its_mtime_put_back(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    data = os.urandom(50_000)
    for name in ("a", "b", "c"):
        write(root / name, data)
    assert len(_scan_cached(root, tmp_path / "cache").groups[0].files) == 3
    st = os.stat(root / "b")
    changed = bytearray(data)
    changed[25_000] ^= 1
    write(root / "b", bytes(changed))
    os.utime(root / "b", ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: ctime differs
    again = _scan_cached(root, tmp_path / "cache")
    assert _groups(again) == [[os.fsencode(root / "a"), os.fsencode(root / "c")]]
    assert 0 < again.bytes_read <= 2 * 4096 + len(data)  # only b's partial and full digests


def test_non_cryptographic_digests_are_always_verified_by_bytes(tree: Path, tmp_path: Path) -> None:
    _scan_cached(tree, tmp_path / "cache", algorithm="xxh3-128")
    warm = _scan_cached(tree, tmp_path / "cache", algorithm="xxh3-128")
    stages = {s.name: s for s in warm.stages}
    assert stages["head"].bytes_read == stages["tail"].bytes_read == stages["full"].bytes_read == 0
    assert stages["verify"].bytes_read > 0  # xxh3 collisions can be built on purpose


def test_reverify_reads_again(tree: Path, tmp_path: Path) -> None:
    _scan_cached(tree, tmp_path / "cache")
    forced = _scan_cached(tree, tmp_path / "cache", trust_verified_cache=False)
    assert {s.name: s.bytes_read for s in forced.stages}["verify"] > 0


def test_a_corrupt_cache_is_reported_and_the_scan_still_runs(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    run_cli("scan", "--cache", str(cache), str(tree), check=True)
    for p in cache.iterdir():
        if p.is_file() and p.stat().st_size > 0 and p.name != "lock":
            with open(p, "r+b") as f:
                f.seek(max(0, p.stat().st_size // 2))
                f.write(b"\x00garbage\xff" * 8)
    proc = run_cli("scan", "--format", "json", "--cache", str(cache), str(tree))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["totals"]["groups"] > 0
    assert b"Traceback" not in proc.stderr


def test_two_scans_of_one_root_share_its_cache(tree: Path, tmp_path: Path) -> None:
    with HashCache(tmp_path / "c", [tree]):  # another scan has it open (WAL: readers and a writer)
        proc = run_cli("scan", "--format", "json", "--cache", str(tmp_path / "c"), str(tree))
    assert proc.returncode == 0
    assert proc.stderr == b""
    again = json.loads(run_cli("scan", "--format", "json", "--cache", str(tmp_path / "c"), str(tree)).stdout)
    assert again["totals"]["bytes_read"] == 0


def test_one_cache_file_per_root_and_only_candidates_are_looked_up(tmp_path: Path) -> None:
    big, small = tmp_path / "big", tmp_path / "small"
    for root, n in ((big, 300), (small, 40)):
        root.mkdir()
        for i in range(n):
            write(root / f"f{i}", b"%d" % (i % (n // 2)) * 100)
    write(small / "unique-size", b"u" * 12345)
    cache_dir = tmp_path / "cache"
    _scan_cached(big, cache_dir, roots=[big])
    # Rows of another tree (250k would do the same; 20k keeps the test quick), never loaded whole.
    with HashCache(cache_dir, [small]) as cache:
        cache._db.executemany(
            "INSERT INTO files VALUES (?, ?, 1, 1, 1, x'')", [(7, i) for i in range(20_000)]
        )
    with HashCache(cache_dir, [small]) as cache:
        first = scan([small], config=ScanConfig(workers=1), cache=cache)
    names = sorted(p.name for p in cache_dir.iterdir() if p.suffix == ".sqlite")
    assert len(names) == 2 and names[0] != names[1]
    with HashCache(cache_dir, [small]) as cache:
        warm = scan([small], config=ScanConfig(workers=1), cache=cache)
        assert warm.bytes_read == 0 and first.bytes_read > 0
        # the 40 candidates, not the unique size nor the 20k others
        assert cache.counters.looked_up == 40
        assert cache.rows() >= 20_040
    assert cache_file_name([small]) == cache_file_name([str(small) + "/"]) != cache_file_name([big])


def test_inode_and_device_numbers_above_2_63_are_stored(tmp_path: Path) -> None:
    f = tmp_path / "f"
    write(f, b"x")
    st = os.stat(f)
    entry = FileEntry(os.fsencode(f), (1 << 64) - 3, (1 << 64) - 1, 1, st.st_mtime_ns, st.st_ctime_ns)
    with HashCache(tmp_path / "c") as cache:
        cache.update(entry, **{"full:blake3": b"d" * 32})
    with HashCache(tmp_path / "c") as cache:
        assert cache.get(entry, "full:blake3") == b"d" * 32
        assert cache.get(entry, "verified") is None
