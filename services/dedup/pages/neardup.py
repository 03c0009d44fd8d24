"""The page index: exact duplicates by normalised-text SHA-256, near duplicates by one of

- `content` (the default): word-bigram sets with each site's learned boilerplate removed,
  exact Jaccard >= `content_threshold` (see boilerplate.py); clusters do not chain: a page
  joins the cluster whose *representative* (its oldest page) it is similar to, the most
  similar one if several, else it starts its own. What a host's frame is grows while its
  first pages arrive; when it changes, the clusters are recomputed (lazily, at the next read)
  against what is known now, so early pages of a site are not left merged by its frame.
- `simhash` (banded, Hamming <= k), `minhash` (LSH, estimated Jaccard >= t) or `both`: whole
  page text, clusters by union-find, a connected component of the "duplicate of" relation.

Every cluster lists its edges so a reader sees which pairs were judged and how.

Thread safety: signatures are computed by `prepare` without the lock (CPU work, may run in a
thread pool); `add` takes the lock only to look up and insert. Redelivered events (same URL)
are recognised and not indexed twice, so at-least-once transports are safe.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.dedup.pages.boilerplate import Boilerplate, BoilerplateConfig, features, host_of, jaccard
from services.dedup.pages.minhash import MinHasher, MinHashLSH
from services.dedup.pages.simhash import SimHashIndex, simhash
from services.dedup.pages.text import shingles, text_sha256, words

METHODS = ("content", "simhash", "minhash", "both")


@dataclass(frozen=True, slots=True)
class NearConfig:
    method: str = "content"
    simhash_k: int = 8
    simhash_shingle: int = 2
    minhash_perm: int = 96
    minhash_bands: int = 32
    minhash_threshold: float = 0.5
    minhash_shingle: int = 3
    min_words: int = 20  # shorter texts are compared exactly only: too few features to judge
    content_threshold: float = 0.2  # bigram Jaccard of the content (boilerplate removed)
    content_sample: int = 4  # 1 in N content bigrams (by hash) finds candidates
    boilerplate: BoilerplateConfig = field(default_factory=BoilerplateConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


@dataclass(slots=True)
class Prepared:
    url: str
    final_url: str
    content_sha256: str
    text_sha256: str | None
    simhash: int | None
    minhash: tuple[int, ...] | None
    event: dict[str, Any]
    features: np.ndarray | None = None  # content mode: sorted uint32 bigram hashes


@dataclass(slots=True)
class PageRecord:
    id: int
    url: str
    final_url: str
    content_sha256: str
    text_sha256: str | None
    simhash: int | None
    crawl_id: str
    fetched_at: float


@dataclass(slots=True)
class Edge:
    a: int
    b: int
    kind: str  # "exact" | "simhash" | "minhash"
    score: float  # 0 for exact, Hamming distance for simhash, estimated Jaccard for minhash


@dataclass(slots=True)
class AddResult:
    id: int
    new: bool
    exact_of: str | None = None
    near: list[dict[str, Any]] = field(default_factory=list)


class PageIndex:
    def __init__(self, config: NearConfig | None = None) -> None:
        self.config = config or NearConfig()
        c = self.config
        self._lock = threading.Lock()
        self._hasher = MinHasher(c.minhash_perm)
        self._sim = SimHashIndex(c.simhash_k)
        self._lsh = MinHashLSH(c.minhash_perm, c.minhash_bands, c.minhash_threshold)
        self._pages: list[PageRecord] = []
        self._by_url: dict[str, int] = {}
        self._by_text: dict[str, int] = {}
        self._by_body: dict[str, int] = {}
        self._parent: list[int] = []
        self._edges: dict[int, list[Edge]] = {}
        self._members: dict[int, list[int]] = {}  # root -> ids, only for clusters of 2 or more
        # content mode
        self._content = c.method == "content"
        self._bp = Boilerplate(c.boilerplate)
        self._feats: list[np.ndarray | None] = []
        self._hosts: list[str] = []
        self._postings: dict[int, list[int]] = {}
        self._exact_of: dict[int, int] = {}
        self._content_cache: dict[int, tuple[int, np.ndarray]] = {}
        self._dirty = False
        self.recomputes = 0
        self.counters = {"pages_seen": 0, "pages_indexed": 0, "redelivered": 0, "exact": 0, "near": 0}

    # -- pure work, no lock ---------------------------------------------------------------
    def prepare(self, event: dict[str, Any]) -> Prepared:
        text = event.get("text") or ""
        tokens = words(text)
        c = self.config
        use_near = len(tokens) >= c.min_words
        feats = features(tokens) if use_near and c.method == "content" else None
        use_near = use_near and c.method != "content"
        sim = simhash(shingles(tokens, c.simhash_shingle)) if use_near and c.method != "minhash" else None
        mh = (
            self._hasher.signature(shingles(tokens, c.minhash_shingle))
            if use_near and c.method != "simhash"
            else None
        )
        return Prepared(
            url=event["url"],
            final_url=event.get("final_url") or event["url"],
            content_sha256=event["content_sha256"],
            text_sha256=text_sha256(text) if tokens else None,
            simhash=sim,
            minhash=mh,
            event=event,
            features=feats,
        )

    # -- union-find -----------------------------------------------------------------------
    def _find(self, i: int) -> int:
        root = i
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[i] != root:  # path compression keeps later finds O(alpha)
            self._parent[i], i = root, self._parent[i]
        return root

    def _union(self, a: int, b: int, kind: str, score: float) -> None:
        edge = Edge(a, b, kind, score)
        self._edges.setdefault(a, []).append(edge)
        self._edges.setdefault(b, []).append(edge)
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            keep, gone = min(ra, rb), max(ra, rb)  # the oldest page names the cluster
            self._parent[gone] = keep
            self._members.setdefault(keep, [keep]).extend(self._members.pop(gone, [gone]))

    # -- index ----------------------------------------------------------------------------
    def add(self, p: Prepared) -> AddResult:
        with self._lock:
            self.counters["pages_seen"] += 1
            known = self._by_url.get(p.url)
            if known is not None:
                self.counters["redelivered"] += 1
                return AddResult(known, new=False)
            pid = len(self._pages)
            ev = p.event
            self._pages.append(
                PageRecord(
                    pid,
                    p.url,
                    p.final_url,
                    p.content_sha256,
                    p.text_sha256,
                    p.simhash,
                    str(ev.get("crawl_id", "")),
                    float(ev.get("fetched_at", 0.0)),
                )
            )
            self._parent.append(pid)
            self._feats.append(p.features if self._content else None)
            self._hosts.append(host_of(p.final_url) if self._content else "")
            self._by_url[p.url] = pid
            self._by_url.setdefault(p.final_url, pid)
            self.counters["pages_indexed"] += 1
            result = AddResult(pid, new=True)

            exact = self._by_body.get(p.content_sha256)
            if exact is None and p.text_sha256 is not None:
                exact = self._by_text.get(p.text_sha256)
            if exact is not None and self._content:
                self._exact_of[pid] = exact
                self.counters["exact"] += 1
                result.exact_of = self._pages[exact].url
                if not self._dirty:
                    self._edge(exact, pid, "exact", 0.0)
                    self._join(pid, self._find(exact))
            elif exact is not None:
                # An exact copy joins its original; no near search needed (same signatures).
                self._union(exact, pid, "exact", 0.0)
                self.counters["exact"] += 1
                result.exact_of = self._pages[exact].url
            elif self._content:
                self._by_body[p.content_sha256] = pid
                if p.text_sha256 is not None:
                    self._by_text[p.text_sha256] = pid
                near = self._add_content(pid)
                for other, score in near:
                    result.near.append({"url": self._pages[other].url, "method": "content", "score": score})
                if near:
                    self.counters["near"] += 1
            else:
                self._by_body[p.content_sha256] = pid
                if p.text_sha256 is not None:
                    self._by_text[p.text_sha256] = pid
                found: dict[int, tuple[str, float]] = {}
                if p.simhash is not None:
                    for other, dist in self._sim.near(p.simhash):
                        found[other] = ("simhash", float(dist))
                    self._sim.add(pid, p.simhash)
                if p.minhash is not None:
                    for other, sim in self._lsh.near(p.minhash):
                        found.setdefault(other, ("minhash", sim))
                    self._lsh.add(pid, p.minhash)
                for other, (kind, score) in sorted(found.items()):
                    self._union(other, pid, kind, score)
                    result.near.append({"url": self._pages[other].url, "method": kind, "score": score})
                if found:
                    self.counters["near"] += 1
            return result

    # -- content mode -------------------------------------------------------------------
    def _content_of(self, pid: int) -> np.ndarray:
        feats = self._feats[pid]
        if feats is None:
            return np.empty(0, dtype=np.uint32)
        host = self._hosts[pid]
        version = self._bp.version(host)
        cached = self._content_cache.get(pid)
        if cached is not None and cached[0] == version:
            return cached[1]
        content = self._bp.content(host, feats)
        self._content_cache[pid] = (version, content)
        return content

    def _similar(self, pid: int) -> list[tuple[int, float]]:
        """Earlier pages whose content is similar to `pid`'s, most similar first."""
        mine = self._content_of(pid)
        if not mine.size:
            return []
        n = self.config.content_sample
        candidates: set[int] = set()
        for h in mine[mine % n == 0].tolist():
            candidates.update(q for q in self._postings.get(h, ()) if q < pid)
        t = self.config.content_threshold
        out = []
        for q in candidates:
            j = jaccard(mine, self._content_of(q))
            if j >= t:
                out.append((q, round(j, 4)))
        out.sort(key=lambda x: (-x[1], x[0]))
        return out

    def _edge(self, a: int, b: int, kind: str, score: float) -> None:
        edge = Edge(a, b, kind, score)
        self._edges.setdefault(a, []).append(edge)
        self._edges.setdefault(b, []).append(edge)

    def _join(self, pid: int, rep: int) -> None:
        self._parent[pid] = rep
        if rep != pid:
            self._members.setdefault(rep, [rep]).append(pid)

    def _assign(self, pid: int, near: list[tuple[int, float]]) -> None:
        """Join the cluster whose representative `pid` is most similar to (>= threshold)."""
        for q, score in near:
            self._edge(q, pid, "content", score)
        scores = dict(near)
        t = self.config.content_threshold
        best, best_j = pid, -1.0
        mine = None
        for rep in sorted({self._parent[q] for q, _ in near}):
            known = scores.get(rep)
            if known is None:
                mine = self._content_of(pid) if mine is None else mine
                j = jaccard(mine, self._content_of(rep))
            else:
                j = known
            if j >= t and j > best_j:
                best, best_j = rep, j
        self._join(pid, best)

    def _add_content(self, pid: int) -> list[tuple[int, float]]:
        feats = self._feats[pid]
        if feats is None:
            return []
        if self._bp.observe(self._hosts[pid], feats):
            self._dirty = True
        n = self.config.content_sample
        for h in feats[feats % n == 0].tolist():  # the whole set: the frame may shrink later
            self._postings.setdefault(h, []).append(pid)
        near = self._similar(pid)
        if not self._dirty:
            self._assign(pid, near)
        return near

    def _refresh(self) -> None:
        """Content mode, after a host's frame changed: every page judged again, in order."""
        if not self._dirty:
            return
        self.recomputes += 1
        self._parent = list(range(len(self._pages)))
        self._members = {}
        self._edges = {}
        for pid in range(len(self._pages)):
            exact = self._exact_of.get(pid)
            if exact is not None:
                self._edge(exact, pid, "exact", 0.0)
                self._join(pid, self._parent[exact])
            else:
                self._assign(pid, self._similar(pid))
        self._dirty = False

    def add_event(self, event: dict[str, Any]) -> AddResult:
        return self.add(self.prepare(event))

    def cluster(self, url: str) -> dict[str, Any] | None:
        with self._lock:
            self._refresh()
            pid = self._by_url.get(url)
            if pid is None:
                return None
            root = self._find(pid)
            members = [self._pages[i] for i in sorted(self._members.get(root, [root]))]
            ids = {r.id for r in members}
            edges = {id(e): e for m in ids for e in self._edges.get(m, ())}.values()
            me = self._pages[pid]

            def relation(r: PageRecord) -> str:
                if r.id == pid:
                    return "self"
                if r.content_sha256 == me.content_sha256 or (
                    r.text_sha256 and r.text_sha256 == me.text_sha256
                ):
                    return "exact"
                if any(e.a in (pid, r.id) and e.b in (pid, r.id) for e in self._edges.get(pid, ())):
                    return "near"
                return "cluster"  # connected through other pages

            return {
                "url": url,
                "cluster_id": f"c{root}",
                "size": len(members),
                "members": [
                    {
                        "url": r.url,
                        "final_url": r.final_url,
                        "relation": relation(r),
                        "text_sha256": r.text_sha256,
                    }
                    for r in members
                ],
                "edges": [
                    {"a": self._pages[e.a].url, "b": self._pages[e.b].url, "kind": e.kind, "score": e.score}
                    for e in sorted(edges, key=lambda e: (e.a, e.b))
                ],
            }

    def clusters(self) -> list[list[str]]:
        """Every cluster of two or more pages, as URL lists (for evaluation and reports)."""
        with self._lock:
            self._refresh()
            return [[self._pages[i].url for i in sorted(ids)] for ids in self._members.values()]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._refresh()
            return {
                **self.counters,
                "index_size": len(self._pages),
                "simhash_entries": len(self._sim),
                "minhash_entries": len(self._lsh),
                "clusters": len(self._members),
                "pages_in_clusters": sum(len(m) for m in self._members.values()),
                "method": self.config.method,
                "boilerplate_hosts": len(self._bp.hosts),
                "recomputes": self.recomputes,
            }
