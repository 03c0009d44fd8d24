"""Property: on any small tree, the engine's groups are exactly "files with equal bytes".

The reference reads every file whole and groups by content: no stages, no hashes, nothing
shared with the engine. Hypothesis draws trees with many equal sizes, shared prefixes and
suffixes and tiny files, where the size / head / tail / verify shortcuts must stay exact;
the partial size is drawn small so that head, tail and full stages all get exercised.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from services.dedup.files import stages
from services.dedup.files.scanner import scan
from services.dedup.files.stages import ScanConfig

_blocks = st.sampled_from([b"", b"a", b"ab", b"abc" * 3, bytes(range(7)), b"\x00" * 9])
_content = st.lists(_blocks, max_size=5).map(b"".join)


def _reference(root: Path) -> set[frozenset[str]]:
    by_bytes: dict[bytes, set[str]] = {}
    for p in root.iterdir():
        data = p.read_bytes()
        if data:  # empty files are never reported (the engine's default, like the peers')
            by_bytes.setdefault(data, set()).add(p.name)
    return {frozenset(v) for v in by_bytes.values() if len(v) > 1}


@settings(max_examples=60, deadline=None)
@given(
    contents=st.lists(_content, min_size=1, max_size=14),
    copies=st.lists(st.integers(0, 13), max_size=8),
    partial=st.sampled_from([1, 2, 4, 8, 4096]),
    algorithm=st.sampled_from(["blake3", "xxh3-128", "sha256"]),
    direct=st.booleans(),
)
def test_groups_equal_naive_grouping_by_bytes(
    contents: list[bytes], copies: list[int], partial: int, algorithm: str, direct: bool
) -> None:
    root = Path(tempfile.mkdtemp(prefix="pg-dedup-prop-"))
    saved = stages.DIRECT_MAX
    stages.DIRECT_MAX = saved if direct else -1  # both routes: partial stages, or straight to verify
    try:
        files = list(contents) + [contents[i % len(contents)] for i in copies]
        for i, data in enumerate(files):
            (root / f"f{i:02d}").write_bytes(data)
        result = scan([root], config=ScanConfig(workers=1, partial_size=partial, algorithm=algorithm))
        ours = {frozenset(os.path.basename(f.display) for f in g.files) for g in result.groups}
        assert ours == _reference(root)
        assert not result.errors
    finally:
        stages.DIRECT_MAX = saved
        shutil.rmtree(root)
