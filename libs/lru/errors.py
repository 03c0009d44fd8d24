"""Errors raised by the persistent cache, grouped under one base class."""

from __future__ import annotations

import os


class PersistenceError(Exception):
    """A persistent cache directory cannot be used as it is; nothing in it was changed."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.describe()} {self.path}: {reason}")

    def describe(self) -> str:
        return "unusable LRU cache file"


class SnapshotCorrupt(PersistenceError):
    """The snapshot fails its checks (magic, version, checksums, lengths) or is missing
    while log files exist. Raised on open; the files are left untouched for inspection."""

    def describe(self) -> str:
        return "corrupt LRU snapshot"


class LogCorrupt(PersistenceError):
    """The log is damaged somewhere other than its tail: its header, a record whose checksum
    is right but whose content cannot be decoded, or a damaged record followed by a record
    written after it was durable (so no crash explains the damage, and cutting there would drop
    acknowledged records). The message names the file and the offset; nothing was changed.
    A torn tail is not an error: it is cut off on open."""

    def describe(self) -> str:
        return "corrupt LRU log"


class DirectoryLocked(PersistenceError):
    """Another PersistentLRU (in this or another process) holds the directory."""

    def describe(self) -> str:
        return "LRU cache directory in use"


class CacheBroken(PersistenceError):
    """An earlier write failed half-way and could not be rolled back; reopen the directory
    to recover from what is on disk."""

    def describe(self) -> str:
        return "LRU cache must be reopened"
