"""The persistent hash cache: an unchanged tree is re-scanned without reading content."""

from __future__ import annotations

import json
import os
from pathlib import Path

from services.dedup.hashcache import HashCache
from services.dedup.scanner import scan
from services.dedup.stages import ScanConfig
from tests.services.dedup.conftest import run_cli, write


def _groups(result) -> list[list[bytes]]:
    return sorted(sorted(f.path for f in g.files) for g in result.groups)


def _scan_cached(root: Path, cache_dir: Path, **config) -> object:
    with HashCache(cache_dir) as cache:
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


def test_a_cache_in_use_by_another_scan_is_skipped_with_a_warning(tree: Path, tmp_path: Path) -> None:
    with HashCache(tmp_path / "c"):  # another scan holds the directory lock
        proc = run_cli("scan", "--format", "json", "--cache", str(tmp_path / "c"), str(tree))
    assert proc.returncode == 0
    assert proc.stderr.decode().startswith("warning: hash cache unavailable")
    assert json.loads(proc.stdout)["totals"]["groups"] > 0
