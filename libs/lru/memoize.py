"""``memoize``: an LRU-caching decorator with canonical argument keys.

Unlike ``functools.lru_cache`` it keys calls by what the parameters are bound to, not by how
the call was spelled (see ``libs.lru.callkey``), accepts unhashable container arguments,
supports a TTL, and can persist results across restarts through ``PersistentLRU``.

Like ``functools.lru_cache``, the function runs outside any lock: two threads missing on the
same key at once may both compute it (the later result wins). Exceptions are not cached.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar

from libs.lru.cache import CacheStats, LRUCache
from libs.lru.callkey import CallKey

P = ParamSpec("P")
R = TypeVar("R")

_MISSING: Any = object()


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


def _open_store(maxsize: int | None, ttl: float | None, persist: str | os.PathLike[str] | None) -> _Store:
    if maxsize == 0:
        return _NoStore()
    capacity = sys.maxsize if maxsize is None else maxsize
    if persist is not None:
        from libs.lru.persistent import PersistentLRU

        # Results can be recomputed, so a power loss may cost the last few records; a
        # process crash loses nothing either way, because each record reaches the kernel
        # before the call returns. Skipping fsync keeps a hit at microseconds.
        return PersistentLRU(persist, capacity, fsync=False)
    return LRUCache(capacity, ttl=ttl)


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
    deadlines mean nothing in another process).

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
        key_of = CallKey(func).build  # a bound method calls faster than __call__
        store = _open_store(maxsize, ttl, persist)
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
