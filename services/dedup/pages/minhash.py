"""MinHash signatures and LSH banding for Jaccard similarity of word-shingle sets.

A signature is `num_perm` minima of universal hashes (a*x + b mod p) over the 32-bit shingle
hashes; the fraction of equal positions estimates the Jaccard similarity s (standard error
sqrt(s(1-s)/num_perm)). LSH cuts the signature into b bands of r rows: a pair becomes a
candidate with probability 1 - (1 - s^r)^b, an S-curve with its threshold near (1/b)^(1/r);
candidates are kept only if the estimated similarity reaches `threshold`.

Defaults: 96 permutations, 32 bands x 3 rows (S-curve threshold ~0.31), keep at >= 0.5. A pair
with s = 0.6 is a candidate with probability 0.9996; an unrelated pair (s ~ 0.05) with 0.004,
so a lookup touches a small fraction of the index.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xxhash

PRIME = np.uint64((1 << 61) - 1)
MAX_HASH = np.uint64((1 << 32) - 1)


class MinHasher:
    def __init__(self, num_perm: int = 96, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        # a, b < 2^32 and x < 2^32 keep a*x + b inside 64 bits (no silent wrap-around).
        self._a = rng.integers(1, 1 << 32, size=num_perm, dtype=np.uint64)
        self._b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64)

    def signature(self, shingles: Iterable[str]) -> tuple[int, ...]:
        hashes = np.fromiter((xxhash.xxh32_intdigest(s.encode("utf-8")) for s in shingles), dtype=np.uint64)
        if hashes.size == 0:
            return tuple([int(MAX_HASH)] * self.num_perm)
        values = (np.outer(hashes, self._a) + self._b) % PRIME & MAX_HASH
        return tuple(int(v) for v in values.min(axis=0))


def jaccard_estimate(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def candidate_probability(s: float, bands: int, rows: int) -> float:
    return 1 - (1 - s**rows) ** bands


class MinHashLSH:
    def __init__(self, num_perm: int = 96, bands: int = 32, threshold: float = 0.5) -> None:
        if num_perm % bands:
            raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
        self.bands = bands
        self.rows = num_perm // bands
        self.threshold = threshold
        self._tables: list[dict[tuple[int, ...], list[int]]] = [{} for _ in range(bands)]
        self._sigs: dict[int, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self._sigs)

    def _band(self, sig: tuple[int, ...], i: int) -> tuple[int, ...]:
        return sig[i * self.rows : (i + 1) * self.rows]

    def add(self, doc_id: int, sig: tuple[int, ...]) -> None:
        self._sigs[doc_id] = sig
        for i, table in enumerate(self._tables):
            table.setdefault(self._band(sig, i), []).append(doc_id)

    def near(self, sig: tuple[int, ...]) -> list[tuple[int, float]]:
        """(doc_id, estimated Jaccard) of indexed signatures at or above the threshold."""
        seen: set[int] = set()
        out = []
        for i, table in enumerate(self._tables):
            for doc_id in table.get(self._band(sig, i), ()):
                if doc_id in seen:
                    continue
                seen.add(doc_id)
                j = jaccard_estimate(sig, self._sigs[doc_id])
                if j >= self.threshold:
                    out.append((doc_id, j))
        out.sort(key=lambda x: (-x[1], x[0]))
        return out
