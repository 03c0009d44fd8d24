"""The page-event outbox against real faults: a frozen (SIGSTOP) and a killed (SIGKILL, restarted)
redis-server, a killed crawler process, a full outbox and a receiver that refuses an event.

Each event must reach the stream exactly once per event id, whatever happened in between."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from services.crawler import metrics
from services.crawler.engine import Crawl
from services.crawler.fetcher import Fetcher, ResolverMap, ResolveRule
from services.crawler.settings import CrawlConfig
from services.crawler.sinks import (
    STREAM_KEY,
    OutboxSink,
    RedisTransport,
    RejectedError,
    TransientSendError,
    event_id,
    open_sink,
)
from services.crawler.store import url_key
from services.crawler.store_sqlite import SQLiteOutbox, SQLiteStore
from services.websim import SimConfig, WebSim, run_in_thread
from tests.conftest import free_port, need_binary, wait_for_port

REPO = Path(__file__).resolve().parents[3]


def _event(i: int, crawl: str = "t") -> dict[str, Any]:
    return {
        "crawl_id": crawl,
        "url": f"http://h.sim.test/{i}",
        "final_url": f"http://h.sim.test/{i}",
        "status": 200,
        "content_type": "text/html",
        "content_sha256": f"{i:064x}",
        "text": "hello",
        "links": [],
        "canonical": None,
        "fetched_at": 1.0,
        "warc_file": None,
    }


class RedisProc:
    """A redis-server of our own that a test can freeze, kill and restart on the same port.
    With `aof`, every write is fsynced before it is answered, so a SIGKILL loses nothing acked."""

    def __init__(self, directory: Path, *, aof: bool = False) -> None:
        self.binary = need_binary("redis-server")
        self.dir = directory
        self.aof = aof
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.dir),
                *persistence,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProc]:
    r = RedisProc(tmp_path, aof=True)
    r.start()
    try:
        yield r
    finally:
        r.close()


def stream_ids(url: str) -> Counter[str]:
    """Event id -> number of stream entries carrying it (checks the event matches its id)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        entries = client.xrange(STREAM_KEY)
    finally:
        client.close()
    ids: Counter[str] = Counter()
    for _, fields in entries:
        eid = fields[b"id"].decode()
        assert event_id(json.loads(fields[b"event"])) == eid
        ids[eid] += 1
    return ids


