"""The append-only operation log of a PersistentLRU.

File ``log.<generation>`` (12 digits), all integers big-endian::

    header   magic "PGLRULOG" | version u16 | reserved u16 | generation u64 | crc32 u32
    record*  length u32 | crc32 u32 | payload (length bytes)
    payload  op u8 | pickle body

The record checksum covers the length field and the payload, so a damaged length is caught
as surely as damaged content. Records are only ever appended; a record is written with one
``write`` of the complete frame, after the header is durable. On open, records are read up to
the first frame that is incomplete or fails its checksum; that frame and everything after it
are cut off (they cannot be trusted: a torn write leaves garbage, and any record after a hole
would replay out of order).
"""

from __future__ import annotations

import enum
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from libs.lru.errors import CacheBroken, LogCorrupt

MAGIC = b"PGLRULOG"
VERSION = 1
_HEADER = struct.Struct(">8sHHQ")
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEADER.size + _CRC.size
_FRAME = struct.Struct(">II")
_LENGTH = struct.Struct(">I")
MAX_PAYLOAD = 1 << 30  # anything longer is a damaged length field, not a record


class Op(enum.IntEnum):
    PUT = 1  # body: pickle((key, value))
    TOUCH = 2  # body: pickle(key); a get() hit, logged so recency order replays exactly
    DELETE = 3  # body: pickle(key)
    CLEAR = 4  # body: empty


def log_path(directory: Path, generation: int) -> Path:
    return directory / f"log.{generation:012d}"


def parse_generation(name: str) -> int | None:
    """The generation in a ``log.<digits>`` file name, else None."""
    prefix, _, digits = name.partition(".")
    return int(digits) if prefix == "log" and digits.isdigit() else None


def encode_header(generation: int) -> bytes:
    fields = _HEADER.pack(MAGIC, VERSION, 0, generation)
    return fields + _CRC.pack(zlib.crc32(fields))


def encode_record(op: Op, body: bytes) -> bytes:
    payload = bytes((op,)) + body
    length = _LENGTH.pack(len(payload))
    return length + _CRC.pack(zlib.crc32(payload, zlib.crc32(length))) + payload


@dataclass
class LogScan:
    """What a log file holds: its trusted records and where trust ends."""

    records: list[tuple[Op, bytes]] = field(default_factory=list)
    good_end: int = HEADER_SIZE  # file offset just past the last trusted record
    problem: str | None = None  # why reading stopped before the end of the file
    dropped_bytes: int = 0  # bytes cut off the end because they could not be trusted


def check_header(path: Path, data: bytes, generation: int) -> None:
    magic, version, _reserved, gen = _HEADER.unpack_from(data)
    (crc,) = _CRC.unpack_from(data, _HEADER.size)
    if magic != MAGIC:
        raise LogCorrupt(path, f"bad magic {magic!r}")
    if crc != zlib.crc32(data[: _HEADER.size]):
        raise LogCorrupt(path, "header checksum mismatch")
    if version != VERSION:
        raise LogCorrupt(path, f"unsupported version {version}")
    if gen != generation:
        raise LogCorrupt(path, f"header says generation {gen}, file name says {generation}")


def scan_records(data: bytes) -> LogScan:
    """Read framed records after the header until the data ends or stops being trustworthy."""
    scan = LogScan()
    pos = HEADER_SIZE
    end = len(data)
    while pos < end:
        if end - pos < _FRAME.size:
            scan.problem = f"torn record frame at offset {pos} ({end - pos} of {_FRAME.size} bytes)"
            break
        length, crc = _FRAME.unpack_from(data, pos)
        if length == 0 or length > MAX_PAYLOAD:
            scan.problem = f"impossible record length {length} at offset {pos}"
            break
        start = pos + _FRAME.size
        if end - start < length:
            scan.problem = f"torn record at offset {pos} ({end - start} of {length} payload bytes)"
            break
        payload = data[start : start + length]
        if zlib.crc32(payload, zlib.crc32(data[pos : pos + _LENGTH.size])) != crc:
            scan.problem = f"record checksum mismatch at offset {pos}"
            break
        try:
            op = Op(payload[0])
        except ValueError:
            # The checksum matched, so these are the bytes that were written: a newer format.
            scan.problem = f"unknown record op {payload[0]} at offset {pos}"
            break
        scan.records.append((op, payload[1:]))
        pos = start + length
        scan.good_end = pos
    return scan


def fsync_directory(directory: Path) -> None:
    """Make renames, creations and deletions in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class AppendLog:
    """An open log file that records are appended to, one complete frame per write."""

    def __init__(self, path: Path, fd: int, size: int, *, fsync: bool) -> None:
        self.path = path
        self._fd = fd
        self.size = size  # bytes of trusted content; the file never keeps more
        self._sync = os.fdatasync if fsync else None
        self.broken: str | None = None

    @classmethod
    def create(cls, directory: Path, generation: int, *, fsync: bool) -> AppendLog:
        """A new, empty log whose header is durable before any record can follow it."""
        path = log_path(directory, generation)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            _write_all(fd, encode_header(generation))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        fsync_directory(directory)
        return cls(path, fd, HEADER_SIZE, fsync=fsync)

    @classmethod
    def recover(cls, directory: Path, generation: int, *, fsync: bool) -> tuple[AppendLog, LogScan]:
        """Open an existing log, cut off an untrustworthy tail, and return its records."""
        path = log_path(directory, generation)
        data = path.read_bytes()
        if len(data) < HEADER_SIZE:
            # The header is written and fsynced before any record, so a short header means
            # the crash came while creating the file: it holds nothing. Start it afresh.
            return cls.create(directory, generation, fsync=fsync), LogScan()
        check_header(path, data, generation)
        scan = scan_records(data)
        scan.dropped_bytes = len(data) - scan.good_end
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            if scan.good_end < len(data):
                os.ftruncate(fd, scan.good_end)
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, scan.good_end, fsync=fsync), scan

    def append(self, frame: bytes) -> None:
        """Write one record; on failure the file is cut back so no partial frame remains."""
        if self.broken is not None:
            raise CacheBroken(self.path, self.broken)
        try:
            _write_all(self._fd, frame)
            if self._sync is not None:
                self._sync(self._fd)
        except BaseException as exc:
            try:
                os.ftruncate(self._fd, self.size)
            except OSError as undo:
                self.broken = f"append failed ({exc!r}) and could not be undone ({undo!r})"
            raise
        self.size += len(frame)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
