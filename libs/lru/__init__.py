"""LRU caching: an O(1) thread-safe cache, a memoizing decorator, and a crash-safe persistent cache."""

from libs.lru.cache import CacheStats, LRUCache
from libs.lru.memoize import CacheInfo, memoize

__all__ = ["CacheInfo", "CacheStats", "LRUCache", "memoize"]
