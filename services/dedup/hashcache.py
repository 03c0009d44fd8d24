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
_UNSEEN: Any = object()


@dataclass(slots=True)
class CacheCounters:
    hits: int = 0
    misses: int = 0


class HashCache:
    """Typed layer over libs.lru.PersistentLRU (one small dict per file).

    A scan asks for several fields of the same file (head, tail, full digest, verified), so
    each file's value is fetched from the persistent LRU once (peek: no log record) and kept
    in a per-scan working set; changes are written back as one put per changed file by
    flush(), and files that were only read are touched once so that they stay recent.
    """

    def __init__(self, directory: str | os.PathLike, capacity: int = 1_000_000) -> None:
        from libs.lru import PersistentLRU  # imported here so the engine runs without a cache

        os.makedirs(directory, exist_ok=True)
        # fsync per entry would cost a disk flush per file; losing the tail of the log on a
        # crash only costs re-hashing, so durability comes from the snapshot at close().
        self._lru: PersistentLRU[Key, dict[str, Any]] = PersistentLRU(
            directory, capacity, snapshot_every=100_000, fsync=False
        )
        self._lock = threading.Lock()
        self._work: dict[Key, dict[str, Any] | None] = {}
        self._dirty: set[Key] = set()
        self.counters = CacheCounters()

    @staticmethod
    def key(entry: FileEntry) -> Key:
        return (entry.dev, entry.ino, entry.size, entry.mtime_ns)

    def _value(self, entry: FileEntry) -> dict[str, Any] | None:
        key = (entry.dev, entry.ino, entry.size, entry.mtime_ns)
        value = self._work.get(key, _UNSEEN)
        if value is not _UNSEEN:
            return value
        value = self._lru.peek(key)
        if value is not None and value.get("ctime_ns") != entry.ctime_ns:
            value = None  # rewritten and re-dated: same key, other content
        self._work[key] = value
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

    def get_many(self, entries: list[FileEntry], field: str) -> list[Any]:
        """get() for many files under one lock acquisition (the warm re-scan's hot loop)."""
        with self._lock:
            value_of = self._value
            out: list[Any] = []
            append = out.append
            hits = 0
            for entry in entries:
                value = value_of(entry)
                found = None if value is None else value.get(field)
                if found is not None:
                    hits += 1
                append(found)
            self.counters.hits += hits
            self.counters.misses += len(out) - hits
            return out

    def peek(self, entry: FileEntry, field: str) -> Any:
        """Like get, without counting a hit or miss (for planning which groups to read)."""
        with self._lock:
            value = self._value(entry)
            return None if value is None else value.get(field)

    def peek_any(self, entries: list[FileEntry], field: str) -> bool:
        """Whether any of `entries` has `field` cached (peek, under one lock acquisition)."""
        with self._lock:
            for entry in entries:
                value = self._value(entry)
                if value is not None and value.get(field) is not None:
                    return True
            return False

    def update(self, entry: FileEntry, **fields: Any) -> None:
        with self._lock:
            key = self.key(entry)
            value = dict(self._value(entry) or {"ctime_ns": entry.ctime_ns})
            value.update(fields)
            self._work[key] = value
            self._dirty.add(key)

    def flush(self) -> None:
        """Write changed values, touch the ones only read, forget the working set.

        Touching (a logged get) only matters once evictions are near: below 90% of capacity
        nothing is evicted, so the re-scan of an unchanged tree writes nothing at all.
        """
        with self._lock:
            touch = len(self._lru) >= 0.9 * self._lru.capacity
            for key, value in self._work.items():
                if key in self._dirty and value is not None:
                    self._lru.put(key, value)
                elif value is not None and touch:
                    self._lru.get(key)
            self._work.clear()
            self._dirty.clear()

    def close(self) -> None:
        changed = bool(self._dirty)
        self.flush()
        with self._lock:
            if changed:  # the next open then loads one snapshot instead of replaying the log
                self._lru.snapshot()
            self._lru.close()

    def __enter__(self) -> HashCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "proving-ground", "dedup-hashes")
