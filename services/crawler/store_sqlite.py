"""SQLite (WAL) implementation of FrontierStore: the durable embedded default.

WAL with synchronous=NORMAL: every committed transaction survives a killed process (SIGKILL); only
an OS crash or power loss can drop the last few.

Off the event loop, in batches: one thread of its own owns the connection and runs every store
operation, in order, inside one open transaction (group commit: several pages' claims, starts
and finishes share one commit, where each was a transaction of its own). The event loop hands
its operations over once per turn of the loop, and gets the answers back in one wake-up. Each
operation runs under a SAVEPOINT, so one that fails is undone alone. A *durable* operation
(start, finish, retry, add, set_meta) is answered only after the commit that holds it: a page
counts as finished only once its outcome is on disk, and a request leaves only once its lease is,
with everything before it in the transaction (the finish that found its URL), so no fetch rests
on a write a failed commit could still take back. A start (or a blocked caller) commits as soon
as the queue is empty; finishes and the rest wait at most `flush_interval` (20 ms) for company.
Claims and releases return at once (their effect shows to every later operation); losing them
in a crash is what a restart does anyway (`release_owner` hands a dead run's leases back). A
commit that fails (a full disk) fails every durable operation it held (their writers try again,
engine._durable; a start refused so sends no request) and the claims with them are gone: those
URLs are ready again.

The engine awaits the `a*` methods (the future of the thread's answer); the plain methods submit
the same work and block for it (tests, the control API, start-up) and commit at once.

Counts are counters, not scans: triggers keep `state_counts` (URLs per state) and `host_ready`
(ready URLs per host) in the same transaction as the change, so they are exact after any crash;
`pending_hosts` reads the hosts with ready URLs from `host_ready` and each one's earliest
not_before from a partial index of ready URLs (no scan of the URL table).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from services.crawler import metrics
from services.crawler.bloom import BloomFilter
from services.crawler.store import (
    LEASED_STATES,
    READY_STATES,
    Claimed,
    ClaimRule,
    Finish,
    FrontierStore,
    NewURL,
    URLRecord,
    URLState,
    url_key,
)

_READY = ",".join(str(int(s)) for s in READY_STATES)
_LEASED = ",".join(str(int(s)) for s in LEASED_STATES)

_SCHEMA = f"""
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
CREATE INDEX IF NOT EXISTS urls_host ON urls (host);
CREATE INDEX IF NOT EXISTS urls_leased ON urls (state, lease_until) WHERE state IN ({_LEASED});
CREATE INDEX IF NOT EXISTS urls_ready ON urls (host, not_before) WHERE state IN ({_READY});
CREATE TABLE IF NOT EXISTS hosts (host TEXT PRIMARY KEY, admitted INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS content (sha256 TEXT PRIMARY KEY, url_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS edges (
    src INTEGER NOT NULL, url TEXT NOT NULL, host TEXT NOT NULL, delta INTEGER NOT NULL,
    redirects INTEGER NOT NULL, via TEXT
);
CREATE INDEX IF NOT EXISTS edges_src ON edges (src);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state_counts (state INTEGER PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS host_ready (host TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""

# Indexes of a file written before the ones above: every state change of a URL moved its entries
# in both (a claim, a start, a finish: a page of each written again in the WAL); now a URL's
# entry by host does not move, and only leased URLs have one by lease.
_OLD_INDEXES = ("urls_host_queue", "urls_state_lease")

# Kept by the same transaction as the change they count (a file from before them is counted once
# on open, see _migrate).
_TRIGGERS = f"""
CREATE TRIGGER IF NOT EXISTS urls_counted_ins AFTER INSERT ON urls BEGIN
    INSERT INTO state_counts (state, n) VALUES (NEW.state, 1)
        ON CONFLICT(state) DO UPDATE SET n = n + 1;
    INSERT INTO host_ready (host, n) VALUES (NEW.host, NEW.state IN ({_READY}))
        ON CONFLICT(host) DO UPDATE SET n = n + (NEW.state IN ({_READY}));
END;
CREATE TRIGGER IF NOT EXISTS urls_counted_upd AFTER UPDATE OF state ON urls
WHEN OLD.state != NEW.state BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
    INSERT INTO state_counts (state, n) VALUES (NEW.state, 1)
        ON CONFLICT(state) DO UPDATE SET n = n + 1;
    UPDATE host_ready SET n = n + (NEW.state IN ({_READY})) - (OLD.state IN ({_READY}))
        WHERE host = NEW.host AND (NEW.state IN ({_READY})) != (OLD.state IN ({_READY}));
END;
CREATE TRIGGER IF NOT EXISTS urls_counted_del AFTER DELETE ON urls BEGIN
    UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
    UPDATE host_ready SET n = n - (OLD.state IN ({_READY})) WHERE host = OLD.host;
END;
"""

_F = TypeVar("_F", bound=Callable[..., Any])

#: A link to admit: (url, host, depth, redirects, via).
_Row = tuple[str, str, int, int, "str | None"]

_FINAL = f"{int(URLState.FETCHED)},{int(URLState.FAILED)}"
# One statement each (RETURNING): the host's best ready URL claimed; a URL's outcome written
# unless it is final already (its depth: the links' base).
_CLAIM_SQL = (
    f"UPDATE urls SET state={int(URLState.SCHEDULED)}, lease_owner=?, lease_until=? WHERE id=("
    f"SELECT id FROM urls WHERE host=? AND state IN ({_READY}) AND not_before<=?"
    f" ORDER BY depth, id LIMIT 1) RETURNING id, url, host, depth, redirects, via, attempts"
)
_FINISH_SQL = (
    "UPDATE urls SET state=?, status=?, content_sha256=?, error=?, fetched_at=?,"
    f" lease_owner=NULL, lease_until=NULL WHERE id=? AND state NOT IN ({_FINAL}) RETURNING depth"
)
#: Keys looked up in one statement at most (SQLite allows 32766 parameters).
_IN_MAX = 512
_KNOWN_SQL = {
    n: f"SELECT url_key, id, depth FROM urls WHERE url_key IN ({','.join('?' * n)})"
    for n in (1 << k for k in range(_IN_MAX.bit_length()))
}


def _rows(urls: Sequence[NewURL]) -> list[_Row]:
    return [(u.url, u.host, u.depth, u.redirects, u.via) for u in urls]


#: A transaction is committed at most this long after it began (the group-commit window).
FLUSH_INTERVAL_S = 0.02
#: ... or once it holds this many operations.
_MAX_OPS_PER_COMMIT = 1000


def _timed(op: str) -> Callable[[_F], _F]:
    """Observe one call's duration in crawler_store_write_duration_seconds{op} (the outbox)."""
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


def _store_op(op: str) -> Callable[[_F], _F]:
    """Name a store-thread operation for crawler_store_write_duration_seconds{op}: the thread
    observes it once when it runs as an operation of its own (not when another one calls it,
    as claim_start calls claim and start), without a wrapper's call a time."""

    def mark(fn: _F) -> _F:
        setattr(fn, _HIST_ATTR, metrics.STORE_WRITE_LATENCY.labels(op))
        return fn

    return mark


_HIST_ATTR = "_store_write_hist"


class _Op:
    """One operation for the store thread. Its answer goes to `waiter`: a threading one for a
    blocked caller, an asyncio future for the event loop (answered in batches, one wake-up)."""

    __slots__ = ("args", "durable", "error", "fn", "kwargs", "result", "urgent", "waiter")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        durable: bool | Callable[[Any], bool],
        waiter: asyncio.Future[Any] | threading.Event,
        urgent: bool = False,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        # answered only once the commit that holds it is done (a function: asked of the result)
        self.durable = durable
        self.waiter = waiter
        # commit as soon as the queue is empty (no window): a blocked caller, or a request
        # that may not leave before its lease is on disk
        self.urgent = urgent or isinstance(waiter, threading.Event)
        self.result: Any = None
        self.error: BaseException | None = None


def _answer_all(ops: list[_Op]) -> None:
    """On the event loop: hand the store thread's answers to their futures."""
    for op in ops:
        fut = op.waiter
        assert isinstance(fut, asyncio.Future)
        if fut.cancelled():
            continue
        if op.error is not None:
            fut.set_exception(op.error)
        else:
            fut.set_result(op.result)


def _started(claimed: Claimed) -> bool:
    return claimed.started


_CLOSE = object()


class StoreClosed(sqlite3.ProgrammingError):
    """An operation was submitted to a closed store (what a closed connection raises, too)."""


class SQLiteStore(FrontierStore):
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        bloom_capacity: int | None = None,
        flush_interval: float = FLUSH_INTERVAL_S,
    ) -> None:
        """`bloom_capacity`: put a Bloom filter (1% false positives at that many URLs) in front of
        the exact URL index; it is rebuilt from the store on open, so a resumed crawl keeps it.
        `flush_interval`: the group-commit window of operations the engine awaits."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.flush_interval = flush_interval
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        # A statement's or savepoint's undo journal in memory: not a temporary file (created,
        # written, closed) when it outgrows 64 KiB.
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self.bloom: BloomFilter | None = None
        self.bloom_skips = 0  # exact lookups the filter saved
        if bloom_capacity:
            self.bloom = BloomFilter(bloom_capacity)
            for (key,) in self._db.execute("SELECT url_key FROM urls"):
                self.bloom.add(key)
        self.commits = 0  # transactions committed by the store thread (group commits)
        self.ops_committed = 0  # operations they held
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # _Op, [_Op, ...] or _CLOSE
        self._outgoing: list[_Op] = []  # the event loop's operations of this turn (_hand_over)
        # Hosts given URLs by a depth re-derivation since the last changed_hosts() (written on
        # the store thread): a descendant admitted through a shorter path may be of any host.
        self._changed: dict[str, float] = {}
        self._changed_lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"sqlite-store:{self.path.name}", daemon=True)
        self._thread.start()

    def _migrate(self) -> None:
        """Counters for a file written before them: counted once, with the triggers, in one transaction."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for old in _OLD_INDEXES:  # (their successors are in _SCHEMA)
                self._db.execute(f"DROP INDEX IF EXISTS {old}")
            if self._db.execute("SELECT 1 FROM meta WHERE key='counters'").fetchone() is None:
                self._db.execute("DELETE FROM state_counts")
                self._db.execute("DELETE FROM host_ready")
                self._db.execute("INSERT INTO state_counts SELECT state, COUNT(*) FROM urls GROUP BY state")
                self._db.execute(
                    f"INSERT INTO host_ready SELECT host, SUM(state IN ({_READY})) FROM urls GROUP BY host"
                )
                self._db.execute("INSERT INTO meta (key, value) VALUES ('counters', '1')")
            for stmt in _TRIGGERS.split("END;"):
                if stmt.strip():
                    self._db.execute(stmt + "END;")

    # -- the store thread ----------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any, durable: bool = False, **kwargs: Any) -> Any:
        """Run `fn` on the store thread and wait for it (committed first when durable); a blocked
        caller is answered as soon as the queue is empty, without the group-commit window."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        if self._closing:
            raise StoreClosed(f"store {self.path} is closed")
        op = _Op(fn, args, kwargs, durable, threading.Event())
        self._queue.put(op)
        assert isinstance(op.waiter, threading.Event)
        op.waiter.wait()
        if op.error is not None:
            raise op.error
        return op.result

    def _acall(
        self,
        fn: Callable[..., Any],
        *args: Any,
        durable: bool | Callable[[Any], bool] = False,
        urgent: bool = False,
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        """The same from the event loop: a future the thread answers (never blocks the loop)."""
        if self._closing:
            raise StoreClosed(f"store {self.path} is closed")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        # Handed over once per turn of the loop, all together: one wake-up of the store thread
        # (and one GIL hand-off) for every operation this turn produced.
        if not self._outgoing:
            loop.call_soon(self._hand_over)
        self._outgoing.append(_Op(fn, args, kwargs, durable, fut, urgent))
        return fut

    def _hand_over(self) -> None:
        ops, self._outgoing = self._outgoing, []
        self._queue.put(ops)

    def _run(self) -> None:
        db = self._db
        perf_counter = time.perf_counter
        q = self._queue
        in_txn = False
        began = 0.0
        ops = 0
        urgent = False  # a blocked caller waits on this transaction: commit when the queue is empty
        held: list[_Op] = []  # durable operations awaiting the commit
        done: list[_Op] = []  # answers to hand back after this round

        def fail_held(exc: BaseException) -> None:
            nonlocal held
            for op in held:
                op.error = exc
            done.extend(held)
            held = []

        closing = False
        while not closing:
            batch: list[Any] = []
            try:
                if not in_txn:
                    item = q.get()
                elif urgent:
                    item = q.get_nowait()
                else:
                    item = q.get(timeout=max(0.0, began + self.flush_interval - time.monotonic()))
                while True:
                    if isinstance(item, list):
                        batch.extend(item)
                    else:
                        batch.append(item)
                    item = q.get_nowait()
            except queue.Empty:
                pass
            for op in batch:
                if op is _CLOSE:
                    closing = True
                    continue
                if not in_txn:
                    try:
                        db.execute("BEGIN IMMEDIATE")
                    except BaseException as exc:
                        op.error = exc
                        done.append(op)
                        continue
                    in_txn, began, ops, urgent = True, time.monotonic(), 0, False
                try:
                    db.execute("SAVEPOINT op")
                    t0 = perf_counter()
                    try:
                        op.result = op.fn(*op.args, **op.kwargs)
                    finally:
                        hist = getattr(op.fn, _HIST_ATTR, None)
                        if hist is not None:
                            hist.observe(perf_counter() - t0)
                except BaseException as exc:
                    if db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            db.execute("ROLLBACK TO op")
                            db.execute("RELEASE op")
                    if not db.in_transaction:  # SQLite rolled the whole transaction back (e.g. disk full)
                        in_txn = False
                        fail_held(exc)
                    op.error = exc
                    done.append(op)
                    continue
                db.execute("RELEASE op")
                ops += 1
                if isinstance(op.durable, bool):
                    durable = op.durable
                    urgent = urgent or op.urgent
                else:  # durable (and urgent) depending on what it did
                    durable = op.durable(op.result)
                    urgent = urgent or (op.urgent and durable)
                (held if durable else done).append(op)
            if in_txn and (
                closing
                or ops >= _MAX_OPS_PER_COMMIT
                or (urgent and q.empty())
                or time.monotonic() - began >= self.flush_interval
            ):
                in_txn = False
                try:
                    db.execute("COMMIT")
                except BaseException as exc:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    fail_held(exc)
                else:
                    self.commits += 1
                    self.ops_committed += ops
                    done.extend(held)
                    held = []
            self._hand_back(done)
            done = []
        db.close()

    @staticmethod
    def _hand_back(ops: list[_Op]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Op]] = {}
        for op in ops:
            if isinstance(op.waiter, threading.Event):
                op.waiter.set()
            else:
                by_loop.setdefault(op.waiter.get_loop(), []).append(op)
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_answer_all, answers)

    # -- helpers (on the store thread, inside its transaction) --------------------------------
    def _insert(
        self, rows: Sequence[_Row], max_per_host: int | None, now: float, max_depth: int | None = None
    ) -> int:
        """Admit the links `rows` ((url, host, depth, redirects, via), in this order) not seen
        before; return how many. The known ones are looked up in one statement, the new ones and
        their hosts' admitted counts written in one executemany each (a link known at a greater
        depth lowers it, see _lower_depth: the links after it are then looked up again)."""
        keyed = [(url_key(r[0]), r) for r in rows]
        bloom = self.bloom
        if bloom is None:
            ask = [k for k, _ in keyed]
        else:  # a key the filter never saw is certainly new: no index lookup needed
            ask = [k for k, _ in keyed if k in bloom]
            self.bloom_skips += len(keyed) - len(ask)
        known = self._known(ask)
        pending: dict[bytes, list[Any]] = {}  # new, in order: key -> [url, host, depth, redirects, via]
        admitted: dict[str, int] = {}  # per host, with the pending ones
        for i, (key, (url, host, depth, redirects, via)) in enumerate(keyed):
            seen = known.get(key)
            if seen is not None:
                if depth < seen[1]:  # (rare) it may add URLs of any host, these links' too
                    new = self._write_new(pending, now)
                    new += self._lower_depth(seen[0], depth, max_per_host, now, max_depth)
                    return new + self._insert(rows[i + 1 :], max_per_host, now, max_depth)
                continue
            twice = pending.get(key)
            if twice is not None:  # the same link again in these rows
                twice[2] = min(twice[2], depth)
                continue
            if max_depth is not None and depth > max_depth:
                continue
            if max_per_host is not None:
                n = admitted.get(host)
                if n is None:
                    row = self._db.execute("SELECT admitted FROM hosts WHERE host=?", (host,)).fetchone()
                    n = 0 if row is None else row[0]
                if n >= max_per_host:
                    continue
                admitted[host] = n + 1
            pending[key] = [url, host, depth, redirects, via]
        return self._write_new(pending, now)

    def _known(self, keys: list[bytes]) -> dict[bytes, tuple[int, int]]:
        """url_key -> (id, depth) of the keys already in the store, in a statement per 512 keys
        (padded to a power of two: a few statement texts, all kept in the statement cache)."""
        out: dict[bytes, tuple[int, int]] = {}
        for i in range(0, len(keys), _IN_MAX):
            chunk = keys[i : i + _IN_MAX]
            size = 1 << (len(chunk) - 1).bit_length()
            chunk += chunk[-1:] * (size - len(chunk))
            for key, url_id, depth in self._db.execute(_KNOWN_SQL[size], chunk):
                out[key] = (url_id, depth)
        return out

    def _write_new(self, pending: dict[bytes, list[Any]], now: float) -> int:
        """Insert the admitted new URLs and count them in their hosts' admitted."""
        if not pending:
            return 0
        self._db.executemany(
            f"INSERT INTO urls (url_key, url, host, depth, redirects, via, state, discovered_at)"
            f" VALUES (?,?,?,?,?,?,{int(URLState.DISCOVERED)},?)",
            [(key, *row, now) for key, row in pending.items()],
        )
        per_host: dict[str, int] = {}
        for row in pending.values():
            per_host[row[1]] = per_host.get(row[1], 0) + 1
        self._db.executemany(
            "INSERT INTO hosts (host, admitted) VALUES (?, ?)"
            " ON CONFLICT(host) DO UPDATE SET admitted = admitted + excluded.admitted",
            per_host.items(),
        )
        if self.bloom is not None:
            for key in pending:
                self.bloom.add(key)
        n = len(pending)
        pending.clear()
        return n

    def _lower_depth(
        self, url_id: int, depth: int, max_per_host: int | None, now: float, max_depth: int | None
    ) -> int:
        """A URL was reached by a shorter path: lower its depth and, if it was already fetched,
        its descendants' (links once cut by max_depth may now be admitted). Hosts are crawled in
        parallel, so discovery order is not BFS order; this keeps max_depth meaning BFS depth."""
        stack = [(url_id, depth)]
        new = 0  # descendants admitted now (returned: they count as discovered)
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
                elif self._insert([(url, host, d + delta, redirects, via)], max_per_host, now, max_depth):
                    new += 1
                    with self._changed_lock:  # a host the caller's links may not name
                        self._changed[host] = 0.0
        return new

    @_store_op("add")
    def _add(self, urls: list[NewURL], max_per_host: int | None, now: float, max_depth: int | None) -> int:
        return self._insert(_rows(urls), max_per_host, now, max_depth) if urls else 0

    @_store_op("claim")
    def _claim(self, host: str, owner: str, lease_seconds: float, now: float) -> URLRecord | None:
        rows = self._db.execute(_CLAIM_SQL, (owner, now + lease_seconds, host, now)).fetchall()
        if not rows:
            return None
        url_id, url, host, depth, redirects, via, attempts = rows[0]
        return URLRecord(url_id, url, host, depth, redirects, via, URLState.SCHEDULED, attempts)

    @_store_op("claim")
    def _claim_start(
        self, host: str, owner: str, lease_seconds: float, now: float, rule: ClaimRule | None
    ) -> Claimed:
        """claim, then the rule's choice for the URL claimed, in one operation (aclaim_start)."""
        rec = self._claim(host, owner, lease_seconds, now)
        if rec is None:
            return Claimed(None, ready_at=self._next_ready_at(host))
        go = rule(rec) if rule is not None else False
        if go is None:
            self._release(rec.id)
            return Claimed(rec, released=True)
        if go:
            return Claimed(rec, started=self._start(rec.id, owner, lease_seconds, now))
        return Claimed(rec)

    @_store_op("start")
    def _start(self, url_id: int, owner: str, lease_seconds: float, now: float) -> bool:
        cur = self._db.execute(
            "UPDATE urls SET state=?, attempts=attempts+1, lease_until=?"
            " WHERE id=? AND state=? AND lease_owner=?",
            (int(URLState.FETCHING), now + lease_seconds, url_id, int(URLState.SCHEDULED), owner),
        )
        return cur.rowcount == 1

    @_store_op("finish")
    def _finish(self, f: Finish) -> int:
        o = f.outcome
        assert o.state in (URLState.FETCHED, URLState.FAILED)
        # A URL already final is not written: a second finish (at-least-once fetch) changes nothing.
        row = self._db.execute(
            _FINISH_SQL, (int(o.state), o.status, o.content_sha256, o.error, o.fetched_at, f.url_id)
        ).fetchall()
        if not row or not f.new_urls:
            return 0
        if f.max_depth is None:
            return self._insert(_rows(f.new_urls), f.max_per_host, f.now)
        # With a depth limit, remember every edge (even the ones cut by the limit) so that a
        # later, shorter path to this page can re-derive its descendants' depths.
        depth_now = row[0][0]
        base = depth_now if f.parent_depth is None else f.parent_depth
        self._db.executemany(
            "INSERT INTO edges (src, url, host, delta, redirects, via) VALUES (?,?,?,?,?,?)",
            [(f.url_id, u.url, u.host, u.depth - base, u.redirects, u.via) for u in f.new_urls],
        )
        shift = depth_now - base
        rows = [(u.url, u.host, u.depth + shift, u.redirects, u.via) for u in f.new_urls]
        return self._insert(rows, f.max_per_host, f.now, f.max_depth)

    @_store_op("finish")
    def _finish_page(self, f: Finish, content_known: bool) -> tuple[int, bool]:
        """first_with_content and finish in one operation (afinish_page)."""
        duplicate = False
        sha = f.outcome.content_sha256
        if sha is not None and not content_known:
            duplicate = self._first_with_content(sha, f.url_id) != f.url_id
        return self._finish(f), duplicate

    @_store_op("retry")
    def _retry(self, url_id: int, not_before: float, error: str, status: int | None) -> None:
        self._db.execute(
            f"UPDATE urls SET state=?, not_before=?, error=?, status=?, lease_owner=NULL,"
            f" lease_until=NULL"
            f" WHERE id=? AND state IN ({_LEASED})",
            (int(URLState.RETRYABLE), not_before, error, status, url_id),
        )

    @_store_op("release")
    def _release(self, url_id: int) -> None:
        self._db.execute(
            f"UPDATE urls SET state=CASE WHEN attempts>0 THEN ? ELSE ? END,"
            f" lease_owner=NULL, lease_until=NULL WHERE id=? AND state IN ({_LEASED})",
            (int(URLState.RETRYABLE), int(URLState.DISCOVERED), url_id),
        )

    @_store_op("expire_leases")
    def _expire_leases(self, now: float) -> int:
        cur = self._db.execute(
            f"UPDATE urls SET state=CASE WHEN attempts>0 THEN ? ELSE ? END,"
            f" lease_owner=NULL, lease_until=NULL WHERE state IN ({_LEASED}) AND lease_until<?",
            (int(URLState.RETRYABLE), int(URLState.DISCOVERED), now),
        )
        return cur.rowcount

    def _release_owner(self, owner: str) -> int:
        cur = self._db.execute(
            f"UPDATE urls SET state=CASE WHEN attempts>0 THEN ? ELSE ? END,"
            f" lease_owner=NULL, lease_until=NULL WHERE state IN ({_LEASED}) AND lease_owner=?",
            (int(URLState.RETRYABLE), int(URLState.DISCOVERED), owner),
        )
        return cur.rowcount

    def _pending_hosts(self) -> list[tuple[str, float]]:
        # host_ready names the hosts (a counter per host); the partial index urls_ready gives
        # each one's earliest not_before in one index seek.
        return [
            (h, t)
            for h, t in self._db.execute(
                f"SELECT h.host, (SELECT MIN(not_before) FROM urls"
                f" WHERE host=h.host AND state IN ({_READY})) FROM host_ready h WHERE h.n > 0"
            )
            if t is not None
        ]

    def _next_ready_at(self, host: str) -> float | None:
        row = self._db.execute(
            f"SELECT MIN(not_before) FROM urls WHERE host=? AND state IN ({_READY})", (host,)
        ).fetchone()
        return row[0] if row else None

    def _earliest_lease_expiry(self) -> float | None:
        row = self._db.execute(f"SELECT MIN(lease_until) FROM urls WHERE state IN ({_LEASED})").fetchone()
        return row[0] if row else None

    @_store_op("first_with_content")
    def _first_with_content(self, sha256: str, url_id: int) -> int:
        first = self._db.execute(
            "INSERT INTO content (sha256, url_id) VALUES (?, ?) ON CONFLICT DO NOTHING RETURNING url_id",
            (sha256, url_id),
        ).fetchall()
        if first:  # this body's first URL
            return int(first[0][0])
        row = self._db.execute("SELECT url_id FROM content WHERE sha256=?", (sha256,)).fetchone()
        return int(row[0])

    def _counts(self) -> dict[str, int]:
        out = {s.name: 0 for s in URLState}
        for state, n in self._db.execute("SELECT state, n FROM state_counts"):
            out[URLState(state).name] = n
        return out

    def _host_counts(self, host: str) -> dict[str, int]:
        out = {s.name: 0 for s in URLState}
        for state, n in self._db.execute(
            "SELECT state, COUNT(*) FROM urls WHERE host=? GROUP BY state", (host,)
        ):
            out[URLState(state).name] = n
        return out

    def _hosts(self) -> list[str]:
        return [h for (h,) in self._db.execute("SELECT host FROM hosts ORDER BY host")]

    @_store_op("set_meta")
    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    # -- FrontierStore (blocking callers) ------------------------------------------------------
    def add(
        self, urls: list[NewURL], *, max_per_host: int | None = None, now: float, max_depth: int | None = None
    ) -> int:
        return int(self._call(self._add, urls, max_per_host, now, max_depth, durable=True))

    def claim(self, host: str, owner: str, lease_seconds: float, now: float) -> URLRecord | None:
        rec: URLRecord | None = self._call(self._claim, host, owner, lease_seconds, now)
        return rec

    def start(self, url_id: int, owner: str, lease_seconds: float, now: float) -> bool:
        return bool(self._call(self._start, url_id, owner, lease_seconds, now))

    def finish(self, f: Finish) -> int:
        return int(self._call(self._finish, f, durable=True))

    def retry(self, url_id: int, not_before: float, error: str, status: int | None = None) -> None:
        self._call(self._retry, url_id, not_before, error, status, durable=True)

    def release(self, url_id: int) -> None:
        self._call(self._release, url_id)

    def expire_leases(self, now: float) -> int:
        return int(self._call(self._expire_leases, now))

    def release_owner(self, owner: str) -> int:
        return int(self._call(self._release_owner, owner))

    def changed_hosts(self) -> list[tuple[str, float]]:
        """Hosts given URLs by a depth re-derivation since the last call (the engine schedules
        the hosts of a page's own links itself); one whose insert a failed commit took back is
        only scheduled for nothing."""
        with self._changed_lock:
            changed, self._changed = self._changed, {}
        return list(changed.items())

    def pending_hosts(self) -> list[tuple[str, float]]:
        hosts: list[tuple[str, float]] = self._call(self._pending_hosts)
        return hosts

    def next_ready_at(self, host: str) -> float | None:
        at: float | None = self._call(self._next_ready_at, host)
        return at

    def earliest_lease_expiry(self) -> float | None:
        at: float | None = self._call(self._earliest_lease_expiry)
        return at

    def first_with_content(self, sha256: str, url_id: int) -> int:
        return int(self._call(self._first_with_content, sha256, url_id))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = self._call(self._counts)
        return out

    def host_counts(self, host: str) -> dict[str, int]:
        out: dict[str, int] = self._call(self._host_counts, host)
        return out

    def hosts(self) -> list[str]:
        out: list[str] = self._call(self._hosts)
        return out

    def set_meta(self, key: str, value: str) -> None:
        self._call(self._set_meta, key, value, durable=True)

    def close(self) -> None:
        """Commit what is pending, then close the connection (the store thread ends)."""
        if self._closing:
            return
        self._closing = True
        if self._outgoing:  # (called on the loop that produced them, after the crawl)
            self._hand_over()
        self._queue.put(_CLOSE)
        self._thread.join()

    # -- FrontierStore (the event loop: the store thread's answer, awaited) -------------------
    async def aclaim(self, host: str, owner: str, lease_seconds: float, now: float) -> URLRecord | None:
        rec: URLRecord | None = await self._acall(self._claim, host, owner, lease_seconds, now)
        return rec

    claim_starts = True  # the politeness gate is the engine's own (gate_host: the no-op default)

    async def aclaim_start(
        self, host: str, owner: str, lease_seconds: float, now: float, rule: ClaimRule | None = None
    ) -> Claimed:
        # One round trip for the claim and its start. A start is durable before its request
        # leaves, as astart's: then the answer waits for the commit, made at once (urgent).
        claimed: Claimed = await self._acall(
            self._claim_start, host, owner, lease_seconds, now, rule, durable=_started, urgent=True
        )
        return claimed

    async def astart(self, url_id: int, owner: str, lease_seconds: float, now: float) -> bool:
        # The request leaves only once its lease is on disk, and with it everything before it in
        # the transaction (the finish that found this URL): no fetch rests on a write that a
        # failed commit could still take back. Committed at once, with whatever waits with it.
        return bool(
            await self._acall(self._start, url_id, owner, lease_seconds, now, durable=True, urgent=True)
        )

    async def afinish(self, f: Finish) -> int:
        return int(await self._acall(self._finish, f, durable=True))

    async def afinish_page(self, f: Finish, *, content_known: bool = False) -> tuple[int, bool]:
        new, duplicate = await self._acall(self._finish_page, f, content_known, durable=True)
        return int(new), bool(duplicate)

    async def aretry(self, url_id: int, not_before: float, error: str, status: int | None = None) -> None:
        await self._acall(self._retry, url_id, not_before, error, status, durable=True)

    async def arelease(self, url_id: int) -> None:
        await self._acall(self._release, url_id)

    async def aexpire_leases(self, now: float) -> int:
        return int(await self._acall(self._expire_leases, now))

    async def anext_ready_at(self, host: str) -> float | None:
        at: float | None = await self._acall(self._next_ready_at, host)
        return at

    async def afirst_with_content(self, sha256: str, url_id: int) -> int:
        return int(await self._acall(self._first_with_content, sha256, url_id))

    async def acounts(self) -> dict[str, int]:
        out: dict[str, int] = await self._acall(self._counts)
        return out

    async def aquiescent(self) -> bool:
        return await self._acall(self._earliest_lease_expiry) is None


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
