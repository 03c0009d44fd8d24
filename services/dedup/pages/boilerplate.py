"""Near-duplicates of pages as a reader means them: the article, not the site's frame.

Pages of one site share a header, a footer, navigation: on real sites 20-40% of the words. Two
different articles of the site then look alike through that frame alone. So:

- Features: the page's word bigrams, hashed (32-bit), kept as a sorted array (fingerprints,
  never text). Bigrams survive edits better than longer shingles (a variant with 20% of its
  words edited keeps ~0.3 bigram Jaccard with another such variant; different articles ~0.03).
- Site boilerplate is learned per host: a bigram found on at least `min_pages` pages and on at
  least `share` (0.9) of the host's pages (counted over its first `learn_pages` pages) is the
  site's frame, and is removed before any similarity is computed. A frame that would be more
  than `max_frame` of the host's text is not trusted (a host of copies of one article), and a
  page left with too little after the removal keeps its whole set.
- Similarity is the exact Jaccard of the two content sets; candidates come from an inverted
  index of a 1/`sample` hash sample of the content bigrams.

What the host model knows grows while its first pages arrive, so `HostModel.version` changes;
the page index re-checks its pairs against the current model when it does (see neardup.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
import xxhash

EMPTY = np.empty(0, dtype=np.uint32)


def host_of(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def features(tokens: list[str], n: int = 2) -> np.ndarray:
    """Sorted unique 32-bit hashes of the word n-grams (one gram for a text shorter than n)."""
    if not tokens:
        return EMPTY
    grams = [" ".join(tokens[i : i + n]) for i in range(max(1, len(tokens) - n + 1))]
    h = xxhash.xxh32_intdigest
    return np.unique(np.fromiter((h(g.encode("utf-8")) for g in grams), dtype=np.uint32, count=len(grams)))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if not a.size or not b.size:
        return 0.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


@dataclass
class HostModel:
    """Document frequencies of one host's bigrams over its first pages, and the frame so far."""

    pages: int = 0
    df: dict[int, int] | None = field(default_factory=dict)  # None once learning has ended
    boiler: np.ndarray = field(default_factory=lambda: EMPTY)
    version: int = 0


@dataclass(frozen=True, slots=True)
class BoilerplateConfig:
    min_pages: int = 3  # a bigram on fewer pages of a host is never its frame
    share: float = 0.9  # ... and it must be on (nearly) every page of the host
    # A "frame" that is most of what the host's pages say is not a frame: a host made of
    # copies of one article. Then nothing is removed (its pages are compared whole).
    max_frame: float = 0.65
    learn_pages: int = 64  # the frame is learned from a host's first pages, then frozen
    keep_min: float = 0.2  # a page left with less than this share of its bigrams keeps them all
    keep_min_count: int = 8


# Learning steps: the frame is recomputed when a host reaches these page counts (and at the
# end of learning), so a host changes its model O(log learn_pages) times, not per page.
def _steps(limit: int) -> set[int]:
    out, n = set(), 3
    while n < limit:
        out.add(n)
        n = max(n + 1, math.ceil(n * 1.5))
    out.add(limit)
    return out


class Boilerplate:
    def __init__(self, config: BoilerplateConfig | None = None) -> None:
        self.config = config or BoilerplateConfig()
        self.hosts: dict[str, HostModel] = {}
        self._steps = _steps(self.config.learn_pages)

    def observe(self, host: str, feats: np.ndarray) -> bool:
        """Count a new page of `host`; True when the host's frame changed."""
        m = self.hosts.setdefault(host, HostModel())
        if m.df is None:
            return False
        m.pages += 1
        df = m.df
        for h in feats.tolist():
            df[h] = df.get(h, 0) + 1
        if m.pages not in self._steps:
            return False
        c = self.config
        need = max(c.min_pages, math.ceil(c.share * m.pages))
        frame = [h for h, n in df.items() if n >= need]
        total = sum(df.values())
        if total and sum(df[h] for h in frame) > c.max_frame * total:
            frame = []
        boiler = np.array(sorted(frame), dtype=np.uint32)
        if m.pages >= c.learn_pages:
            m.df = None  # frozen: the counts are no longer needed
        if np.array_equal(boiler, m.boiler):
            return False
        m.boiler = boiler
        m.version += 1
        return True

    def content(self, host: str, feats: np.ndarray) -> np.ndarray:
        m = self.hosts.get(host)
        if m is None or not m.boiler.size or not feats.size:
            return feats
        kept = feats[~np.isin(feats, m.boiler, assume_unique=True)]
        c = self.config
        if kept.size < max(c.keep_min_count, c.keep_min * feats.size):
            return feats  # the "frame" is the page: a host of copies of one article
        return kept

    def version(self, host: str) -> int:
        m = self.hosts.get(host)
        return m.version if m is not None else 0
