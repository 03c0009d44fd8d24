"""SQLite (WAL) implementation of FrontierStore: the durable embedded default.

WAL with synchronous=NORMAL: every committed transaction survives a killed process (SIGKILL); only
an OS crash or power loss can drop the last few. One connection, used from one thread (the event
loop); each public method is one transaction.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from services.crawler import metrics
from services.crawler.bloom import BloomFilter
from services.crawler.store import (
    LEASED_STATES,
    READY_STATES,
    FrontierStore,
    NewURL,
    Outcome,
    URLRecord,
    URLState,
    url_key,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS urls (
    id            INTEGER PRIMARY KEY,
    url_key       BLOB NOT NULL UNIQUE,
    url           TEXT NOT NULL,
    host          TEXT NOT NULL,
    depth         INTEGER NOT NULL,
    redirects     INTEGER NOT NULL DEFAULT 0,
    via           TEXT,
    state         INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    not_before    REAL NOT NULL DEFAULT 0,
    lease_owner   TEXT,
    lease_until   REAL,
    status        INTEGER,
    content_sha256 TEXT,
    error         TEXT,
    discovered_at REAL,
    fetched_at    REAL
);
CREATE INDEX IF NOT EXISTS urls_host_queue ON urls (host, state, depth, id);
CREATE INDEX IF NOT EXISTS urls_state_lease ON urls (state, lease_until);
CREATE TABLE IF NOT EXISTS hosts (host TEXT PRIMARY KEY, admitted INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS content (sha256 TEXT PRIMARY KEY, url_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS edges (
    src INTEGER NOT NULL, url TEXT NOT NULL, host TEXT NOT NULL, delta INTEGER NOT NULL,
    redirects INTEGER NOT NULL, via TEXT
);
CREATE INDEX IF NOT EXISTS edges_src ON edges (src);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_F = TypeVar("_F", bound=Callable[..., Any])


def _timed(op: str) -> Callable[[_F], _F]:
    """Observe one write transaction's duration in crawler_store_write_duration_seconds{op}."""
    hist = metrics.STORE_WRITE_LATENCY.labels(op)

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                hist.observe(time.perf_counter() - t0)

        return timed  # type: ignore[return-value]

    return wrap


_READY = ",".join(str(int(s)) for s in READY_STATES)
_LEASED = ",".join(str(int(s)) for s in LEASED_STATES)


