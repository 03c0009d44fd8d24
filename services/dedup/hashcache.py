"""Persistent hash cache: re-scanning an unchanged tree reads almost nothing.

Keyed by (device, inode, size, mtime_ns) as the issue asks; ctime_ns is stored in the value
and compared too, because mtime can be set back (`touch -d`) while ctime cannot, so a file
rewritten and re-dated is still a miss. The value holds whatever digests earlier scans
computed (head, tail, full per algorithm) and a `verified` flag: this exact inode, unchanged,
was proven byte-identical to another file with the same cryptographic full digest.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from services.dedup.walk import FileEntry

Key = tuple[int, int, int, int]


@dataclass(slots=True)
class CacheCounters:
    hits: int = 0
    misses: int = 0
    stores: int = 0


class HashCache:
    """Thin typed layer over libs.lru.PersistentLRU (values are small dicts)."""

    def __init__(self, directory: str | os.PathLike, capacity: int = 1_000_000) -> None:
        from libs.lru import PersistentLRU  # imported here so the engine runs without a cache

        os.makedirs(directory, exist_ok=True)
        # fsync per entry would cost a disk flush per file; losing the tail of the log on a
        # crash only costs re-hashing, so the log is flushed by snapshot()/close() instead.
        self._lru = PersistentLRU(directory, capacity, snapshot_every=50_000, fsync=False)
        self._lock = threading.Lock()
        self.counters = CacheCounters()

    @staticmethod
    def key(entry: FileEntry) -> Key:
        return (entry.dev, entry.ino, entry.size, entry.mtime_ns)

    def _value(self, entry: FileEntry) -> dict[str, Any] | None:
        value = self._lru.get(self.key(entry))
        if value is None or value.get("ctime_ns") != entry.ctime_ns:
            return None
        return value

    def get(self, entry: FileEntry, field: str) -> Any:
        with self._lock:
            value = self._value(entry)
            found = None if value is None else value.get(field)
            if found is None:
                self.counters.misses += 1
            else:
                self.counters.hits += 1
            return found

    def peek(self, entry: FileEntry, field: str) -> Any:
        """Like get, without counting a hit or miss (for planning which groups to read)."""
        with self._lock:
            value = self._value(entry)
            return None if value is None else value.get(field)

    def update(self, entry: FileEntry, **fields: Any) -> None:
        with self._lock:
            value = dict(self._value(entry) or {"ctime_ns": entry.ctime_ns})
            value.update(fields)
            self._lru.put(self.key(entry), value)
            self.counters.stores += 1

    def close(self) -> None:
        with self._lock:
            self._lru.close()

    def __enter__(self) -> HashCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "proving-ground", "dedup-hashes")
