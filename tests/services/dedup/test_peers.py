"""The engine's duplicate groups equal those of fdupes, jdupes and rdfind on the same trees.

The trees hold every hard case of the generator: empty files (excluded by all), equal sizes
differing only in the first, last or a middle byte, hard links, a symlink loop and a symlink
to a file, sparse files equal to a dense one, and names that are not valid UTF-8.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.testkit import dedup_peers as peers
from tests.conftest import need_binary
from tests.services.dedup.conftest import scan_json


@pytest.fixture(scope="module", params=[3, 11])
def peer_tree(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from services.dedup.files.treegen import generate_tree

    root = tmp_path_factory.mktemp(f"peer{request.param}") / "tree"
    generate_tree(root, files=800, total_bytes=24 << 20, seed=request.param)
    return root


@pytest.fixture(scope="module")
def engine(peer_tree: Path) -> peers.Groups:
    report = scan_json(str(peer_tree), "--workers", "2")
    groups = peers.engine_groups_from_json(report)
    assert len(groups) > 50, "the generated tree must hold many duplicate groups"
    return groups


def _explain(ours: peers.Groups, theirs: peers.Groups) -> str:
    only_ours = sorted(map(sorted, ours - theirs))[:3]
    only_theirs = sorted(map(sorted, theirs - ours))[:3]
    return f"only engine: {only_ours}; only peer: {only_theirs}"


def test_groups_equal_fdupes(peer_tree: Path, engine: peers.Groups) -> None:
    need_binary("fdupes")
    theirs = peers.run_fdupes([str(peer_tree)])
    assert engine == theirs, _explain(engine, theirs)


def test_groups_equal_jdupes(peer_tree: Path, engine: peers.Groups) -> None:
    need_binary("jdupes")
    theirs = peers.run_jdupes([str(peer_tree)])
    assert engine == theirs, _explain(engine, theirs)


def test_groups_equal_rdfind(peer_tree: Path, engine: peers.Groups) -> None:
    need_binary("rdfind")
    theirs = peers.run_rdfind([str(peer_tree)])
    assert engine == theirs, _explain(engine, theirs)


def test_hard_cases_are_in_the_tree_and_handled(peer_tree: Path, engine: peers.Groups) -> None:
    import os

    t = peer_tree / "tricky"

    def ino(name: bytes | str) -> tuple[int, int]:
        st = os.lstat(os.path.join(os.fsencode(t), os.fsencode(name)))
        return (st.st_dev, st.st_ino)

    groups_by_inode = {i: g for g in engine for i in g}
    for size in (100, 3 * 4096 + 1, 1 << 20):
        base = groups_by_inode[ino(f"near{size}-base")]
        assert base == {ino(f"near{size}-base"), ino(f"near{size}-copy")}  # one-byte twins never join
        for where in ("first", "last", "middle"):
            assert ino(f"near{size}-{where}") not in groups_by_inode
    assert groups_by_inode[ino("linked-a")] == {ino("linked-a"), ino("linked-copy")}  # links count once
    assert groups_by_inode[ino("sparse-1")] == {ino("sparse-1"), ino("sparse-2"), ino("sparse-dense")}
    assert groups_by_inode[ino(b"odd-\xff\xfe.bin")] == {
        ino(b"odd-\xff\xfe.bin"),
        ino(b"odd-\xc3\x28-copy.bin"),
    }
    for i in range(3):
        assert ino(f"empty{i}") not in groups_by_inode