class SQLiteStore(FrontierStore):
    def __init__(self, path: str | os.PathLike[str], *, bloom_capacity: int | None = None) -> None:
        """`bloom_capacity`: put a Bloom filter (1% false positives at that many URLs) in front of
        the exact URL index; it is rebuilt from the store on open, so a resumed crawl keeps it."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self.bloom: BloomFilter | None = None
        self.bloom_skips = 0  # exact lookups the filter saved
        if bloom_capacity:
            self.bloom = BloomFilter(bloom_capacity)
            for (key,) in self._db.execute("SELECT url_key FROM urls"):
                self.bloom.add(key)

    # -- helpers -------------------------------------------------------------------------------
    def _insert(
        self, urls: list[NewURL], max_per_host: int | None, now: float, max_depth: int | None = None
    ) -> int:
        new = 0
        cur = self._db.cursor()
        for u in urls:
            key = url_key(u.url)
            if self.bloom is not None and key not in self.bloom:
                seen = None  # certainly new: no index lookup needed
                self.bloom_skips += 1
            else:
                seen = cur.execute("SELECT id, depth FROM urls WHERE url_key=?", (key,)).fetchone()
            if seen is not None:
                if u.depth < seen[1]:
                    self._lower_depth(seen[0], u.depth, max_per_host, now, max_depth)
                continue
            if max_depth is not None and u.depth > max_depth:
                continue
            if max_per_host is not None:
                row = cur.execute("SELECT admitted FROM hosts WHERE host=?", (u.host,)).fetchone()
                if row is not None and row[0] >= max_per_host:
                    continue
            cur.execute(
                "INSERT INTO urls (url_key, url, host, depth, redirects, via, state, discovered_at)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (key, u.url, u.host, u.depth, u.redirects, u.via, int(URLState.DISCOVERED), now),
            )
            if self.bloom is not None:
                self.bloom.add(key)
            cur.execute(
                "INSERT INTO hosts (host, admitted) VALUES (?, 1)"
                " ON CONFLICT(host) DO UPDATE SET admitted = admitted + 1",
                (u.host,),
            )
            new += 1
        return new

    def _lower_depth(
        self, url_id: int, depth: int, max_per_host: int | None, now: float, max_depth: int | None
    ) -> None:
        """A URL was reached by a shorter path: lower its depth and, if it was already fetched,
        its descendants' (links once cut by max_depth may now be admitted). Hosts are crawled in
        parallel, so discovery order is not BFS order; this keeps max_depth meaning BFS depth."""
        stack = [(url_id, depth)]
        while stack:
            uid, d = stack.pop()
            row = self._db.execute("SELECT depth, state FROM urls WHERE id=?", (uid,)).fetchone()
            if row is None or row[0] <= d:
                continue
            self._db.execute("UPDATE urls SET depth=? WHERE id=?", (d, uid))
            if row[1] != int(URLState.FETCHED):
                continue
            for url, host, delta, redirects, via in self._db.execute(
                "SELECT url, host, delta, redirects, via FROM edges WHERE src=?", (uid,)
            ).fetchall():
                child = self._db.execute("SELECT id FROM urls WHERE url_key=?", (url_key(url),)).fetchone()
                if child is not None:
                    stack.append((child[0], d + delta))
                else:
                    self._insert([NewURL(url, host, d + delta, redirects, via)], max_per_host, now, max_depth)

    # -- FrontierStore -------------------------------------------------------------------------
    @_timed("add")
    def add(
        self, urls: list[NewURL], *, max_per_host: int | None = None, now: float, max_depth: int | None = None
    ) -> int:
        if not urls:
            return 0
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            return self._insert(urls, max_per_host, now, max_depth)

    @_timed("claim")
    def claim(self, host: str, owner: str, lease_seconds: float, now: float) -> URLRecord | None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                f"SELECT id, url, host, depth, redirects, via, state, attempts FROM urls"
                f" WHERE host=? AND state IN ({_READY}) AND not_before<=?"
                f" ORDER BY depth, id LIMIT 1",
                (host, now),
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE urls SET state=?, lease_owner=?, lease_until=? WHERE id=?",
                (int(URLState.SCHEDULED), owner, now + lease_seconds, row[0]),
            )
        return URLRecord(row[0], row[1], row[2], row[3], row[4], row[5], URLState.SCHEDULED, row[7])

    @_timed("start")
    def start(self, url_id: int, owner: str, lease_seconds: float, now: float) -> bool:
        with self._db:
            cur = self._db.execute(
                "UPDATE urls SET state=?, attempts=attempts+1, lease_until=?"
                " WHERE id=? AND state=? AND lease_owner=?",
                (int(URLState.FETCHING), now + lease_seconds, url_id, int(URLState.SCHEDULED), owner),
            )
            return cur.rowcount == 1

    @_timed("finish")
    def finish(
        self,
        url_id: int,
        outcome: Outcome,
        new_urls: list[NewURL],
        *,
        max_per_host: int | None = None,
        max_depth: int | None = None,
        parent_depth: int | None = None,
        now: float,
    ) -> int:
        assert outcome.state in (URLState.FETCHED, URLState.FAILED)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT state FROM urls WHERE id=?", (url_id,)).fetchone()
            if row is None or row[0] in (int(URLState.FETCHED), int(URLState.FAILED)):
                return 0  # already final: a second finish (at-least-once fetch) changes nothing
            self._db.execute(
                "UPDATE urls SET state=?, status=?, content_sha256=?, error=?, fetched_at=?,"
                " lease_owner=NULL, lease_until=NULL WHERE id=?",
                (
                    int(outcome.state),
                    outcome.status,
                    outcome.content_sha256,
                    outcome.error,
                    outcome.fetched_at,
                    url_id,
                ),
            )
            if max_depth is None:
                return self._insert(new_urls, max_per_host, now)
            # With a depth limit, remember every edge (even the ones cut by the limit) so that a
            # later, shorter path to this page can re-derive its descendants' depths.
            depth_now = self._db.execute("SELECT depth FROM urls WHERE id=?", (url_id,)).fetchone()[0]
            base = depth_now if parent_depth is None else parent_depth
            rebased = []
            for u in new_urls:
                delta = u.depth - base
                self._db.execute(
                    "INSERT INTO edges (src, url, host, delta, redirects, via) VALUES (?,?,?,?,?,?)",
                    (url_id, u.url, u.host, delta, u.redirects, u.via),
                )
                rebased.append(NewURL(u.url, u.host, depth_now + delta, u.redirects, u.via))
            return self._insert(rebased, max_per_host, now, max_depth)

    @_timed("retry")
    def retry(self, url_id: int, not_before: float, error: str, status: int | None = None) -> None:
        with self._db:
            self._db.execute(
                f"UPDATE urls SET state=?, not_before=?, error=?, status=?, lease_owner=NULL,"
                f" lease_until=NULL"
                f" WHERE id=? AND state IN ({_LEASED})",
                (int(URLState.RETRYABLE), not_before, error, status, url_id),
            )

    @_timed("release")
    def release(self, url_id: int) -> None:
        with self._db:
            self._db.execute(
                f"UPDATE urls SET state=CASE WHEN attempts>0 THEN ? ELSE ? END,"
                f" lease_owner=NULL, lease_until=NULL WHERE id=? AND state IN ({_LEASED})",
                (int(URLState.RETRYABLE), int(URLState.DISCOVERED), url_id),
            )

    @_timed("expire_leases")
    def expire_leases(self, now: float) -> int:
        with self._db:
            cur = self._db.execute(
                f"UPDATE urls SET state=CASE WHEN attempts>0 THEN ? ELSE ? END,"
                f" lease_owner=NULL, lease_until=NULL WHERE state IN ({_LEASED}) AND lease_until<?",
                (int(URLState.RETRYABLE), int(URLState.DISCOVERED), now),
            )
            return cur.rowcount

    def release_owner(self, owner: str) -> int:
        with self._db:
            cur = self._db.execute(
                f"UPDATE urls SET state=CASE WHEN attempts>0 THEN ? ELSE ? END,"
                f" lease_owner=NULL, lease_until=NULL WHERE state IN ({_LEASED}) AND lease_owner=?",
                (int(URLState.RETRYABLE), int(URLState.DISCOVERED), owner),
            )
            return cur.rowcount

    def pending_hosts(self) -> list[tuple[str, float]]:
        return [
            (h, t)
            for h, t in self._db.execute(
                f"SELECT host, MIN(not_before) FROM urls WHERE state IN ({_READY}) GROUP BY host"
            )
        ]

    def next_ready_at(self, host: str) -> float | None:
        row = self._db.execute(
            f"SELECT MIN(not_before) FROM urls WHERE host=? AND state IN ({_READY})", (host,)
        ).fetchone()
        return row[0] if row else None

    def earliest_lease_expiry(self) -> float | None:
        row = self._db.execute(f"SELECT MIN(lease_until) FROM urls WHERE state IN ({_LEASED})").fetchone()
        return row[0] if row else None

    @_timed("first_with_content")
    def first_with_content(self, sha256: str, url_id: int) -> int:
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO content (sha256, url_id) VALUES (?, ?)", (sha256, url_id))
            row = self._db.execute("SELECT url_id FROM content WHERE sha256=?", (sha256,)).fetchone()
        return int(row[0])

    def counts(self) -> dict[str, int]:
        out = {s.name: 0 for s in URLState}
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM urls GROUP BY state"):
            out[URLState(state).name] = n
        return out

    def host_counts(self, host: str) -> dict[str, int]:
        out = {s.name: 0 for s in URLState}
        for state, n in self._db.execute(
            "SELECT state, COUNT(*) FROM urls WHERE host=? GROUP BY state", (host,)
        ):
            out[URLState(state).name] = n
        return out

    def hosts(self) -> list[str]:
        return [h for (h,) in self._db.execute("SELECT host FROM hosts ORDER BY host")]

    @_timed("set_meta")
    def set_meta(self, key: str, value: str) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value),
            )

    def close(self) -> None:
        self._db.close()


_OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE,
    body       TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


class SQLiteOutbox:
    """Durable queue of page events not yet acknowledged by the sink (transactional outbox).

    `put` commits before it returns, so an event survives a killed process (WAL, like the
    store); the sink deletes an event only after the transport acknowledged it. One row per
    event id: putting an id that is still waiting changes nothing. It may share the crawl
    store's file (its own table and connection) or have one of its own; ":memory:" keeps the
    retries but not the durability.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_OUTBOX_SCHEMA)
        self._count = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def __len__(self) -> int:
        return self._count

    @_timed("outbox_put")
    def put(self, event_id: str, body: str, now: float) -> bool:
        """Add one event; False when an event with this id is already waiting."""
        with self._db:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO outbox (event_id, body, created_at) VALUES (?, ?, ?)",
                (event_id, body, now),
            )
        added = cur.rowcount == 1
        self._count += added
        return added

    def peek(self, limit: int) -> list[tuple[int, str, str]]:
        """The oldest waiting events: (seq, event_id, body)."""
        return list(self._db.execute("SELECT seq, event_id, body FROM outbox ORDER BY seq LIMIT ?", (limit,)))

    @_timed("outbox_delete")
    def delete(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._db:
            cur = self._db.executemany("DELETE FROM outbox WHERE seq=?", [(s,) for s in seqs])
        self._count = max(0, self._count - cur.rowcount)

    def oldest_age(self, now: float) -> float:
        row = self._db.execute("SELECT MIN(created_at) FROM outbox").fetchone()
        return 0.0 if row is None or row[0] is None else max(0.0, now - row[0])

    def close(self) -> None:
        self._db.close()