async def until(pred: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# -- the outbox table --------------------------------------------------------------------------
def test_outbox_keeps_one_row_per_event_id_until_deleted(tmp_path: Path) -> None:
    box = SQLiteOutbox(tmp_path / "o.sqlite")
    assert box.put("a", "{}", 1.0) and box.put("b", "{}", 2.0)
    assert not box.put("a", "{}", 3.0)  # still waiting: the same event once
    assert len(box) == 2 and [r[1] for r in box.peek(10)] == ["a", "b"]
    box.delete([box.peek(1)[0][0]])
    box.close()
    box = SQLiteOutbox(tmp_path / "o.sqlite")  # reopened (a new process): the count is read back
    assert len(box) == 1 and box.peek(10)[0][1] == "b"
    assert box.oldest_age(12.0) == 10.0
    box.close()


def test_event_id_is_the_crawl_and_the_final_url() -> None:
    assert event_id(_event(1)) == event_id({**_event(1), "fetched_at": 9.0, "url": "http://other/"})
    assert event_id(_event(1)) != event_id(_event(2)) != event_id(_event(2, crawl="u"))
    assert event_id(_event(1)) == "t:" + url_key("http://h.sim.test/1").hex()


# -- Redis --------------------------------------------------------------------------------------
async def test_redis_sink_appends_to_the_stream_once_per_event_id(redis_url: str, tmp_path: Path) -> None:
    sink = open_sink(redis_url, outbox=tmp_path / "outbox.sqlite")
    assert isinstance(sink, OutboxSink)
    for i in range(5):
        await sink.emit(_event(i))
    await sink.close()
    # a resend (say the crawler died between the send and the delete) adds nothing
    transport = RedisTransport(redis_url)
    await transport.send([(event_id(_event(i)), json.dumps(_event(i))) for i in range(3)])
    assert transport.added == 0
    await transport.close()
    ids = stream_ids(redis_url)
    assert sorted(ids) == sorted(event_id(_event(i)) for i in range(5))
    assert set(ids.values()) == {1}


async def test_frozen_redis_loses_nothing_and_duplicates_nothing(
    redis_proc: RedisProc, tmp_path: Path
) -> None:
    """SIGSTOP: connections are accepted and never answered; sends time out, some reach Redis
    anyway when it thaws. Every event arrives once."""
    sink = OutboxSink(RedisTransport(redis_proc.url, timeout=0.3), SQLiteOutbox(tmp_path / "o.sqlite"))
    lost0 = metrics.EVENTS_LOST._value.get()
    for i in range(50):
        await sink.emit(_event(i))
    await until(lambda: sink.delivered == 50, "the first 50 events")
    redis_proc.signal(signal.SIGSTOP)
    try:
        for i in range(50, 200):
            await sink.emit(_event(i))
        await until(lambda: sink.failures >= 2, "two failed sends while Redis is frozen")
        assert len(sink.outbox) > 0
        assert metrics.EVENTS_BUFFERED._value.get() == len(sink.outbox)
    finally:
        redis_proc.signal(signal.SIGCONT)
    await until(lambda: len(sink.outbox) == 0, "the outbox to drain after SIGCONT")
    await sink.close()
    ids = stream_ids(redis_proc.url)
    assert sorted(ids) == sorted(event_id(_event(i)) for i in range(200))
    assert set(ids.values()) == {1}
    assert metrics.EVENTS_LOST._value.get() == lost0


async def test_killed_and_restarted_redis_loses_nothing(redis_proc: RedisProc, tmp_path: Path) -> None:
    sink = OutboxSink(
        RedisTransport(redis_proc.url, timeout=0.5), SQLiteOutbox(tmp_path / "o.sqlite"), backoff_max=0.5
    )
    for i in range(50):
        await sink.emit(_event(i))
    await until(lambda: sink.delivered == 50, "the first 50 events")
    redis_proc.kill()
    for i in range(50, 150):
        await sink.emit(_event(i))
    await until(lambda: sink.failures >= 2, "two failed sends while Redis is dead")
    assert len(sink.outbox) == 100
    redis_proc.start()  # same port, same AOF
    await until(lambda: len(sink.outbox) == 0, "the outbox to drain after the restart")
    await sink.close()
    ids = stream_ids(redis_proc.url)
    assert sorted(ids) == sorted(event_id(_event(i)) for i in range(150))
    assert set(ids.values()) == {1}


# -- bound and refusal, with a transport the test controls -----------------------------------
class GatedTransport:
    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.received: list[str] = []
        self.refuse: set[str] = set()

    async def send(self, items: Sequence[tuple[str, str]]) -> None:
        if not self.up.is_set():
            raise TransientSendError("down")
        if self.refuse & {eid for eid, _ in items}:
            raise RejectedError("HTTP 422")
        self.received += [eid for eid, _ in items]

    async def close(self) -> None:
        pass


async def test_a_full_outbox_makes_the_crawl_wait_and_drops_nothing(tmp_path: Path) -> None:
    transport = GatedTransport()
    sink = OutboxSink(transport, SQLiteOutbox(tmp_path / "o.sqlite"), max_events=10, backoff_max=0.05)
    waits0 = metrics.OUTBOX_WAITS._value.get()
    for i in range(10):
        await sink.emit(_event(i))
    blocked = asyncio.create_task(sink.emit(_event(10)))
    await until(lambda: metrics.OUTBOX_WAITS._value.get() == waits0 + 1, "the 11th emit to wait")
    assert not blocked.done() and len(sink.outbox) == 10
    transport.up.set()
    await asyncio.wait_for(blocked, timeout=30)
    await until(lambda: len(sink.outbox) == 0, "the outbox to drain")
    await sink.close()
    assert sorted(transport.received) == sorted(event_id(_event(i)) for i in range(11))


async def test_an_event_the_receiver_refuses_is_counted_lost_and_the_rest_delivered(tmp_path: Path) -> None:
    transport = GatedTransport()
    transport.up.set()
    transport.refuse = {event_id(_event(3))}
    sink = OutboxSink(transport, SQLiteOutbox(tmp_path / "o.sqlite"))
    lost0 = metrics.EVENTS_LOST._value.get()
    for i in range(8):
        sink.outbox.put(event_id(_event(i)), json.dumps(_event(i)), 1.0)  # one batch
    sink.start()
    await until(lambda: len(sink.outbox) == 0, "the outbox to drain")
    await sink.close()
    assert sorted(transport.received) == sorted(event_id(_event(i)) for i in range(8) if i != 3)
    assert sink.lost == 1 and metrics.EVENTS_LOST._value.get() == lost0 + 1


# -- a crawl against websim ---------------------------------------------------------------------
def _expected_ids(store_path: Path, crawl_id: str) -> set[str]:
    """One event per page fetched with a body: FETCHED with a content digest."""
    db = sqlite3.connect(store_path)
    try:
        rows = db.execute("SELECT url FROM urls WHERE state=3 AND content_sha256 IS NOT NULL").fetchall()
    finally:
        db.close()
    return {f"{crawl_id}:{url_key(u).hex()}" for (u,) in rows}


async def test_redis_frozen_during_a_websim_crawl_loses_no_page_event(
    redis_proc: RedisProc, tmp_path: Path
) -> None:
    sim = WebSim(SimConfig(hosts=12, seed=3))
    config = CrawlConfig.model_validate(
        {
            "seeds": sim.seeds(12),
            "scope": ["*.sim.test"],
            "max_depth": 3,
            "politeness": {"min_delay": 0.02},
            "retry": {"base_delay": 0.05, "max_delay": 0.2},
        }
    )
    store = SQLiteStore(tmp_path / "store.sqlite")
    sink = OutboxSink(RedisTransport(redis_proc.url, timeout=0.3), SQLiteOutbox(tmp_path / "store.sqlite"))
    frozen = False
    with run_in_thread(sim) as port:
        rules = [ResolveRule.parse(f"*.sim.test=127.0.0.1:{port}")]
        async with Fetcher(config.fetch, ResolverMap(rules), config.user_agent) as fetcher:
            crawl = Crawl("w", config, store, fetcher, seed=1, sink=sink)
            task = asyncio.create_task(crawl.run())
            try:
                await until(lambda: crawl.stats.pages_emitted >= 10, "10 pages")
                redis_proc.signal(signal.SIGSTOP)
                frozen = True
                emitted = crawl.stats.pages_emitted
                await until(
                    lambda: (sink.failures >= 2 and crawl.stats.pages_emitted >= emitted + 10) or task.done(),
                    "pages fetched while Redis is frozen",
                )
            finally:
                if frozen:
                    redis_proc.signal(signal.SIGCONT)
            await asyncio.wait_for(task, timeout=120)
    await until(lambda: len(sink.outbox) == 0, "the outbox to drain")
    await sink.close()
    expected = _expected_ids(tmp_path / "store.sqlite", "w")
    store.close()
    ids = stream_ids(redis_proc.url)
    assert len(expected) >= 20
    assert set(ids) == expected
    assert set(ids.values()) == {1}


def _cli(port: int, store: Path, seeds: list[str], pages_to: str) -> list[str]:
    args = [sys.executable, "-m", "services.crawler", "crawl", *seeds, "--crawl-id", "k"]
    args += ["--scope", "*.sim.test", "--resolve", f"*.sim.test=127.0.0.1:{port}", "--store", str(store)]
    args += ["--max-depth", "3", "--min-delay", "0.05", "--lease-seconds", "3", "--total-timeout", "2.5"]
    args += ["--no-progress"]
    return [*args, "--seed", "1", "--pages-to", pages_to]


def test_events_in_the_outbox_of_a_killed_crawler_are_delivered_by_the_next_run(
    redis_proc: RedisProc, tmp_path: Path
) -> None:
    sim = WebSim(SimConfig(hosts=12, seed=4))
    seeds = sim.seeds(12)
    store = tmp_path / "crawl.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: every send fails

    def waiting() -> int:
        if not store.exists():
            return 0
        db = sqlite3.connect(store)
        try:
            return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
        finally:
            db.close()

    with run_in_thread(sim) as port:
        first = subprocess.Popen(
            _cli(port, store, seeds, nobody),
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while waiting() < 15 and time.monotonic() < deadline and first.poll() is None:
                time.sleep(0.05)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        left = waiting()
        assert left >= 15
        second = subprocess.run(
            _cli(port, store, seeds, redis_proc.url),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 0, second.stderr[-2000:]
    assert waiting() == 0
    ids = stream_ids(redis_proc.url)
    assert set(ids) == _expected_ids(store, "k")
    assert set(ids.values()) == {1}


def test_the_crawler_service_sends_a_previous_process_outbox_at_start(redis_url: str, tmp_path: Path) -> None:
    """What a killed crawler service left in data_dir/outbox.sqlite goes out when the next one
    starts, before any crawl is started."""
    box = SQLiteOutbox(tmp_path / "outbox.sqlite")
    for i in range(5):
        box.put(event_id(_event(i)), json.dumps(_event(i)), 1.0)
    box.close()
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.crawler",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
            "--pages-to",
            redis_url,
            "--log-level",
            "WARNING",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=30)
        deadline = time.monotonic() + 30
        while len(stream_ids(redis_url)) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert stream_ids(redis_url) == Counter({event_id(_event(i)): 1 for i in range(5)})
    assert SQLiteOutbox(tmp_path / "outbox.sqlite").peek(10) == []
