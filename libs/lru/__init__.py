"""LRU caching: an O(1) thread-safe cache, a memoizing decorator, and a crash-safe persistent cache."""

from libs.lru.cache import CacheStats, LRUCache

__all__ = ["CacheStats", "LRUCache"]
