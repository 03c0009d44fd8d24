"""LRU caching: an O(1) thread-safe cache, a memoizing decorator, and a crash-safe persistent cache."""

from libs.lru.cache import CacheStats, LRUCache
from libs.lru.errors import CacheBroken, DirectoryLocked, LogCorrupt, PersistenceError, SnapshotCorrupt
from libs.lru.memoize import CacheInfo, memoize
from libs.lru.persistent import PersistentLRU, Recovery

__all__ = [
    "CacheBroken",
    "CacheInfo",
    "CacheStats",
    "DirectoryLocked",
    "LRUCache",
    "LogCorrupt",
    "PersistenceError",
    "PersistentLRU",
    "Recovery",
    "SnapshotCorrupt",
    "memoize",
]
