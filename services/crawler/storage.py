"""Storage faults the crawler waits out instead of failing: a full disk (ENOSPC, EDQUOT, SQLITE_FULL).

A write that fails this way has left nothing behind (SQLite rolls the transaction back; the WARC
and JSONL writers cut a partial record off), so the same write can simply be tried again later.
"""

from __future__ import annotations

import errno
import sqlite3

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_SQLITE_FULL = 13


def is_disk_full(exc: BaseException) -> bool:
    """True for a write refused because the disk (or quota) is full."""
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def full_path(exc: BaseException, default: object = None) -> str:
    """The path the failed write went to, when the error says it, else `default`."""
    name = getattr(exc, "filename", None)
    return str(name if name is not None else (default if default is not None else "?"))
