"""Persistent hash cache: re-scanning an unchanged tree reads almost nothing.

One SQLite file per scan root (per set of roots, when a scan has several), in the cache
directory: `root-<sha256 of the resolved roots>.sqlite`, so a scan of a small tree never
pays for the entries of a large one. Rows are keyed by (device, inode) with an index (the
primary key of a WITHOUT ROWID table) and looked up per file, in batches of one query per
device and SELECT_BATCH inodes, only for the files a stage asks about (candidates: files of a
unique size are never looked up). Nothing is loaded at start.

A row is valid for a file while its size, mtime_ns and ctime_ns are the ones stored: mtime
can be set back (`touch -d`), ctime cannot, so a file rewritten and re-dated is still a miss.
The row holds whatever digests earlier scans computed (head, tail, full per algorithm) and a
`verified` digest: this exact inode, unchanged, was proven byte-identical to another file
with that cryptographic full digest.

Writes are buffered and go in one transaction at flush()/close(); WAL mode lets two scans of
the same root share the file. A cache that cannot be read (corrupt, locked too long) turns
into misses with one warning (`warnings`); the scan never fails because of it.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from services.dedup.files.walk import FileEntry

Key = tuple[int, int]  # (device, inode)
_UNSEEN: Any = object()
SELECT_BATCH = 500  # inodes per query: well under SQLite's bound-parameter limit
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (dev, ino)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(slots=True)
class CacheCounters:
    hits: int = 0
    misses: int = 0
    looked_up: int = 0  # files whose row was asked of SQLite


def _s64(n: int) -> int:
    """An unsigned 64-bit number (inode, device) as SQLite's signed INTEGER."""
    return n - (1 << 64) if n >= 1 << 63 else n


def _encode(fields: dict[str, bytes]) -> bytes:
    out = bytearray()
    for name, value in fields.items():
        raw = name.encode()
        out += bytes((len(raw),)) + raw + bytes((len(value),)) + value
    return bytes(out)


def _decode(blob: bytes) -> dict[str, bytes] | None:
    fields: dict[str, bytes] = {}
    i, n = 0, len(blob)
    while i < n:
        k = blob[i]
        name = blob[i + 1 : i + 1 + k]
        i += 1 + k
        if i >= n:
            return None
        v = blob[i]
        value = blob[i + 1 : i + 1 + v]
        i += 1 + v
        if len(value) != v or i > n:
            return None  # truncated: treat the row as absent
        try:
            fields[name.decode()] = value
        except UnicodeDecodeError:
            return None
    return fields


def cache_file_name(roots: Iterable[str | bytes | os.PathLike]) -> str:
    """The cache file of a scan of `roots` (order and spelling do not matter)."""
    resolved = sorted({os.fsencode(os.path.realpath(os.fsencode(r))) for r in roots})
    if not resolved:
        return "hashes.sqlite"
    return "root-" + hashlib.sha256(b"\0".join(resolved)).hexdigest()[:24] + ".sqlite"


