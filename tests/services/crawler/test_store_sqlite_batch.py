"""SQLite store: a batch of links is admitted as if one link at a time (the known ones looked up in
one statement, the new ones written in one executemany), with and without the Bloom filter."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from services.crawler.store import Finish, NewURL, Outcome, URLState
from services.crawler.store_sqlite import SQLiteStore


def _u(path: str, host: str = "a.test", depth: int = 0) -> NewURL:
    return NewURL(f"http://{host}{path}", host, depth)


def _reference(batches: list[list[NewURL]], max_per_host: int | None, max_depth: int | None) -> tuple:
    """What add() answers and keeps, one link at a time (no URL fetched: a lower depth is only
    written down)."""
    depth: dict[str, int] = {}
    admitted: dict[str, int] = {}
    order: list[str] = []
    answers = []
    for batch in batches:
        new = 0
        for u in batch:
            if u.url in depth:
                depth[u.url] = min(depth[u.url], u.depth)
                continue
            if max_depth is not None and u.depth > max_depth:
                continue
            if max_per_host is not None and admitted.get(u.host, 0) >= max_per_host:
                continue
            admitted[u.host] = admitted.get(u.host, 0) + 1
            depth[u.url] = u.depth
            order.append(u.url)
            new += 1
        answers.append(new)
    return answers, [(url, depth[url]) for url in order], admitted


_links = st.lists(
    st.builds(
        _u,
        st.sampled_from([f"/{i}" for i in range(12)]),
        st.sampled_from(["a.test", "b.test", "c.test"]),
        st.integers(0, 4),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(_links, min_size=1, max_size=4),
    max_per_host=st.one_of(st.none(), st.integers(1, 6)),
    max_depth=st.one_of(st.none(), st.integers(0, 4)),
    bloom=st.booleans(),
)
def test_a_batch_is_admitted_as_one_link_at_a_time(
    batches: list[list[NewURL]], max_per_host: int | None, max_depth: int | None, bloom: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "s.sqlite", bloom_capacity=1000 if bloom else None)
        try:
            answers = [store.add(b, max_per_host=max_per_host, now=0, max_depth=max_depth) for b in batches]
            rows = store._call(
                lambda: store._db.execute("SELECT url, depth FROM urls ORDER BY id").fetchall()
            )
            hosts = dict(
                store._call(lambda: store._db.execute("SELECT host, admitted FROM hosts").fetchall())
            )
            assert (answers, rows, hosts) == _reference(batches, max_per_host, max_depth)
            assert store.counts()["DISCOVERED"] == len(rows)
        finally:
            store.close()


def test_a_shorter_path_in_the_middle_of_a_batch(tmp_path: Path) -> None:
    """A link known deeper, fetched, in the middle of a page's links: lowering it admits its cut
    child, which the same batch names again later (it is not inserted twice), and the links
    before and after it are admitted too."""
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.add([_u("/far", depth=3)], now=0, max_depth=3)
    rec = store.claim("a.test", "w", 10, now=0)
    assert rec is not None and store.start(rec.id, "w", 10, now=0)
    cut = Finish(rec.id, Outcome(URLState.FETCHED, status=200), [_u("/child", depth=4)], max_depth=3, now=0)
    assert store.finish(cut) == 0
    links = [_u("/before", depth=1), _u("/far", depth=1), _u("/child", depth=2), _u("/after", depth=1)]
    assert store.add(links, now=0, max_depth=3) == 3  # /before, /child (by /far's edge), /after
    depths = dict(store._db.execute("SELECT url, depth FROM urls").fetchall())
    assert depths == {
        "http://a.test/far": 1,
        "http://a.test/before": 1,
        "http://a.test/child": 2,
        "http://a.test/after": 1,
    }
    assert store.counts()["DISCOVERED"] == 3
    store.close()


def test_a_finish_admits_its_links_at_the_depth_it_has_now(tmp_path: Path) -> None:
    """The links' depths are relative to the depth the page was claimed at: lowered since, they
    come in lower (the outcome and the page's depth in one statement)."""
    store = SQLiteStore(tmp_path / "s.sqlite")
    store.add([_u("/p", depth=2)], now=0, max_depth=5)
    rec = store.claim("a.test", "w", 10, now=0)
    assert rec is not None and store.start(rec.id, "w", 10, now=0)
    store.add([_u("/p", depth=1)], now=0, max_depth=5)  # lowered while it was being fetched
    links = [_u("/x", depth=3), _u("/y", host="b.test", depth=3)]
    done = Finish(rec.id, Outcome(URLState.FETCHED, status=200), links, max_depth=5, parent_depth=2, now=0)
    assert store.finish(done) == 2
    depths = dict(store._db.execute("SELECT url, depth FROM urls").fetchall())
    assert depths["http://a.test/x"] == 2 and depths["http://b.test/y"] == 2
    assert store.finish(done) == 0  # final already: nothing written again
    assert store.counts() == {**dict.fromkeys(store.counts(), 0), "FETCHED": 1, "DISCOVERED": 2}
    store.close()
