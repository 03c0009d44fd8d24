"""A Bloom filter in front of the store's exact URL set.

It answers "certainly new" or "maybe seen": a certainly-new URL is inserted without an index
lookup; a maybe-seen one goes to the exact check. So the filter saves lookups and never changes an
answer (no URL is skipped because of a false positive). Sizing (m bits, k hashes) for n items at
false-positive rate p: m = -n ln p / (ln 2)^2, k = (m / n) ln 2. Index i of k comes from double
hashing (Kirsch-Mitzenmacher): h1 + i * h2 over one 128-bit digest.
"""

from __future__ import annotations

import math


class BloomFilter:
    def __init__(self, capacity: int, error_rate: float = 0.01) -> None:
        if capacity < 1 or not 0 < error_rate < 1:
            raise ValueError("capacity must be >= 1 and error_rate in (0, 1)")
        self.capacity = capacity
        self.error_rate = error_rate
        self.bits = max(64, math.ceil(-capacity * math.log(error_rate) / (math.log(2) ** 2)))
        self.hashes = max(1, round(self.bits / capacity * math.log(2)))
        self._array = bytearray((self.bits + 7) // 8)
        self.count = 0

    def _positions(self, key: bytes) -> list[int]:
        # `key` is already a uniform 128-bit digest (store.url_key): split it instead of rehashing.
        h1 = int.from_bytes(key[:8], "little")
        h2 = int.from_bytes(key[8:16], "little") | 1
        return [(h1 + i * h2) % self.bits for i in range(self.hashes)]

    def add(self, key: bytes) -> None:
        for pos in self._positions(key):
            self._array[pos >> 3] |= 1 << (pos & 7)
        self.count += 1

    def __contains__(self, key: bytes) -> bool:
        return all(self._array[pos >> 3] & (1 << (pos & 7)) for pos in self._positions(key))

    @property
    def memory_bytes(self) -> int:
        return len(self._array)
