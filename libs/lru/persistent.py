"""PersistentLRU: an LRUCache whose entries, values, capacity and exact recency order survive
restarts and crashes.

Layout of the directory::

    lock          flock()ed while open: one PersistentLRU per directory at a time
    snapshot      all entries in recency order + capacity + the generation G of the live log
    log.<G>       every state change since that snapshot, appended in order
    snapshot.tmp  only ever a snapshot being written; ignored and removed on open

Write rule: an operation's record reaches the log (one write of one checksummed frame)
before the in-memory cache changes, all under one lock, so the log order is the order in
which changes happened and memory is never ahead of the log. A get() that hits changes
recency, so it is logged too (a TOUCH record); a miss, peek(), ``in`` and len() change
nothing and are not. Evictions are not logged: replaying the same puts into a cache of the
same capacity evicts the same entries.

Compaction (``snapshot()``, also every ``snapshot_every`` records):
  1. write snapshot.tmp with generation G+1, flush, fsync;
  2. os.replace over ``snapshot``, fsync the directory  <- from here a restart reads G+1;
  3. create log.<G+1> with a durable header, fsync the directory;
  4. delete log.<G>, fsync the directory.
A crash before 2 leaves the old snapshot and log.<G>: both still valid. A crash after 2
leaves log.<G> behind, but the snapshot says G+1, so log.<G> (already folded into the
snapshot) is never replayed a second time; open deletes it. A missing log.<G+1> means a crash
before 3 completed: it is created empty.

Open: verify the snapshot (any failed check raises SnapshotCorrupt naming the file), load
it, replay log.<G> up to the first torn or checksum-failing record, and truncate the file
there, so nothing after it is ever trusted or appended behind. Damage that valid records
follow, one of which was written after the damaged bytes were durable, is not a torn tail:
LogCorrupt names the file and offset and nothing is changed. Damage followed only by records
that were never synced (what a power loss can leave) is cut like a torn tail, and
``recovery.dropped_records`` counts them (see ``libs.lru.logfile``).

Durability, ``sync=``. Every record reaches the kernel (one ``write``) before the call returns,
so a killed process loses nothing in any setting; they differ in what survives a power loss or
an OS crash, i.e. in which records are fdatasync()ed before the call returns:

  "always"  every record: every put, delete and clear that returned, and the recency of every
            hit, survives. One fdatasync per put, delete, clear *and hit*.
  "writes"  (default) puts, deletes and clears: every one that returned survives, with its
            value. A hit's TOUCH record is written but not synced; it becomes durable with the
            next synced record, a compaction or ``close()``. So a power loss can cost the
            recency of the hits since the last write: those entries come back as less recently
            used than they were (an eviction may then pick another victim), never with another
            value and never missing. Losing a hit loses no data, while syncing it made every
            hit a disk flush (thousands of hits/s instead of hundreds of thousands).
  "never"   nothing but snapshots (compaction) is synced: a power loss can cost anything
            written since the last compaction; what is recovered is the state after some
            prefix of the operations (the log's longest intact prefix).

In every setting the state recovered after a crash is the state after a prefix of the
operations, containing every operation the setting promised. ``fsync=True``/``False`` (the old
flag) mean "always"/"never". Snapshots are always fsynced. The I/O happens under the lock on
purpose: the log order must be the memory order.

Keys and values are pickled; only open directories you trust.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, get_args

from libs.lru.cache import CacheStats, LRUCache
from libs.lru.errors import DirectoryLocked, LogCorrupt, PersistenceError, SnapshotCorrupt
from libs.lru.logfile import VERSION as LOG_VERSION
from libs.lru.logfile import (
    AppendLog,
    LogScan,
    Op,
    fsync_directory,
    log_path,
    parse_generation,
)
from libs.lru.snapshot import SNAPSHOT_NAME, TEMP_NAME, Snapshot, read_snapshot, write_snapshot, write_temp

K = TypeVar("K")
V = TypeVar("V")

_MISSING: Any = object()
LOCK_NAME = "lock"
Sync = Literal["always", "writes", "never"]
SYNC_SETTINGS: tuple[str, ...] = get_args(Sync)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recovery:
    """What opening the directory found."""

    snapshot_entries: int  # entries loaded from the snapshot
    replayed_records: int  # log records applied on top of it
    dropped_bytes: int  # untrustworthy bytes cut off the end of the log
    problem: str | None  # why those bytes were dropped
    stale_logs_removed: int  # logs already folded into the snapshot (crash after step 2)
    dropped_records: int = 0  # valid but never-synced records cut off with the damage before them


def _dumps(obj: object) -> bytes:
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise TypeError(f"PersistentLRU keys and values must be picklable: {exc}") from exc


def _lock_directory(directory: Path) -> int:
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DirectoryLocked(directory, "another PersistentLRU has it open") from None
    return fd


class PersistentLRU(Generic[K, V]):
    """LRUCache API (without TTL) plus ``snapshot()``, ``close()`` and ``with`` support.

    ``sync``: "always", "writes" (default) or "never", what survives a power loss (see the
    module docstring); ``fsync=True``/``False`` is the older spelling of "always"/"never".
    ``snapshot_every``: records between compactions.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        capacity: int,
        *,
        snapshot_every: int = 10_000,
        sync: Sync | None = None,
        fsync: bool | None = None,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity: expected an integer >= 1, got {capacity!r}")
        if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise ValueError(f"snapshot_every: expected an integer >= 1, got {snapshot_every!r}")
        if fsync is not None:
            if sync is not None:
                raise ValueError("sync and fsync: pass one (fsync=True is sync='always', False 'never')")
            sync = "always" if fsync else "never"
        if sync is None:
            sync = "writes"
        if sync not in SYNC_SETTINGS:
            raise ValueError(f"sync: expected one of {', '.join(map(repr, SYNC_SETTINGS))}, got {sync!r}")
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._snapshot_every = snapshot_every
        self.sync: Sync = sync
        self._sync_writes = sync != "never"
        self._sync_hits = sync == "always"
        self._lock = threading.Lock()
        self._closed = False
        self._log: AppendLog | None = None
        self._lock_fd = _lock_directory(self._dir)
        try:
            self._open(capacity)
        except BaseException:
            if self._log is not None:
                self._log.close()
            os.close(self._lock_fd)
            raise

    # ------------------------------------------------------------------ open / recovery

    def _open(self, capacity: int) -> None:
        (self._dir / TEMP_NAME).unlink(missing_ok=True)  # never renamed: not part of the state
        generations = sorted(g for name in os.listdir(self._dir) if (g := parse_generation(name)) is not None)
        snap_path = self._dir / SNAPSHOT_NAME
        if snap_path.exists():
            snap = read_snapshot(snap_path)
        elif generations:
            raise SnapshotCorrupt(
                snap_path, f"missing while {len(generations)} log file(s) exist; refusing to start empty"
            )
        else:
            # A new directory: record the capacity before the first log exists, so that every
            # log always has a snapshot to apply to.
            snap = Snapshot(capacity, 1, [])
            write_snapshot(self._dir, snap)
        newer = [g for g in generations if g > snap.generation]
        if newer:
            raise LogCorrupt(
                log_path(self._dir, newer[0]),
                f"generation {newer[0]} is newer than the snapshot's {snap.generation}",
            )
        self._cache: LRUCache[K, V] = LRUCache(snap.capacity)
        for key, value in snap.entries:
            self._cache.put(key, value)
        if snap.generation in generations:
            self._log, scan = AppendLog.recover(self._dir, snap.generation)
        else:
            self._log, scan = AppendLog.create(self._dir, snap.generation), LogScan()
        for op, body in scan.records:
            self._replay(op, body)
        stale = [g for g in generations if g < snap.generation]
        for g in stale:
            log_path(self._dir, g).unlink()
        if stale:
            fsync_directory(self._dir)
        self._generation = snap.generation
        self._since_snapshot = len(scan.records)
        self.recovery = Recovery(
            len(snap.entries),
            len(scan.records),
            scan.dropped_bytes,
            scan.problem,
            len(stale),
            scan.dropped_records,
        )
        if scan.problem is not None:
            log.warning(
                "%s: dropped %d bytes of log tail: %s", self._log.path, scan.dropped_bytes, scan.problem
            )
        if capacity != snap.capacity:
            self._resize(capacity)
        elif scan.version != LOG_VERSION:
            self._snapshot_locked()  # never append to a log of an older format
        self._cache.reset_stats()

    def _replay(self, op: Op, body: bytes) -> None:
        assert self._log is not None
        try:
            arg: Any = pickle.loads(body) if body else None
        except Exception as exc:  # the checksum matched: these bytes were written like this
            raise LogCorrupt(self._log.path, f"a {op.name} record cannot be unpickled: {exc!r}") from exc
        if op is Op.PUT:
            key, value = arg
            self._cache.put(key, value)
        elif op is Op.TOUCH:
            self._cache.get(arg)
        elif op is Op.DELETE:
            self._cache.delete(arg)
        else:
            self._cache.clear()

    def _resize(self, capacity: int) -> None:
        """Adopt a new capacity (the oldest entries go first) and make it durable at once."""
        entries = self._cache.items()
        self._cache = LRUCache(capacity)
        for key, value in entries:
            self._cache.put(key, value)
        self._snapshot_locked()

    # ------------------------------------------------------------------ write path

    def _check_open(self) -> AppendLog:
        if self._closed or self._log is None:
            raise ValueError(f"PersistentLRU({os.fspath(self._dir)!r}) is closed")
        return self._log

    def _logged(self) -> None:
        """Count a record; compact when enough have accumulated."""
        self._since_snapshot += 1
        if self._since_snapshot >= self._snapshot_every:
            try:
                self._snapshot_locked()
            except Exception as exc:
                # The operation itself is durable (in the old log, or in the new snapshot),
                # so it succeeded. Try compacting again after another full period.
                self._since_snapshot = 0
                log.warning("%s: compaction failed, will retry: %r", self._dir, exc)

    def _snapshot_locked(self) -> None:
        current = self._check_open()
        new_generation = self._generation + 1
        temp = write_temp(self._dir, Snapshot(self._cache.capacity, new_generation, self._cache.items()))
        try:
            os.replace(temp, self._dir / SNAPSHOT_NAME)  # atomic: if it fails, nothing changed
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        try:
            fsync_directory(self._dir)
            new_log = AppendLog.create(self._dir, new_generation)
        except BaseException as exc:
            # The snapshot on disk names the new generation now; appending to the old log
            # would write records that a restart never replays.
            current.broken = f"compaction to generation {new_generation} failed half-way: {exc!r}"
            raise
        self._log, self._generation, self._since_snapshot = new_log, new_generation, 0
        current.close()
        # Failing here is harmless: open removes logs older than the snapshot.
        current.path.unlink(missing_ok=True)
        fsync_directory(self._dir)

    # ------------------------------------------------------------------ public API

    @property
    def capacity(self) -> int:
        return self._cache.capacity

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def generation(self) -> int:
        """Generation of the live log (grows by one per compaction)."""
        return self._generation

    def get(self, key: K, default: Any = None) -> V | Any:
        with self._lock:
            wal = self._check_open()
            if self._cache.peek(key, _MISSING) is _MISSING:
                return self._cache.get(key, default)  # a miss: counted, nothing to log
            wal.append(Op.TOUCH, _dumps(key), sync=self._sync_hits)
            value = self._cache.get(key)
            self._logged()
            return value

    def put(self, key: K, value: V) -> None:
        body = _dumps((key, value))  # pickling needs no lock
        with self._lock:
            self._check_open().append(Op.PUT, body, sync=self._sync_writes)
            self._cache.put(key, value)
            self._logged()

    def delete(self, key: K) -> bool:
        with self._lock:
            wal = self._check_open()
            if self._cache.peek(key, _MISSING) is _MISSING:
                return False
            wal.append(Op.DELETE, _dumps(key), sync=self._sync_writes)
            self._cache.delete(key)
            self._logged()
            return True

    def clear(self) -> None:
        with self._lock:
            self._check_open().append(Op.CLEAR, b"", sync=self._sync_writes)
            self._cache.clear()
            self._logged()

    def peek(self, key: K, default: Any = None) -> V | Any:
        with self._lock:
            self._check_open()
            return self._cache.peek(key, default)

    def __contains__(self, key: object) -> bool:
        return self.peek(key, _MISSING) is not _MISSING  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._cache)

    def items(self) -> list[tuple[K, V]]:
        """Entries, least to most recently used."""
        with self._lock:
            self._check_open()
            return self._cache.items()

    def stats(self) -> CacheStats:
        """Counters since this open (replay does not count)."""
        return self._cache.stats()

    def reset_stats(self) -> None:
        self._cache.reset_stats()

    def snapshot(self) -> None:
        """Compact now: write a snapshot of the current state and start a new, empty log."""
        with self._lock:
            self._snapshot_locked()

    def close(self) -> None:
        """Release the directory. Every record is already in the kernel; with sync "writes"
        the hits logged since the last write are made durable too."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._log is not None and self._sync_writes:
                    self._log.sync()
            finally:
                if self._log is not None:
                    self._log.close()
                os.close(self._lock_fd)

    def __enter__(self) -> PersistentLRU[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PersistentLRU({os.fspath(self._dir)!r}, capacity={self.capacity}, size={len(self)})"


def set_aside(directory: str | os.PathLike[str]) -> list[Path]:
    """Rename a damaged directory's snapshot and logs to ``<name>.corrupt`` (replacing older
    ones), so that the next open starts empty and the damaged files stay for inspection.

    For caches whose contents can be recomputed. Takes the directory's lock, so it raises
    DirectoryLocked while a PersistentLRU has the directory open. Returns the new paths.
    """
    directory = Path(directory)
    fd = _lock_directory(directory)
    try:
        moved = []
        # Logs before the snapshot: a crash half-way leaves a snapshot without its log, which
        # opens as an older state, never a log without its snapshot, which is refused.
        for name in sorted(os.listdir(directory), key=lambda n: n == SNAPSHOT_NAME):
            if name == SNAPSHOT_NAME or parse_generation(name) is not None:
                target = directory / f"{name}.corrupt"
                os.replace(directory / name, target)
                moved.append(target)
        fsync_directory(directory)
        return moved
    finally:
        os.close(fd)


__all__ = ["PersistenceError", "PersistentLRU", "Recovery", "set_aside"]
