"""Reading file content in bounded chunks, counting every byte, and noticing change.

Every read opens the file, checks with fstat that it is still the inode the walk saw (same
size, same mtime_ns), reads, and checks again afterwards; a file that changed or vanished
raises `FileChanged`, which the stages report for that path instead of trusting stale bytes.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

import blake3

from services.dedup.files.walk import MTIME_BIAS, FileEntry

CHUNK_SIZE = 256 << 10  # small enough to stay in L2 between the copy and the hash


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...
    def digest(self) -> bytes: ...


def _blake3() -> Hasher:
    return blake3.blake3()


def _xxh3_128() -> Hasher:
    import xxhash  # imported by the scans that ask for it

    return xxhash.xxh3_128()


HASHERS: dict[str, Callable[[], Hasher]] = {
    "blake3": _blake3,
    "xxh3-128": _xxh3_128,
    "sha256": hashlib.sha256,
}
# Only these may be trusted to stand for content across runs (see hashcache's verified flag):
# xxh3 is fast but collisions can be constructed on purpose.
CRYPTOGRAPHIC = frozenset({"blake3", "sha256"})


# O_NOFOLLOW is not used: the walk may have been asked to follow symlinks. O_NONBLOCK keeps a
# FIFO swapped in for the file from hanging the scan (the fstat check then rejects it).
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class FileChanged(OSError):
    """The file is no longer the one the walk saw (size, mtime or inode differ)."""


class ByteCounter:
    """Thread-safe total of bytes read, so stage statistics are exact under parallel I/O."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.total += n


def _check_same(entry: FileEntry, st: os.stat_result, when: str) -> None:
    # (device, inode) is also what keeps a confined scan confined: the file opened must be the
    # inode the walk admitted, even if a directory on its path became a symlink meanwhile.
    # The common case in one comparison of the packed (inode, mtime) int (see FileEntry).
    if (
        st.st_dev == entry.dev
        and st.st_size == entry.size
        and ((st.st_ino << 64) | (st.st_mtime_ns + MTIME_BIAS)) == entry._im
    ):
        return
    if st.st_ino != entry.ino or st.st_dev != entry.dev:
        raise FileChanged(f"changed during scan ({when}): no longer the file the walk saw (other inode)")
    if st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns:
        raise FileChanged(
            f"changed during scan ({when}): size {entry.size}->{st.st_size}, "
            f"mtime_ns {entry.mtime_ns}->{st.st_mtime_ns}"
        )


class OpenedFile:
    """A file opened for reading that is checked against the walk's view of it."""

    def __init__(self, entry: FileEntry, counter: ByteCounter, chunk_size: int = CHUNK_SIZE) -> None:
        self.entry = entry
        self.counter = counter
        self.chunk_size = chunk_size
        self.fd = os.open(entry.path, _OPEN_FLAGS)
        try:
            _check_same(entry, os.fstat(self.fd), "before read")
        except BaseException:
            os.close(self.fd)
            raise

    def read_into(self, offset: int, buf: bytearray) -> int:
        """Fill `buf` from `offset` (no allocation: buffers are reused); returns bytes read."""
        n = os.preadv(self.fd, [buf], offset)
        self.counter.add(n)
        return n

    def chunks(self, chunk_size: int | None = None) -> Iterator[bytes]:
        size = chunk_size or self.chunk_size
        offset = 0
        while True:
            data = os.pread(self.fd, size, offset)
            if not data:
                return
            self.counter.add(len(data))
            offset += len(data)
            yield data

    def close(self, *, check: bool = True) -> None:
        try:
            if check:
                _check_same(self.entry, os.fstat(self.fd), "after read")
        finally:
            os.close(self.fd)

    def __enter__(self) -> OpenedFile:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close(check=exc_type is None)


def partial_digest(entry: FileEntry, counter: ByteCounter, where: str, length: int, algorithm: str) -> bytes:
    """Digest of the first (`where`='head') or last ('tail') `length` bytes.

    The configured algorithm is used here too (on 4 KiB even BLAKE3 costs microseconds), so
    that for files no longer than head + tail the partial digests identify the content.
    """
    # The hot path of a scan (once or twice per candidate file), so written out flat: one
    # open, one fstat, one pread, one close. No second fstat: a partial digest only nominates
    # candidates, and the verify stage checks every file before and after reading it.
    fd = os.open(entry.path, _OPEN_FLAGS)
    try:
        _check_same(entry, os.fstat(fd), "before read")
        offset = 0 if where == "head" else max(0, entry.size - length)
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    counter.add(len(data))
    if len(data) != min(length, entry.size):
        raise FileChanged(f"changed during scan: short read at {offset}")
    hasher = HASHERS[algorithm]()
    hasher.update(data)
    return hasher.digest()


