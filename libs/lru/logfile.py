"""The append-only operation log of a PersistentLRU.

File ``log.<generation>`` (12 digits), all integers big-endian::

    header   magic "PGLRULOG" | version u16 | reserved u16 | generation u64 | crc32 u32
    record*  length u32 | crc32 u32 | payload (length bytes)
    payload  flags+op u8 | pickle body

The record checksum covers the length field and the payload, so a damaged length is caught
as surely as damaged content. The op is the low 7 bits of the payload's first byte; the top
bit, ``AFTER_SYNC`` (version 2), says that when this record was written every byte before it
in the file was already durable (an fsync of the header, or an fdatasync after the previous
record, had returned). Version 1 logs have no such bit; they are still read, and compacted
into a version 2 log on open.

Records are only ever appended, each with one ``write`` of the complete frame, after the header
is durable. On open, records are read up to the first frame that is incomplete or fails its
checksum. What that damage means depends on what follows it:

* nothing valid: a write cut short by a crash (a torn tail). It is cut off.
* valid records, one of them ``AFTER_SYNC``: the damaged bytes had been made durable before
  that record was written, so no crash can explain them (a bad disk, a stray write, a flipped
  bit). Cutting there would drop records the cache had acknowledged: ``LogCorrupt`` is raised
  and the file is left untouched.
* valid records, none ``AFTER_SYNC``: everything from the damage on was written after the last
  point known durable, which is what a power loss leaves when the disk persisted pages out of
  order. Nothing from the damage on was promised durable by the sync setting that wrote it
  (hits under the default ``sync="writes"``, anything under ``sync="never"``), so the log is cut
  at the damage and the number of records dropped is reported.

Valid records after damage are found by trying every offset after it (a frame is valid when
its length fits, its checksum matches and its op is known): a false find needs a 32-bit
checksum to match by chance, and errs towards refusing, never towards dropping.
"""

from __future__ import annotations

import enum
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from libs.lru.errors import CacheBroken, LogCorrupt

MAGIC = b"PGLRULOG"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_HEADER = struct.Struct(">8sHHQ")
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEADER.size + _CRC.size
_FRAME = struct.Struct(">II")
_LENGTH = struct.Struct(">I")
MAX_PAYLOAD = 1 << 30  # anything longer is a damaged length field, not a record
AFTER_SYNC = 0x80


class Op(enum.IntEnum):
    PUT = 1  # body: pickle((key, value))
    TOUCH = 2  # body: pickle(key); a get() hit, logged so recency order replays exactly
    DELETE = 3  # body: pickle(key)
    CLEAR = 4  # body: empty


_OPS = frozenset(int(op) for op in Op)
# Candidate first payload bytes, to find valid frames after damage without a Python-level step
# per byte: an op, with or without AFTER_SYNC.
_OP_BYTE = re.compile(b"[" + re.escape(bytes(sorted(_OPS | {op | AFTER_SYNC for op in _OPS}))) + b"]")


def log_path(directory: Path, generation: int) -> Path:
    return directory / f"log.{generation:012d}"


def parse_generation(name: str) -> int | None:
    """The generation in a ``log.<digits>`` file name, else None."""
    prefix, _, digits = name.partition(".")
    return int(digits) if prefix == "log" and digits.isdigit() else None


def encode_header(generation: int) -> bytes:
    fields = _HEADER.pack(MAGIC, VERSION, 0, generation)
    return fields + _CRC.pack(zlib.crc32(fields))


def encode_record(op: Op, body: bytes, *, after_sync: bool = False) -> bytes:
    payload = bytes((op | AFTER_SYNC if after_sync else op,)) + body
    length = _LENGTH.pack(len(payload))
    return length + _CRC.pack(zlib.crc32(payload, zlib.crc32(length))) + payload


@dataclass
class LogScan:
    """What a log file holds: its trusted records and where trust ends."""

    records: list[tuple[Op, bytes]] = field(default_factory=list)
    good_end: int = HEADER_SIZE  # file offset just past the last trusted record
    problem: str | None = None  # why reading stopped before the end of the file
    dropped_bytes: int = 0  # bytes cut off the end because they could not be trusted
    dropped_records: int = 0  # valid records after the damage, cut off with it (never durable)
    version: int = VERSION


def check_header(path: Path, data: bytes, generation: int) -> int:
    """Verify a log header; returns the format version."""
    magic, version, _reserved, gen = _HEADER.unpack_from(data)
    (crc,) = _CRC.unpack_from(data, _HEADER.size)
    if magic != MAGIC:
        raise LogCorrupt(path, f"bad magic {magic!r}")
    if crc != zlib.crc32(data[: _HEADER.size]):
        raise LogCorrupt(path, "header checksum mismatch")
    if version not in READABLE_VERSIONS:
        raise LogCorrupt(path, f"unsupported version {version} (this code reads {READABLE_VERSIONS})")
    if gen != generation:
        raise LogCorrupt(path, f"header says generation {gen}, file name says {generation}")
    return int(version)


