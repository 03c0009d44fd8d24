"""64-bit SimHash (Charikar) and a banded index that finds every pair within Hamming distance k.

Features are words weighted by their count in the page: a small edit flips few features, so
the fingerprints of near-duplicates differ in few bits, while unrelated pages differ in ~32.

Banded index (Manku, Jain, Das Sarma 2007): cut the 64 bits into k + 1 bands. If two
fingerprints differ in at most k bits, at least one band holds none of those bits
(pigeonhole), so the pair shares that band's value exactly. Looking up each band of a query
finds every fingerprint within distance k (no false negatives w.r.t. the distance), and the
exact popcount check removes the rest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import xxhash

_BITS = np.arange(64, dtype=np.uint64)


def simhash(features: Iterable[str] | Counter[str]) -> int:
    """Each feature's 64-bit hash votes +weight on its set bits and -weight on the others;
    the fingerprint keeps the bits with a positive total."""
    counts = features if isinstance(features, Counter) else Counter(features)
    if not counts:
        return 0
    hashes = np.fromiter((xxhash.xxh3_64_intdigest(f.encode("utf-8")) for f in counts), dtype=np.uint64)
    weights = np.fromiter(counts.values(), dtype=np.int64)
    bits = ((hashes[:, None] >> _BITS) & np.uint64(1)).astype(np.int64)  # features x 64
    votes = weights @ (2 * bits - 1)
    return int(sum(1 << i for i in np.flatnonzero(votes > 0)))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def band_masks(k: int) -> list[tuple[int, int]]:
    """(shift, mask) of k + 1 contiguous bands covering all 64 bits."""
    bands = k + 1
    out = []
    start = 0
    for i in range(bands):
        width = 64 // bands + (1 if i < 64 % bands else 0)
        out.append((start, (1 << width) - 1))
        start += width
    return out


class SimHashIndex:
    """Fingerprints by band value; `near(fp)` returns ids within Hamming distance `k`."""

    def __init__(self, k: int = 6) -> None:
        if not 0 <= k < 32:
            raise ValueError(f"k must be in [0, 32), got {k}")
        self.k = k
        self._bands = band_masks(k)
        self._tables: list[dict[int, list[int]]] = [{} for _ in self._bands]
        self._fps: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._fps)

    def add(self, doc_id: int, fp: int) -> None:
        self._fps[doc_id] = fp
        for table, (shift, mask) in zip(self._tables, self._bands, strict=True):
            table.setdefault((fp >> shift) & mask, []).append(doc_id)

    def near(self, fp: int) -> list[tuple[int, int]]:
        """(doc_id, distance) for every indexed fingerprint within distance k, nearest first."""
        seen: set[int] = set()
        out = []
        for table, (shift, mask) in zip(self._tables, self._bands, strict=True):
            for doc_id in table.get((fp >> shift) & mask, ()):
                if doc_id in seen:
                    continue
                seen.add(doc_id)
                d = hamming(fp, self._fps[doc_id])
                if d <= self.k:
                    out.append((doc_id, d))
        out.sort(key=lambda x: (x[1], x[0]))
        return out
