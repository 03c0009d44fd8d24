"""``memoize``: an LRU-caching decorator with canonical argument keys.

Unlike ``functools.lru_cache`` it keys calls by what the parameters are bound to, not by how
the call was spelled (see ``libs.lru.callkey``), accepts unhashable container arguments,
supports a TTL, and can persist results across restarts through ``PersistentLRU``.

Like ``functools.lru_cache``, the function runs outside any lock: two threads missing on the
same key at once may both compute it (the later result wins). Exceptions are not cached.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar

from libs.lru.cache import CacheStats, LRUCache
from libs.lru.callkey import CallKey
from libs.lru.fingerprint import code_fingerprint

P = ParamSpec("P")
R = TypeVar("R")

_MISSING: Any = object()
CODE_MARK = "memoize.code"  # in a persist directory: the identity of the code that wrote it
log = logging.getLogger(__name__)


class CacheInfo(NamedTuple):
    """Same fields, same meaning as ``functools.lru_cache``'s ``cache_info()``."""

    hits: int
    misses: int
    maxsize: int | None
    currsize: int


class _Store(Protocol):
    def get(self, key: Any, default: Any = None) -> Any: ...
    def put(self, key: Any, value: Any) -> None: ...
    def clear(self) -> None: ...
    def stats(self) -> CacheStats: ...
    def reset_stats(self) -> None: ...
    def __len__(self) -> int: ...


class _NoStore:
    """``maxsize=0``: nothing is kept, every call is a miss (as in functools)."""

    def __init__(self) -> None:
        self.misses = 0

    def get(self, key: Any, default: Any = None) -> Any:
        self.misses += 1
        return default

    def put(self, key: Any, value: Any) -> None:
        pass

    def clear(self) -> None:
        pass

    def stats(self) -> CacheStats:
        return CacheStats(0, self.misses, 0, 0, 0, 0)

    def reset_stats(self) -> None:
        self.misses = 0

    def __len__(self) -> int:
        return 0


def _open_store(maxsize: int | None, ttl: float | None) -> _Store:
    if maxsize == 0:
        return _NoStore()
    return LRUCache(sys.maxsize if maxsize is None else maxsize, ttl=ttl)


def _open_persistent(directory: str | os.PathLike[str], maxsize: int | None, identity: str) -> _Store:
    """A PersistentLRU in ``directory`` that holds only results of the code named by ``identity``."""
    from libs.lru.errors import LogCorrupt, SnapshotCorrupt
    from libs.lru.persistent import PersistentLRU, set_aside

    capacity = sys.maxsize if maxsize is None else maxsize
    # Results can be recomputed, so a power loss may cost the records since the last
    # compaction; a process crash loses nothing, because each record reaches the kernel before
    # the call returns. Not syncing keeps a miss's put at microseconds, not a disk flush.
    try:
        store: PersistentLRU[Any, Any] = PersistentLRU(directory, capacity, sync="never")
    except (SnapshotCorrupt, LogCorrupt) as exc:
        # Refusing to start would turn a damaged cache of recomputable results into an outage.
        log.warning("%s; memoize sets the damaged files aside (*.corrupt) and starts empty", exc)
        set_aside(directory)
        store = PersistentLRU(directory, capacity, sync="never")
    try:
        _claim(store, identity)
    except BaseException:
        store.close()
        raise
    return store


def _claim(store: Any, identity: str) -> None:
    """Make ``identity`` (module.qualname#code fingerprint) the directory's only writer.

    The keys already carry the fingerprint, so a result of other code can never be returned;
    this also drops those results, which could otherwise only ever be evicted, and says so.
    """
    from libs.lru.logfile import fsync_directory

    mark = Path(store.directory) / CODE_MARK
    try:
        written_by: str | None = mark.read_bytes().decode("utf-8", "replace").strip()
    except FileNotFoundError:
        written_by = None
    if written_by == identity:
        return
    if len(store):
        log.warning(
            "%s: cache written by other code (%s), not by %s: discarding its %d entries",
            store.directory,
            written_by or "no code mark",
            identity,
            len(store),
        )
        store.clear()
        store.snapshot()  # the emptying is durable before the new mark claims the directory
    temp = mark.with_name(CODE_MARK + ".tmp")
    with open(temp, "wb") as f:
        f.write(identity.encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, mark)
    fsync_directory(mark.parent)


def memoize(
    maxsize: int | None = 128,
    *,
    ttl: float | None = None,
    persist: str | os.PathLike[str] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Cache a function's results by its canonicalised arguments, least recently used first out.

    ``maxsize``: entries kept (0: none, None: unbounded). ``ttl``: seconds a result stays
    valid. ``persist``: a directory where results survive restarts (one process at a time;
    keys and results must be picklable; cannot be combined with ``ttl``, because monotonic
    deadlines mean nothing in another process). Persisted keys are salted with a fingerprint
    of the function's code (``libs.lru.fingerprint``): after the body changes, old results are
    never returned; the directory is emptied, with a warning, when code other than the one
    that wrote it opens it. The fingerprint does not cover functions the body calls, globals
    or closure values: call ``cache_clear()`` when a result depends on those and they change.
    Records are not fsynced (results can be recomputed): a killed process loses nothing, a
    power loss may cost the results since the last compaction. A damaged directory
    (``SnapshotCorrupt``, ``LogCorrupt``) is set aside as ``*.corrupt`` with a warning and the
    cache starts empty, rather than failing the import that applies the decorator.

    The wrapper has ``cache_info()``, ``cache_clear()``, ``cache_parameters()`` and
    ``__wrapped__`` as ``functools.lru_cache`` does.
    """
    if callable(maxsize):
        raise TypeError("memoize takes options: write @memoize() or @memoize(maxsize=...)")
    if maxsize is not None and (isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0):
        raise ValueError(f"maxsize: expected an integer >= 0 or None, got {maxsize!r}")
    if ttl is not None and persist is not None:
        raise ValueError(
            "ttl and persist cannot be combined: a monotonic deadline does not survive a restart"
        )

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        if persist is not None and maxsize != 0:
            call_key = CallKey(func, salt=code_fingerprint(func))
            store = _open_persistent(persist, maxsize, call_key.identity)
        else:
            call_key = CallKey(func)
            store = _open_store(maxsize, ttl)
        key_of = call_key.build  # a bound method calls faster than __call__
        get, put = store.get, store.put

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            key = key_of(args, kwargs)
            result = get(key, _MISSING)
            if result is _MISSING:
                result = func(*args, **kwargs)
                put(key, result)
            return result

        def cache_info() -> CacheInfo:
            s = store.stats()
            return CacheInfo(s.hits, s.misses, maxsize, len(store))

        def cache_clear() -> None:
            store.clear()
            store.reset_stats()

        wrapper.cache_info = cache_info  # type: ignore[attr-defined]
        wrapper.cache_clear = cache_clear  # type: ignore[attr-defined]
        wrapper.cache_parameters = lambda: {"maxsize": maxsize, "ttl": ttl, "persist": persist}  # type: ignore[attr-defined]
        return wrapper

    return decorate
