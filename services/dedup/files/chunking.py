"""Content-defined chunking report: bytes shared by files that are not identical.

    python -m services.dedup chunks PATH... [--avg 8K]

Chunker: FastCDC-style gear hash (Xia et al., 2016). The gear hash h = (h << 1) + GEAR[byte]
forgets a byte after it has been shifted out, so its low 32 bits depend on the last 32 bytes
only: a rolling window, computed here for a whole buffer at once with numpy (32 shifted adds)
instead of a Python loop per byte. A position is a cut point when (h & mask) == 0, with the
normalised chunking of FastCDC: a harder mask (more bits) before the average size and an
easier one after, within [avg/4, avg*8]. Because every position considered lies at least
min_size > 32 bytes past the chunk start, the window never reaches into the previous chunk,
which is exactly FastCDC's reset of h at each chunk start.

An insertion or deletion moves cut points only near the edit; the chunks after it are found
again, so two versions of a file share most chunks although no fixed-size block lines up.
Files that are byte-identical to an earlier one are counted once (the scan reports those);
the report is about the partial overlap the scan cannot see.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import blake3
import numpy as np

from services.dedup.files.report import human_bytes, path_json
from services.dedup.files.walk import WalkError, WalkOptions, walk

SEGMENT = 8 << 20
WINDOW = 32
_GEAR = np.random.default_rng(0x9E3779B9).integers(0, 1 << 32, size=256, dtype=np.uint64).astype(np.uint32)
SHARED_CAP = 64  # a chunk in more files than this (zeros, headers) is not expanded into pairs


def _mask(bits: int) -> np.uint32:
    # Spread the mask's bits over the 32-bit word, as FastCDC does, so all window bytes count.
    positions = {31 - round(i * 31 / max(1, bits - 1)) for i in range(bits)} if bits > 1 else {31}
    m = 0
    for p in positions:
        m |= 1 << p
    return np.uint32(m)


@dataclass(frozen=True, slots=True)
class ChunkParams:
    avg: int = 8192

    @property
    def min_size(self) -> int:
        return self.avg // 4

    @property
    def max_size(self) -> int:
        return self.avg * 8

    @property
    def bits(self) -> int:
        return self.avg.bit_length() - 1

    @property
    def mask_small(self) -> np.uint32:  # before avg: harder to cut (normalisation level 2)
        return _mask(self.bits + 2)

    @property
    def mask_large(self) -> np.uint32:  # after avg: easier to cut
        return _mask(self.bits - 2)


def gear_hashes(buf: np.ndarray) -> np.ndarray:
    """Low 32 bits of the gear hash at every position of `buf` (uint8 array)."""
    g = _GEAR[buf]
    h = g.copy()
    for j in range(1, WINDOW):
        h[j:] += g[:-j] << np.uint32(j)
    return h


def _cuts(buf: np.ndarray, params: ChunkParams, final: bool) -> tuple[list[int], int]:
    """Cut positions (chunk ends) in `buf` that are certain; returns (cuts, consumed)."""
    n = len(buf)
    h = gear_hashes(buf)
    small = np.flatnonzero((h & params.mask_small) == 0) + 1  # a chunk ends after this byte
    large = np.flatnonzero((h & params.mask_large) == 0) + 1
    cuts: list[int] = []
    start = 0
    while True:
        if not final and start + params.max_size > n:
            return cuts, start  # the rest may cut differently once more bytes arrive
        if start >= n:
            return cuts, start
        lo, normal, hi = start + params.min_size, start + params.avg, min(start + params.max_size, n)
        if n - start <= params.min_size:
            cuts.append(n)
            return cuts, n
        i = np.searchsorted(small, lo)
        if i < len(small) and small[i] <= min(normal, hi):
            end = int(small[i])
        else:
            k = np.searchsorted(large, max(lo, normal + 1))
            end = int(large[k]) if k < len(large) and large[k] <= hi else hi
        cuts.append(end)
        start = end


def chunk_file(path: bytes | str, params: ChunkParams) -> Iterator[tuple[bytes, int]]:
    """(blake3 digest, length) of each chunk; memory is one segment plus one max chunk."""
    with open(path, "rb", buffering=0) as f:
        carry = b""
        while True:
            data = f.read(SEGMENT)
            final = not data
            buf = carry + data
            if not buf:
                return
            arr = np.frombuffer(buf, dtype=np.uint8)
            cuts, consumed = _cuts(arr, params, final)
            prev = 0
            for end in cuts:
                yield blake3.blake3(buf[prev:end]).digest(), end - prev
                prev = end
            carry = buf[consumed:]
            if final:
                return


@dataclass(slots=True)
class ChunkReport:
    params: ChunkParams
    files: list[bytes] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    identical_skipped: int = 0
    total_bytes: int = 0
    unique_chunk_bytes: int = 0
    chunks: int = 0
    unique_chunks: int = 0
    shared_bytes: int = 0  # bytes of files that also occur in another (non-identical) file
    pairs: list[tuple[int, int, int]] = field(default_factory=list)  # (file a, file b, shared bytes)
    errors: list[WalkError] = field(default_factory=list)
    truncated: bool = False

    def as_dict(self, top: int | None = None) -> dict[str, Any]:
        return {
            "avg_chunk": self.params.avg,
            "files": len(self.files),
            "identical_files_skipped": self.identical_skipped,
            "total_bytes": self.total_bytes,
            "chunks": self.chunks,
            "unique_chunks": self.unique_chunks,
            "unique_chunk_bytes": self.unique_chunk_bytes,
            "shared_bytes": self.shared_bytes,
            "dedup_ratio": round(self.total_bytes / self.unique_chunk_bytes, 4)
            if self.unique_chunk_bytes
            else 1.0,
            "truncated": self.truncated,
            "pairs": [
                {
                    "a": path_json(self.files[a]),
                    "b": path_json(self.files[b]),
                    "shared_bytes": s,
                    "fraction_of_smaller": round(s / max(1, min(self.sizes[a], self.sizes[b])), 4),
                }
                for a, b, s in self.pairs[:top]
            ],
            "errors": [{**path_json(e.path), "error": e.error} for e in self.errors],
        }


def chunk_report(
    roots: Sequence[str | bytes | os.PathLike],
    *,
    avg_size: int = 8192,
    min_file_size: int = 1,
    max_bytes: int | None = None,
) -> ChunkReport:
    params = ChunkParams(avg_size)
    walked = walk(list(roots), WalkOptions(min_size=max(1, min_file_size)))
    rep = ChunkReport(params=params, errors=list(walked.errors))
    seen_whole: set[bytes] = set()
    where: dict[bytes, list[int]] = {}  # chunk digest -> files holding it (each file once)
    chunk_len: dict[bytes, int] = {}
    for entry in walked.files:
        if max_bytes is not None and rep.total_bytes >= max_bytes:
            rep.truncated = True
            break
        try:
            whole = blake3.blake3()
            digests: list[tuple[bytes, int]] = []
            for d, n in chunk_file(entry.path, params):
                digests.append((d, n))
                whole.update(d)
        except OSError as exc:
            rep.errors.append(WalkError(entry.path, f"{type(exc).__name__}: {exc.strerror or exc}"))
            continue
        key = whole.digest() + len(digests).to_bytes(8, "little")
        if key in seen_whole:  # identical to a file already counted (same chunk sequence)
            rep.identical_skipped += 1
            continue
        seen_whole.add(key)
        fid = len(rep.files)
        rep.files.append(entry.path)
        rep.sizes.append(entry.size)
        for d, n in digests:
            rep.chunks += 1
            rep.total_bytes += n
            holders = where.setdefault(d, [])
            if not holders:
                chunk_len[d] = n
                rep.unique_chunks += 1
                rep.unique_chunk_bytes += n
            if not holders or holders[-1] != fid:
                holders.append(fid)
    pair_bytes: dict[tuple[int, int], int] = {}
    for d, holders in where.items():
        if len(holders) < 2:
            continue
        rep.shared_bytes += chunk_len[d] * len(holders)
        if len(holders) > SHARED_CAP:
            continue
        for i, a in enumerate(holders):
            for b in holders[i + 1 :]:
                pair_bytes[(a, b)] = pair_bytes.get((a, b), 0) + chunk_len[d]
    rep.pairs = sorted(((a, b, s) for (a, b), s in pair_bytes.items()), key=lambda x: (-x[2], x[0], x[1]))
    return rep


def write_chunk_report(rep: ChunkReport, out: TextIO, *, fmt: str = "table", top: int = 20) -> None:
    d = rep.as_dict(top=None if fmt == "json" else top)
    if fmt == "json":
        json.dump(d, out, indent=2)
        out.write("\n")
        return
    out.write(
        f"{d['files']} files ({d['identical_files_skipped']} identical copies skipped), "
        f"{human_bytes(d['total_bytes'])} in {d['chunks']} chunks"
        f" (avg target {human_bytes(rep.params.avg)}), "
        f"{human_bytes(d['unique_chunk_bytes'])} unique: ratio {d['dedup_ratio']}\n"
        f"bytes also present in another non-identical file: {human_bytes(d['shared_bytes'])}\n"
    )
    if d["pairs"]:
        out.write("\n  shared      of smaller  files\n")
        for p in d["pairs"]:
            out.write(
                f"  {human_bytes(p['shared_bytes']):>10}  {p['fraction_of_smaller'] * 100:>9.1f}%  "
                f"{p['a']['path']}  <->  {p['b']['path']}\n"
            )
    for e in d["errors"]:
        out.write(f"error: {e['path']}: {e['error']}\n")
    if rep.truncated:
        out.write("note: stopped at --max-bytes; later files were not chunked\n")