def _frame_at(view: memoryview, pos: int) -> tuple[int, int] | str:
    """The (first payload byte, end offset) of the intact frame at ``pos``, or why there is none."""
    end = len(view)
    if end - pos < _FRAME.size:
        return f"torn record frame at offset {pos} ({end - pos} of {_FRAME.size} bytes)"
    length, crc = _FRAME.unpack_from(view, pos)
    if length == 0 or length > MAX_PAYLOAD:
        return f"impossible record length {length} at offset {pos}"
    start = pos + _FRAME.size
    if end - start < length:
        return f"torn record at offset {pos} ({end - start} of {length} payload bytes)"
    if zlib.crc32(view[start : start + length], zlib.crc32(view[pos : start - _CRC.size])) != crc:
        return f"record checksum mismatch at offset {pos}"
    return view[start], start + length


def _valid_records_after(view: memoryview, damaged: int) -> list[tuple[int, int]]:
    """(offset, first payload byte) of every intact frame that starts after offset ``damaged``."""
    found: list[tuple[int, int]] = []
    pos = damaged + 1
    end = len(view)
    while pos <= end - _FRAME.size - 1:
        for match in _OP_BYTE.finditer(view, pos + _FRAME.size):
            frame = _frame_at(view, match.start() - _FRAME.size)
            if not isinstance(frame, str):
                pos = match.start() - _FRAME.size
                break
        else:
            return found
        # Chain from the frame found, as a normal read would, until the next damage.
        while not isinstance(frame := _frame_at(view, pos), str):
            found.append((pos, frame[0]))
            pos = frame[1]
        pos += 1
    return found


def scan_records(data: bytes, path: Path, version: int = VERSION) -> LogScan:
    """Read framed records after the header until the data ends or stops being trustworthy;
    classify any damage as a torn tail (cut) or corruption (``LogCorrupt``), see the module doc."""
    scan = LogScan(version=version)
    view = memoryview(data)
    pos = HEADER_SIZE
    end = len(data)
    while pos < end:
        frame = _frame_at(view, pos)
        if isinstance(frame, str):
            scan.problem = frame
            break
        first, next_pos = frame
        if first & ~AFTER_SYNC not in _OPS or (version == 1 and first & AFTER_SYNC):
            # The checksum matched, so these are the bytes that were written: not a torn write.
            raise LogCorrupt(path, f"record at offset {pos} has unknown op byte {first:#04x}")
        scan.records.append((Op(first & ~AFTER_SYNC), bytes(view[pos + _FRAME.size + 1 : next_pos])))
        pos = scan.good_end = next_pos
    if scan.problem is None:
        return scan
    later = _valid_records_after(view, pos)
    proof = next((offset for offset, first in later if version > 1 and first & AFTER_SYNC), None)
    if proof is not None:
        raise LogCorrupt(
            path,
            f"{scan.problem}, but {len(later)} valid record(s) follow it, and the one at offset "
            f"{proof} was written after the damaged bytes were durable: this is damage to "
            f"acknowledged records, not a torn tail. Nothing was changed; restore the directory "
            f"from a copy, or move it aside to start empty",
        )
    if later:
        scan.dropped_records = len(later)
        scan.problem += (
            f"; {len(later)} valid record(s) after it are dropped too (none was written after "
            f"the damaged bytes were durable, as after a power loss with unsynced records)"
        )
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
    """An open log file that records are appended to, one complete frame per write.

    ``durable`` is True when every byte of the file is known to be on disk (the last thing
    written was followed by a completed fsync); the next record then carries AFTER_SYNC.
    """

    def __init__(self, path: Path, fd: int, size: int, *, version: int = VERSION) -> None:
        self.path = path
        self._fd = fd
        self.size = size  # bytes of trusted content; the file never keeps more
        self.version = version
        self.durable = True  # create() and recover() fsync before handing the file out
        self.broken: str | None = None

    @classmethod
    def create(cls, directory: Path, generation: int) -> AppendLog:
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
        return cls(path, fd, HEADER_SIZE)

    @classmethod
    def recover(cls, directory: Path, generation: int) -> tuple[AppendLog, LogScan]:
        """Open an existing log, cut off an untrustworthy tail, and return its records.
        Raises LogCorrupt, changing nothing, when the damage is not a tail."""
        path = log_path(directory, generation)
        data = path.read_bytes()
        if len(data) < HEADER_SIZE:
            # The header is written and fsynced before any record, so a short header means
            # the crash came while creating the file: it holds nothing. Start it afresh.
            return cls.create(directory, generation), LogScan()
        version = check_header(path, data, generation)
        scan = scan_records(data, path, version)
        scan.dropped_bytes = len(data) - scan.good_end
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            if scan.good_end < len(data):
                os.ftruncate(fd, scan.good_end)
            # What the last process wrote may still sit in the page cache only; once this
            # returns, the first record appended can say that everything before it is durable.
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, scan.good_end, version=version), scan

    def append(self, op: Op, body: bytes, *, sync: bool) -> None:
        """Write one record, fdatasync()ed before returning when ``sync``; on failure the file
        is cut back so no partial frame remains."""
        if self.broken is not None:
            raise CacheBroken(self.path, self.broken)
        frame = encode_record(op, body, after_sync=self.durable and self.version > 1)
        try:
            self.durable = False
            _write_all(self._fd, frame)
            if sync:
                os.fdatasync(self._fd)
                self.durable = True
        except BaseException as exc:
            try:
                os.ftruncate(self._fd, self.size)
            except OSError as undo:
                self.broken = f"append failed ({exc!r}) and could not be undone ({undo!r})"
            raise
        self.size += len(frame)

    def sync(self) -> None:
        """Make every record appended so far durable."""
        if not self.durable and self._fd >= 0:
            os.fdatasync(self._fd)
            self.durable = True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
