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
import xxhash

from services.dedup.walk import FileEntry

CHUNK_SIZE = 1 << 20  # 1 MiB: large enough for sequential throughput, small enough to bound memory


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...
    def digest(self) -> bytes: ...


def _blake3() -> Hasher:
    return blake3.blake3()


HASHERS: dict[str, Callable[[], Hasher]] = {
    "blake3": _blake3,
    "xxh3-128": xxhash.xxh3_128,
    "sha256": hashlib.sha256,
}
# Only these may be trusted to stand for content across runs (see hashcache's verified flag):
# xxh3 is fast but collisions can be constructed on purpose.
CRYPTOGRAPHIC = frozenset({"blake3", "sha256"})


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
    if st.st_ino != entry.ino or st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns:
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
        # O_NOFOLLOW is not used: the walk may have been asked to follow symlinks. O_NONBLOCK
        # keeps a FIFO swapped in for the file from hanging the scan.
        self.fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            _check_same(entry, os.fstat(self.fd), "before read")
        except BaseException:
            os.close(self.fd)
            raise

    def read_at(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        self.counter.add(len(data))
        return data

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
    with OpenedFile(entry, counter) as f:
        offset = 0 if where == "head" else max(0, entry.size - length)
        data = f.read_at(offset, length)
        if len(data) != min(length, entry.size):
            raise FileChanged(f"changed during scan: short read at {offset}")
        hasher = HASHERS[algorithm]()
        hasher.update(data)
        return hasher.digest()


def full_digest(entry: FileEntry, counter: ByteCounter, algorithm: str) -> bytes:
    """Streaming digest of the whole file: memory is one chunk, whatever the file size."""
    hasher = HASHERS[algorithm]()
    total = 0
    with OpenedFile(entry, counter) as f:
        for chunk in f.chunks():
            hasher.update(chunk)
            total += len(chunk)
    if total != entry.size:
        raise FileChanged(f"changed during scan: read {total} bytes, expected {entry.size}")
    return hasher.digest()
