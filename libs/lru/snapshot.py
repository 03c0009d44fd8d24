"""The snapshot file of a PersistentLRU: every entry in recency order, written atomically.

File ``snapshot``, all integers big-endian::

    magic "PGLRUSNP" | version u16 | reserved u16 | capacity u64 | count u64 |
    generation u64 | payload length u64 | payload crc32 u32 | header crc32 u32 | payload

The payload is ``pickle(list of (key, value))``, least to most recently used. ``generation``
names the one log file whose records apply on top of this snapshot; logs of older
generations are already folded into it and must never be replayed again.

Writing goes to ``snapshot.tmp``, which is flushed and fsynced, then ``os.replace``d over
``snapshot``, and then the directory is fsynced: a reader sees either the old or the new
snapshot, complete, never a mixture.
"""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libs.lru.errors import SnapshotCorrupt
from libs.lru.logfile import fsync_directory

MAGIC = b"PGLRUSNP"
VERSION = 1
_FIELDS = struct.Struct(">8sHHQQQQI")
_CRC = struct.Struct(">I")
HEADER_SIZE = _FIELDS.size + _CRC.size
SNAPSHOT_NAME = "snapshot"
TEMP_NAME = "snapshot.tmp"


@dataclass
class Snapshot:
    capacity: int
    generation: int
    entries: list[tuple[Any, Any]]  # least to most recently used


def write_temp(directory: Path, snap: Snapshot) -> Path:
    """Write ``snap`` to ``snapshot.tmp`` and make its bytes durable; returns its path."""
    payload = pickle.dumps(snap.entries, protocol=pickle.HIGHEST_PROTOCOL)
    fields = _FIELDS.pack(
        MAGIC,
        VERSION,
        0,
        snap.capacity,
        len(snap.entries),
        snap.generation,
        len(payload),
        zlib.crc32(payload),
    )
    temp = directory / TEMP_NAME
    with open(temp, "wb") as f:
        f.write(fields)
        f.write(_CRC.pack(zlib.crc32(fields)))
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    return temp


def install(directory: Path, temp: Path) -> None:
    """Atomically make ``temp`` the snapshot, durably. From the rename on, the new snapshot
    (and the generation it names) is what a restart sees."""
    os.replace(temp, directory / SNAPSHOT_NAME)
    fsync_directory(directory)


def write_snapshot(directory: Path, snap: Snapshot) -> None:
    install(directory, write_temp(directory, snap))


def read_snapshot(path: Path) -> Snapshot:
    """Load and verify a snapshot; any failed check raises SnapshotCorrupt naming the path."""
    data = path.read_bytes()
    if len(data) < HEADER_SIZE:
        raise SnapshotCorrupt(path, f"truncated header ({len(data)} of {HEADER_SIZE} bytes)")
    magic, version, _reserved, capacity, count, generation, length, payload_crc = _FIELDS.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotCorrupt(path, f"bad magic {magic[:8]!r}, not an LRU snapshot")
    (header_crc,) = _CRC.unpack_from(data, _FIELDS.size)
    if header_crc != zlib.crc32(data[: _FIELDS.size]):
        raise SnapshotCorrupt(path, "header checksum mismatch")
    if version != VERSION:
        raise SnapshotCorrupt(path, f"unsupported version {version} (this code reads {VERSION})")
    payload = data[HEADER_SIZE:]
    if len(payload) != length:
        raise SnapshotCorrupt(path, f"payload is {len(payload)} bytes, header says {length}")
    if zlib.crc32(payload) != payload_crc:
        raise SnapshotCorrupt(path, "payload checksum mismatch")
    try:
        entries = pickle.loads(payload)
    except Exception as exc:  # checksum matched, so this is a code/format problem; say which
        raise SnapshotCorrupt(path, f"payload cannot be unpickled: {exc!r}") from exc
    if not isinstance(entries, list):
        raise SnapshotCorrupt(path, f"payload is a {type(entries).__name__}, expected a list")
    if len(entries) != count:
        raise SnapshotCorrupt(path, f"payload holds {len(entries)} entries, header says {count}")
    if count > capacity or capacity < 1:
        raise SnapshotCorrupt(path, f"{count} entries for capacity {capacity}")
    return Snapshot(capacity, generation, entries)
