"""SQLite frontier store: state machine, exact dedup, leases, idempotent writes, durability."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from services.crawler.store import Finish, NewURL, Outcome, URLState
from services.crawler.store_sqlite import SQLiteStore


def _u(path: str, host: str = "a.test", depth: int = 0) -> NewURL:
    return NewURL(f"http://{host}{path}", host, depth)


def test_exact_dedup_and_per_host_cap(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    assert store.add([_u("/a"), _u("/b"), _u("/a")], now=0) == 2
    assert store.add([_u("/a"), _u("/c"), _u("/d")], max_per_host=3, now=0) == 1
    assert store.counts()["DISCOVERED"] == 3


def test_claim_orders_by_depth_and_moves_through_states(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.add([_u("/deep", depth=2), _u("/shallow", depth=0), _u("/other", host="b.test")], now=0)
    rec = store.claim("a.test", "w1", 10, now=100)
    assert rec is not None and rec.url.endswith("/shallow") and rec.state is URLState.SCHEDULED
    assert store.start(rec.id, "w1", 10, now=100)
    assert not store.start(rec.id, "w2", 10, now=100)  # another owner cannot start it
    new = store.finish(Finish(rec.id, Outcome(URLState.FETCHED, status=200), [_u("/x", depth=1)], now=101))
    assert new == 1
    counts = store.counts()
    assert counts["FETCHED"] == 1 and counts["DISCOVERED"] == 3
    # finishing again (an at-least-once refetch) changes nothing and adds nothing
    assert store.finish(Finish(rec.id, Outcome(URLState.FAILED), [_u("/y")], now=102)) == 0
    assert store.counts()["FETCHED"] == 1 and store.counts()["FAILED"] == 0


def test_expired_lease_hands_the_url_back(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.add([_u("/a")], now=0)
    rec = store.claim("a.test", "dead-worker", 5, now=100)
    assert rec is not None
    store.start(rec.id, "dead-worker", 5, now=100)
    assert store.claim("a.test", "w2", 5, now=101) is None
    assert store.expire_leases(now=104) == 0
    assert store.expire_leases(now=106) == 1
    again = store.claim("a.test", "w2", 5, now=106)
    assert again is not None and again.id == rec.id and again.attempts == 1


def test_retry_waits_until_not_before(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.add([_u("/a")], now=0)
    rec = store.claim("a.test", "w", 5, now=10)
    assert rec is not None and store.start(rec.id, "w", 5, now=10)
    store.retry(rec.id, not_before=20, error="HTTP 503", status=503)
    assert store.counts()["RETRYABLE"] == 1
    assert store.claim("a.test", "w", 5, now=15) is None
    assert store.next_ready_at("a.test") == 20
    assert store.pending_hosts() == [("a.test", 20)]
    assert store.claim("a.test", "w", 5, now=20) is not None


def test_content_dedup_remembers_the_first_url(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.sqlite")
    assert store.first_with_content("ab" * 32, 7) == 7
    assert store.first_with_content("ab" * 32, 9) == 7
    assert store.first_with_content("ab" * 32, 7) == 7  # idempotent for the first URL itself


_WRITER = textwrap.dedent(
    """
    import sys
    from services.crawler.store import Finish, NewURL, Outcome, URLState
    from services.crawler.store_sqlite import SQLiteStore
    store = SQLiteStore(sys.argv[1])
    i = 0
    while True:
        rec = store.claim("a.test", "w", 60, now=0)
        if rec is None:
            links = [NewURL(f"http://a.test/{i}-{k}", "a.test", 1) for k in range(5)]
            store.add(links, now=0)
            i += 1
            continue
        store.start(rec.id, "w", 60, now=0)
        links = [NewURL(f"http://a.test/{rec.id}/{k}", "a.test", 1) for k in range(3)]
        store.finish(Finish(rec.id, Outcome(URLState.FETCHED, status=200), links, now=0))
        print(rec.id, flush=True)
    """
)


def test_sigkill_mid_write_loses_no_committed_transition(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    reported = [int(proc.stdout.readline()) for _ in range(300)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = SQLiteStore(db)
    # every finish the writer reported (it printed after the commit) is there, with its links
    for url_id in reported:
        row = store._db.execute("SELECT state FROM urls WHERE id=?", (url_id,)).fetchone()
        assert row[0] == URLState.FETCHED
        n = store._db.execute(
            "SELECT COUNT(*) FROM urls WHERE url LIKE ?", (f"http://a.test/{url_id}/%",)
        ).fetchone()
        assert n[0] == 3
    assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_bloom_filter_in_front_never_changes_an_answer(tmp_path: Path) -> None:
    import random

    rng = random.Random(7)
    batches = [[_u(f"/{rng.randrange(3000)}", depth=rng.randrange(4)) for _ in range(200)] for _ in range(20)]
    plain = SQLiteStore(tmp_path / "plain.sqlite")
    bloomed = SQLiteStore(tmp_path / "bloom.sqlite", bloom_capacity=5000)
    for batch in batches:
        assert plain.add(batch, now=0) == bloomed.add(batch, now=0)
    assert plain.counts() == bloomed.counts()
    assert bloomed.bloom_skips > 0  # the filter did save lookups
    bloomed.close()
    reopened = SQLiteStore(tmp_path / "bloom.sqlite", bloom_capacity=5000)  # rebuilt from the store
    assert all(reopened.add(batch, now=0) == 0 for batch in batches)


def test_bloom_false_positive_rate_is_near_its_target() -> None:
    from services.crawler.bloom import BloomFilter
    from services.crawler.store import url_key

    bloom = BloomFilter(10_000, error_rate=0.01)
    for i in range(10_000):
        bloom.add(url_key(f"http://in.test/{i}"))
    assert all(url_key(f"http://in.test/{i}") in bloom for i in range(10_000))  # no false negatives
    false_pos = sum(url_key(f"http://out.test/{i}") in bloom for i in range(20_000)) / 20_000
    assert false_pos < 0.02
    assert bloom.memory_bytes < 13_000  # ~9.6 bits per URL instead of a 16-byte digest


def test_a_shorter_path_found_later_lowers_depths_and_admits_cut_links(tmp_path: Path) -> None:
    """max_depth means BFS depth even when hosts are crawled out of BFS order."""
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.add([_u("/far", depth=3)], now=0, max_depth=3)
    rec = store.claim("a.test", "w", 10, now=0)
    assert rec is not None and store.start(rec.id, "w", 10, now=0)
    # /far is fetched at depth 3: its link to /child (depth 4) is over the limit and not admitted
    assert (
        store.finish(
            Finish(
                rec.id,
                Outcome(URLState.FETCHED, status=200),
                [_u("/child", depth=4)],
                max_depth=3,
                parent_depth=3,
                now=0,
            )
        )
        == 0
    )
    assert store.counts()["DISCOVERED"] == 0
    # then a page at depth 0 links to /far: /far is now depth 1, so /child (depth 2) gets in
    store.add([_u("/far", depth=1)], now=0, max_depth=3)
    row = store._db.execute("SELECT depth FROM urls WHERE url='http://a.test/child'").fetchone()
    assert row == (2,)
    assert store._db.execute("SELECT depth FROM urls WHERE url='http://a.test/far'").fetchone() == (1,)


def test_a_link_admitted_by_a_shorter_path_names_its_host_to_the_engine(tmp_path: Path) -> None:
    """The cut link re-admitted by a depth lowering may be of a host none of the new page's links
    name: the store counts it as new and names its host in changed_hosts (the engine schedules
    those), else the crawl could end with it ready and never fetched."""
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.add([_u("/far", depth=3)], now=0, max_depth=3)
    rec = store.claim("a.test", "w", 10, now=0)
    assert rec is not None and store.start(rec.id, "w", 10, now=0)
    links = [_u("/child", host="x.test", depth=4)]  # over the limit: cut, its edge kept
    assert store.finish(Finish(rec.id, Outcome(URLState.FETCHED, status=200), links, max_depth=3, now=0)) == 0
    assert store.changed_hosts() == []
    assert store.add([_u("/far", depth=1)], now=0, max_depth=3) == 1  # /child of x.test, depth 2
    assert store.changed_hosts() == [("x.test", 0.0)]
    assert store.changed_hosts() == []  # drained
    assert store.pending_hosts() == [("x.test", 0.0)]


# Several pages at once through the engine's path (the store thread, group commits): claims and
# starts ride uncommitted with the finishes, some URLs are retried, some fail. A line is printed
# only once the finish (or retry) that it reports has returned, i.e. was committed.
_GROUP_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from services.crawler.store import Finish, NewURL, Outcome, URLState
    from services.crawler.store_sqlite import SQLiteStore

    async def worker(store, w):
        i = 0
        while True:
            host = f"h{(w + i) % 7}.test"
            i += 1
            rec = await store.aclaim(host, "w", 60, now=0)
            if rec is None:
                await asyncio.to_thread(
                    store.add, [NewURL(f"http://{host}/{w}-{i}-{k}", host, 1) for k in range(4)], now=0
                )
                continue
            await store.astart(rec.id, "w", 60, now=0)
            if rec.id % 11 == 0 and rec.attempts == 0:
                await store.aretry(rec.id, 0.0, "HTTP 503", 503)
                print("R", rec.id, flush=True)
                continue
            state = URLState.FAILED if rec.id % 5 == 0 else URLState.FETCHED
            links = [NewURL(f"http://{host}/{rec.id}/{k}", host, 1) for k in range(3)]
            await store.afinish(Finish(rec.id, Outcome(state, status=200), links, now=0))
            print("F", rec.id, int(state), flush=True)

    async def main():
        store = SQLiteStore(sys.argv[1])
        await asyncio.gather(*(worker(store, w) for w in range(16)))

    asyncio.run(main())
    """
)