def head_and_tail_digests(
    entry: FileEntry, counter: ByteCounter, length: int, algorithm: str
) -> tuple[bytes, bytes]:
    """The head and the tail digest of a file longer than `length`, from one open: what
    `partial_digest` 'head' then 'tail' give, in 5 system calls instead of 8 (open, fstat,
    pread, pread, close; one pread when both fit in `2 * length` bytes, which are then read
    whole). The head stage takes both, and the tail stage uses the tail digest kept for the
    file (see stages.head_stage). The same check before the read as partial_digest; change
    after it is the verify stage's to catch, as for any partial digest."""
    size = entry.size
    fd = os.open(entry.path, _OPEN_FLAGS)
    try:
        _check_same(entry, os.fstat(fd), "before read")
        if size <= 2 * length:
            data = os.pread(fd, size, 0)
            n = len(data)
            head, tail = data[:length], data[max(0, size - length) :]
        else:
            head = os.pread(fd, length, 0)
            tail = os.pread(fd, length, size - length)
            n = len(head) + len(tail)
    finally:
        os.close(fd)
    counter.add(n)
    if len(head) != min(length, size) or len(tail) != min(length, size) or (size <= 2 * length and n != size):
        raise FileChanged(f"changed during scan: short read of {entry.size} bytes")
    new = HASHERS[algorithm]
    h, t = new(), new()
    h.update(head)
    t.update(tail)
    return h.digest(), t.digest()


def read_small(entry: FileEntry, counter: ByteCounter) -> bytes:
    """The whole content of a small file, in one read: the bytes themselves are compared.

    One open, one fstat (same inode, size and mtime as the walk saw), one pread of one byte
    more than the size (a file that grew or shrank gives a length other than its size), one
    close. The stages keep these bytes to compare them directly, so a small file is read once.
    """
    fd = os.open(entry.path, _OPEN_FLAGS)
    try:
        _check_same(entry, os.fstat(fd), "before read")
        data = os.pread(fd, entry.size + 1, 0)
    finally:
        os.close(fd)
    counter.add(len(data))
    if len(data) != entry.size:
        raise FileChanged(f"changed during scan: read {len(data)} bytes, expected {entry.size}")
    return data


def read_small_many(entries: list[FileEntry], counter: ByteCounter) -> list[bytes | OSError]:
    """`read_small` of each entry in one loop, on one thread: the bytes, or the OSError
    (FileChanged included) that reading it raised, in the order given.

    The same system calls and checks as `read_small` (open, fstat, one pread of size + 1
    bytes, close), written out flat because this loop is a warm scan of tiny files: no call,
    lock or tuple per file, the byte count added once (at 200k tiny files the per-file Python
    around the four system calls was most of the scan's user time)."""
    out: list[bytes | OSError] = []
    append = out.append
    total = 0
    op, fstat, pread, close, flags, bias = os.open, os.fstat, os.pread, os.close, _OPEN_FLAGS, MTIME_BIAS
    for e in entries:
        d = e._dir
        try:
            fd = op(d + e._name if d else e._name, flags)
            try:
                st = fstat(fd)
                if (
                    st.st_dev != e.dev
                    or st.st_size != e.size
                    or ((st.st_ino << 64) | (st.st_mtime_ns + bias)) != e._im
                ):
                    _check_same(e, st, "before read")
                data = pread(fd, e.size + 1, 0)
            finally:
                close(fd)
        except OSError as exc:
            append(exc)
            continue
        total += len(data)
        if len(data) != e.size:
            append(FileChanged(f"changed during scan: read {len(data)} bytes, expected {e.size}"))
        else:
            append(data)
    counter.add(total)
    return out


_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", None)


def in_page_cache(entry: FileEntry) -> bool | None:
    """Whether the first byte of the file is in the page cache (a read would not wait on the
    device): preadv with RWF_NOWAIT, which fails with EAGAIN instead of going to the disk.
    None where that cannot be told (no RWF_NOWAIT, or the file cannot be opened)."""
    if _RWF_NOWAIT is None or not entry.size:
        return None
    try:
        fd = os.open(entry.path, _OPEN_FLAGS)
    except OSError:
        return None
    buf = [bytearray(1)]
    try:
        try:
            os.preadv(fd, buf, 0, _RWF_NOWAIT)
        except BlockingIOError:
            # Asked once more: a cached page can refuse the first non-blocking read and serve
            # the next (right after a warm scan of the 20k tree, 4908 of 19968 files did so,
            # none on the second try), and each such false "cold" put a whole segment on
            # IO_WORKERS threads: GIL hand-offs, 0.8-1.2 futex calls per file of a warm scan.
            # A page really on the disk is still not there microseconds later.
            os.preadv(fd, buf, 0, _RWF_NOWAIT)
        return True
    except BlockingIOError:
        return False
    except OSError:  # EOPNOTSUPP on filesystems without non-blocking buffered reads
        return None
    finally:
        os.close(fd)


_local = threading.local()


def buffers(count: int, size: int = CHUNK_SIZE) -> list[bytearray]:
    """`count` reusable buffers of `size` bytes for this thread: reading into the same memory
    again is several times faster than allocating (and page-faulting) a new chunk per read."""
    pool: dict[int, list[bytearray]] = getattr(_local, "pool", None) or {}
    _local.pool = pool
    have = pool.setdefault(size, [])
    while len(have) < count:
        have.append(bytearray(size))
    return have[:count]


def full_digest(entry: FileEntry, counter: ByteCounter, algorithm: str) -> bytes:
    """Streaming digest of the whole file: memory is one chunk, whatever the file size."""
    hasher = HASHERS[algorithm]()
    total = 0
    (buf,) = buffers(1)
    view = memoryview(buf)
    with OpenedFile(entry, counter) as f:
        while True:
            n = f.read_into(total, buf)
            if not n:
                break
            hasher.update(view[:n])
            total += n
    if total != entry.size:
        raise FileChanged(f"changed during scan: read {total} bytes, expected {entry.size}")
    return hasher.digest()
