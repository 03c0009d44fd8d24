"""Content-defined chunking: agrees with a plain per-byte FastCDC, survives shifts, reports overlap."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from services.dedup.files import chunking
from services.dedup.files.chunking import ChunkParams, chunk_file, chunk_report
from tests.services.dedup.conftest import run_cli, write


def reference_cuts(data: bytes, p: ChunkParams) -> list[int]:
    """FastCDC as the paper writes it: h reset at each chunk start, one byte at a time, 64-bit h.
    Only the gear table and masks are shared with the engine, not the loop."""
    gear = [int(x) for x in chunking._GEAR]
    ms, ml = int(p.mask_small), int(p.mask_large)
    cuts, start, n = [], 0, len(data)
    while start < n:
        if n - start <= p.min_size:
            cuts.append(n)
            break
        h = 0
        end = min(start + p.max_size, n)
        i = start
        cut = end
        while i < end:
            h = ((h << 1) + gear[data[i]]) & 0xFFFFFFFFFFFFFFFF
            i += 1
            if i - start < p.min_size:
                continue
            mask = ms if i - start <= p.avg else ml
            if h & mask == 0:
                cut = i
                break
        cuts.append(cut)
        start = cut
    return cuts


def _ends(path: Path, p: ChunkParams) -> list[int]:
    out, pos = [], 0
    for _, n in chunk_file(path, p):
        pos += n
        out.append(pos)
    return out


@pytest.mark.parametrize("avg", [1024, 8192])
def test_cut_points_equal_a_per_byte_reference(tmp_path: Path, avg: int) -> None:
    data = random.Random(avg).randbytes(300_000)
    write(tmp_path / "f", data)
    p = ChunkParams(avg)
    ends = _ends(tmp_path / "f", p)
    assert ends == reference_cuts(data, p)
    sizes = [b - a for a, b in zip([0, *ends], ends, strict=False)]
    assert all(p.min_size <= s <= p.max_size for s in sizes[:-1])
    assert p.avg / 2 < len(data) / len(sizes) < p.avg * 2


def test_segment_boundaries_do_not_change_the_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = random.Random(5).randbytes(1_000_000)
    write(tmp_path / "f", data)
    whole = list(chunk_file(tmp_path / "f", ChunkParams()))
    monkeypatch.setattr(chunking, "SEGMENT", 70_001)  # odd size: cuts straddle segments
    assert list(chunk_file(tmp_path / "f", ChunkParams())) == whole


def test_an_insertion_only_disturbs_nearby_chunks(tmp_path: Path) -> None:
    rng = random.Random(9)
    a = rng.randbytes(2_000_000)
    b = a[:700_000] + rng.randbytes(37) + a[700_000:]  # fixed-size blocks would all misalign
    write(tmp_path / "a", a)
    write(tmp_path / "b", b)
    write(tmp_path / "a-copy", a)
    write(tmp_path / "unrelated", rng.randbytes(500_000))
    rep = chunk_report([tmp_path])
    assert rep.identical_skipped == 1
    names = {i: Path(p.decode()).name for i, p in enumerate(rep.files)}
    (top, *rest) = rep.pairs
    assert {names[top[0]], names[top[1]]} == {"a", "b"}
    assert top[2] >= 0.95 * len(a)
    assert all(s < 100_000 for _, _, s in rest)


def test_chunks_command(tmp_path: Path) -> None:
    rng = random.Random(3)
    base = rng.randbytes(200_000)
    write(tmp_path / "v1", base)
    write(tmp_path / "v2", base[:100_000] + b"edit" + base[100_000:])
    proc = run_cli("chunks", "--format", "json", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["files"] == 2 and report["pairs"][0]["fraction_of_smaller"] > 0.9
    bad = run_cli("chunks", "--avg", "1000", str(tmp_path))
    assert bad.returncode == 2 and bad.stderr.decode().count("\n") == 1