def test_counts_stay_exact_across_kill_9_with_group_commits(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "s.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    proc = subprocess.Popen(
        [sys.executable, "-c", _GROUP_WRITER, str(db)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    finished: dict[int, int] = {}
    retried: set[int] = set()
    try:
        while len(finished) < 400:  # bounded: the child writes forever, a dead child ends the loop
            line = proc.stdout.readline()
            assert line, "the writer died"
            kind, url_id, *state = line.split()
            if kind == "F":
                finished[int(url_id)] = int(state[0])
            else:
                retried.add(int(url_id))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the truth, by scanning the table from a connection of the test's own
    raw = sqlite3.connect(db)
    truth = {URLState(s).name: n for s, n in raw.execute("SELECT state, COUNT(*) FROM urls GROUP BY state")}
    ready = dict(raw.execute("SELECT host, SUM(state IN (0, 5)) FROM urls GROUP BY host"))
    states = dict(raw.execute("SELECT id, state FROM urls"))
    raw.close()
    store = SQLiteStore(db)
    try:
        counts = store.counts()
        assert {k: v for k, v in counts.items() if v} == truth
        assert sum(counts.values()) == len(states)
        assert dict(store._call(lambda: list(store._db.execute("SELECT host, n FROM host_ready")))) == ready
        assert sorted(store.pending_hosts()) == sorted((h, 0.0) for h, n in ready.items() if n)
        # every finish that returned was committed, with its outcome
        for url_id, state in finished.items():
            assert states[url_id] == state
        for url_id in retried:  # the retry was committed: never DISCOVERED again (later, anything else)
            assert states[url_id] != URLState.DISCOVERED
        # the dead run's leases (committed or not) come back at once, and the counts follow
        store.release_owner("w")
        counts = store.counts()
        assert counts["SCHEDULED"] == counts["FETCHING"] == 0
        assert sum(counts.values()) == len(states)
        assert store.commits > 0
    finally:
        store.close()


async def test_group_commit_holds_many_operations_per_transaction(tmp_path: Path) -> None:
    import asyncio

    store = SQLiteStore(tmp_path / "s.sqlite", flush_interval=0.05)
    try:
        store.add([_u(f"/{i}", host=f"h{i}.test") for i in range(200)], now=0)
        commits, ops = store.commits, store.ops_committed

        async def page(i: int) -> int:
            rec = await store.aclaim(f"h{i}.test", "w", 60, now=1)
            assert rec is not None and await store.astart(rec.id, "w", 60, now=1)
            return await store.afinish(
                Finish(
                    rec.id, Outcome(URLState.FETCHED, status=200), [_u(f"/{i}/x", host=f"h{i}.test")], now=2
                )
            )

        assert await asyncio.gather(*(page(i) for i in range(200))) == [1] * 200
        # 600 operations in far fewer commits than the 600 transactions they were before
        assert 1 <= store.commits - commits < 100 and store.ops_committed - ops == 600
        expected = {s.name: 0 for s in URLState} | {"DISCOVERED": 200, "FETCHED": 200}
        assert store.counts() == expected
    finally:
        store.close()


def test_counters_of_a_file_from_before_them_are_counted_on_open(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "s.sqlite"
    store = SQLiteStore(db)
    store.add([_u("/a"), _u("/b"), _u("/c", host="b.test")], now=0)
    rec = store.claim("a.test", "w", 60, now=0)
    assert rec is not None
    store.close()
    raw = sqlite3.connect(db)  # as an older version left it: no counters, no triggers
    for name in ("urls_counted_ins", "urls_counted_upd", "urls_counted_del"):
        raw.execute(f"DROP TRIGGER {name}")
    raw.execute("DELETE FROM state_counts")
    raw.execute("DELETE FROM host_ready")
    raw.execute("DELETE FROM meta WHERE key='counters'")
    raw.commit()
    raw.close()
    store = SQLiteStore(db)
    try:
        assert store.counts()["DISCOVERED"] == 2 and store.counts()["SCHEDULED"] == 1
        assert sorted(h for h, _ in store.pending_hosts()) == ["a.test", "b.test"]
        store.release(rec.id)
        assert store.counts()["DISCOVERED"] == 3
    finally:
        store.close()


def test_a_file_with_the_old_indexes_gets_the_new_ones(tmp_path: Path) -> None:
    """A file written before session 8 (an index by host, state, depth, id; one by state and lease
    over every URL) is opened with the new ones: an index by host alone, and one by lease over the
    leased URLs only; the leases still run out and the host counts still answer."""
    import sqlite3

    db = tmp_path / "s.sqlite"
    store = SQLiteStore(db)
    store.add([_u("/a"), _u("/b")], now=0)
    rec = store.claim("a.test", "w", 5, now=100)
    assert rec is not None and store.start(rec.id, "w", 5, now=100)
    store.close()
    raw = sqlite3.connect(db, isolation_level=None)
    raw.executescript(
        "DROP INDEX urls_host; DROP INDEX urls_leased;"
        " CREATE INDEX urls_host_queue ON urls (host, state, depth, id);"
        " CREATE INDEX urls_state_lease ON urls (state, lease_until);"
    )
    raw.close()
    store = SQLiteStore(db)
    try:
        names = {n for (n,) in store._call(lambda: list(store._db.execute("SELECT name FROM sqlite_master")))}
        assert {"urls_host", "urls_leased", "urls_ready"} <= names
        assert not names & {"urls_host_queue", "urls_state_lease"}
        assert store.host_counts("a.test")["FETCHING"] == 1
        assert store.earliest_lease_expiry() == 105
        assert store.expire_leases(now=106) == 1
        assert store.host_counts("a.test") == {
            **dict.fromkeys(store.host_counts("a.test"), 0),
            "DISCOVERED": 1,
            "RETRYABLE": 1,
        }
    finally:
        store.close()