class HashCache:
    """Digests of files, per (device, inode), in the SQLite file of one scan root."""

    def __init__(self, directory: str | os.PathLike, roots: Sequence[str | bytes | os.PathLike] = ()) -> None:
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(os.fsdecode(directory), cache_file_name(roots))
        self.warnings: list[str] = []
        self.counters = CacheCounters()
        self._lock = threading.Lock()
        # Values looked up or changed in this scan; None = no valid row.
        self._work: dict[Key, dict[str, bytes] | None] = {}
        self._stamp: dict[Key, tuple[int, int, int]] = {}
        self._dirty: set[Key] = set()
        self._broken = False
        db = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a crash loses recent rows, never the file
            db.executescript(_SCHEMA)
            db.execute("SELECT 1 FROM files LIMIT 1").fetchall()  # a damaged header fails here
            if roots:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('roots', ?)",
                    ("\n".join(sorted(os.fsdecode(os.path.realpath(os.fsencode(r))) for r in roots)),),
                )
        except BaseException:
            db.close()
            raise
        self._db = db

    @staticmethod
    def key(entry: FileEntry) -> Key:
        return (entry.dev, entry.ino)

    def _fail(self, exc: sqlite3.Error) -> None:
        if not self._broken:
            self._broken = True
            self.warnings.append(f"hash cache {self.path} unreadable ({exc}); scanning on without it")

    def _load(self, entries: Iterable[FileEntry]) -> None:
        """Fetch the rows of the entries not looked up yet: one query per device and batch."""
        todo: dict[int, list[FileEntry]] = {}
        work = self._work
        for e in entries:
            key = (e.dev, e.ino)
            if key not in work:
                work[key] = None
                todo.setdefault(e.dev, []).append(e)
                self.counters.looked_up += 1
        if not todo or self._broken:
            return
        try:
            for dev, group in todo.items():
                by_ino = {_s64(e.ino): e for e in group}
                inos = list(by_ino)
                for start in range(0, len(inos), SELECT_BATCH):
                    batch = inos[start : start + SELECT_BATCH]
                    rows = self._db.execute(
                        "SELECT ino, size, mtime_ns, ctime_ns, data FROM files WHERE dev = ? AND ino IN ("
                        + ",".join("?" * len(batch))
                        + ")",
                        (_s64(dev), *batch),
                    ).fetchall()
                    for ino, size, mtime_ns, ctime_ns, data in rows:
                        f = by_ino.get(ino)
                        if f is None or (size, mtime_ns, ctime_ns) != (f.size, f.mtime_ns, f.ctime_ns):
                            continue  # another file now has this inode, or it changed
                        work[(f.dev, f.ino)] = _decode(data)
        except sqlite3.Error as exc:
            self._fail(exc)

    def prefetch(self, entries: Iterable[FileEntry]) -> None:
        """Fetch the rows of many files at once (batched queries) before asking file by file."""
        with self._lock:
            self._load(entries)

    def forget(self, entries: Iterable[FileEntry]) -> None:
        """Drop unchanged rows of these files from the working set (memory: a re-scan of 200k
        files need not hold 200k decoded rows at once). They are fetched again if asked for."""
        with self._lock:
            for e in entries:
                key = (e.dev, e.ino)
                if key not in self._dirty:
                    self._work.pop(key, None)

    def _value(self, entry: FileEntry) -> dict[str, bytes] | None:
        key = (entry.dev, entry.ino)
        value = self._work.get(key, _UNSEEN)
        if value is _UNSEEN:
            self._load((entry,))
            value = self._work[key]
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
        """get() for many files: their rows fetched in batches, under one lock acquisition."""
        with self._lock:
            self._load(entries)
            work = self._work
            out: list[Any] = []
            append = out.append
            hits = 0
            for entry in entries:
                value = work[(entry.dev, entry.ino)]
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
            self._load(entries)
            for entry in entries:
                value = self._work[(entry.dev, entry.ino)]
                if value is not None and value.get(field) is not None:
                    return True
            return False

    def update(self, entry: FileEntry, **fields: Any) -> None:
        with self._lock:
            key = (entry.dev, entry.ino)
            value = dict(self._value(entry) or {})
            value.update(fields)
            self._work[key] = value
            self._stamp[key] = (entry.size, entry.mtime_ns, entry.ctime_ns)
            self._dirty.add(key)

    def flush(self) -> None:
        """Write the changed rows in one transaction and forget this scan's working set."""
        with self._lock:
            self._persist_locked()
            self._work.clear()
            self._stamp.clear()

    def persist(self) -> None:
        """Write the changed rows in one transaction; the working set stays (a watcher keeps
        the rows it looked up between batches)."""
        with self._lock:
            self._persist_locked()

    def _persist_locked(self) -> None:
        rows = [
            (_s64(key[0]), _s64(key[1]), *self._stamp[key], _encode(value))
            for key in self._dirty
            if (value := self._work.get(key)) is not None
        ]
        self._dirty.clear()
        if not rows or self._broken:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self.warnings.append(f"hash cache {self.path}: {len(rows)} entries not saved ({exc})")

    def rows(self) -> int:
        """Rows in this root's cache file (a count over the table: for tests and reports)."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM files").fetchone()[0])

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._lock:
                self._db.close()
        if self._broken:
            # Set the damaged file aside: the next scan starts a fresh one.
            try:
                os.replace(self.path, self.path + ".corrupt")
            except OSError:
                pass

    def __enter__(self) -> HashCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "proving-ground", "dedup-hashes")
