"""A full disk pauses the crawl, leaves nothing half-written, and the crawl resumes by itself.

Simulated deterministically (writers that refuse a given number of writes with ENOSPC /
SQLITE_FULL), and for real on a small tmpfs when running as root.
"""

from __future__ import annotations

import errno
import io
import os
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from warcio.archiveiterator import ArchiveIterator

from services.crawler import engine, metrics
from services.crawler.engine import Crawl, CrawlState
from services.crawler.fetcher import Fetcher, FetchResult, ResolverMap, ResolveRule
from services.crawler.settings import CrawlConfig
from services.crawler.sinks import JsonlSink
from services.crawler.storage import is_disk_full
from services.crawler.store_sqlite import SQLiteStore
from services.crawler.warc import WarcOutput

from .minisite import MiniSite

FULL = "database or disk is full"


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "_STORAGE_RETRY_S", (0.01, 0.05))


def storage_errors() -> float:
    return metrics.STORAGE_ERRORS.labels("disk_full")._value.get()


def site(n: int) -> MiniSite:
    s = MiniSite()
    s.page("a.sim.test", "/", "".join(f'<a href="/{i}">x</a>' for i in range(n)))
    for i in range(n):
        s.page("a.sim.test", f"/{i}", f"<p>page {i}</p>")
    return s


def config() -> CrawlConfig:
    return CrawlConfig.model_validate(
        {"seeds": ["http://a.sim.test/"], "scope": ["*.sim.test"], "politeness": {"min_delay": 0.0}}
    )


def test_is_disk_full() -> None:
    assert is_disk_full(sqlite3.OperationalError(FULL))
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_disk_full(OSError(errno.EACCES, "denied"))
    assert not is_disk_full(sqlite3.DatabaseError("database disk image is malformed"))


async def test_disk_full_pauses_the_crawl_and_it_resumes_with_no_page_lost_or_doubled(tmp_path: Path) -> None:
    seen: list[tuple[str, str | None]] = []

    class FullFor(SQLiteStore):
        refusals = 4

        def _finish(self, *args: Any, **kwargs: Any) -> int:  # (on the store thread)
            if self.refusals:
                self.refusals -= 1
                seen.append((crawl.state.value, crawl.paused_reason))
                raise sqlite3.OperationalError(FULL)
            return super()._finish(*args, **kwargs)

    before = storage_errors()
    s = site(20)
    store = FullFor(tmp_path / "s.sqlite")
    with s.serve() as port:
        rules = [ResolveRule.parse(f"*.sim.test=127.0.0.1:{port}")]
        async with Fetcher(config().fetch, ResolverMap(rules), config().user_agent) as fetcher:
            sink = JsonlSink(tmp_path / "pages.jsonl")
            crawl = Crawl("t", config(), store, fetcher, sink=sink, warc=WarcOutput(tmp_path / "warc", "t"))
            await crawl.run()
            await sink.close()
            assert crawl.warc is not None
            crawl.warc.close()
    assert crawl.state is CrawlState.FINISHED and crawl.error is None
    assert crawl.paused_reason is None and crawl.status()["paused_reason"] is None
    # the first refusal found the crawl running; the later ones found it paused, with the reason
    assert seen[0] == ("running", None)
    assert all(state == "paused" and reason == f"disk full: {store.path}" for state, reason in seen[1:])
    assert storage_errors() - before == 4
    assert metrics.CRAWL_PAUSED._value.get() == 0
    fetched = Counter(e.path for e in s.log if e.path != "/robots.txt")
    assert set(fetched) == {"/", *(f"/{i}" for i in range(20))} and set(fetched.values()) == {1}
    assert crawl.stats.fetched == 21 and store.counts()["FETCHED"] == 21
    lines = (tmp_path / "pages.jsonl").read_text().splitlines()
    assert len(lines) == 21  # every page emitted once, none twice
    responses = []
    for f in (tmp_path / "warc").iterdir():
        with f.open("rb") as fh:
            responses += [
                r.rec_headers.get_header("WARC-Target-URI")
                for r in ArchiveIterator(fh)
                if r.rec_type == "response"
            ]
    responses = [u for u in responses if not u.endswith("/robots.txt")]
    assert len(responses) == len(set(responses)) == 21
    assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


class ENOSPCAfter(io.RawIOBase):
    """A file that takes `room` more bytes, then refuses with ENOSPC (after a partial write)."""

    def __init__(self, fh: Any, room: int) -> None:
        self.fh, self.room = fh, room

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if len(b) > self.room:
            if self.room:
                self.fh.write(bytes(b[: self.room]))
                self.fh.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return int(self.fh.write(b))

    def tell(self) -> int:
        return int(self.fh.tell())

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        super().close()
        self.fh.close()


def result(i: int) -> FetchResult:
    body = f"<p>page {i}</p>".encode() * 50
    return FetchResult(
        url=f"http://a.sim.test/{i}",
        status=200,
        headers=[("Content-Type", "text/html")],
        body=body,
        content_type="text/html",
        charset=None,
        truncated=False,
        body_skipped=False,
        location=None,
        started_at=0.0,
        elapsed=0.0,
        request_headers=[("Host", "a.sim.test")],
    )


def test_warc_write_refused_by_a_full_disk_cuts_the_partial_record_and_rotates(tmp_path: Path) -> None:
    out = WarcOutput(tmp_path, "t")
    first = out.write(result(0))
    assert out._fh is not None and out._writer is not None
    size = out._fh.tell()
    out._fh = ENOSPCAfter(out._fh, room=100)  # type: ignore[assignment]
    out._writer.out = out._fh
    with pytest.raises(OSError) as exc:
        out.write(result(1))
    assert exc.value.errno == errno.ENOSPC
    assert (tmp_path / first).stat().st_size == size  # the partial exchange is gone
    second = out.write(result(1))  # the same write again, into a new file
    out.close()
    assert second != first
    uris = []
    for name in (first, second):
        with (tmp_path / name).open("rb") as fh:
            uris += [(r.rec_type, r.rec_headers.get_header("WARC-Target-URI")) for r in ArchiveIterator(fh)]
    assert [u for t, u in uris if t == "response"] == ["http://a.sim.test/0", "http://a.sim.test/1"]


async def test_jsonl_sink_cuts_a_partial_line_on_a_full_disk(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "p.jsonl")
    await sink.emit({"n": 0})
    good = (tmp_path / "p.jsonl").stat().st_size

    class Full(io.StringIO):
        def tell(self) -> int:
            return good

        def write(self, s: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    real = sink._fh
    with open(tmp_path / "p.jsonl", "a", encoding="utf-8") as partial:
        partial.write('{"n":1,"tru')  # what a refused write may leave behind
    sink._fh = Full()  # type: ignore[assignment]
    real.close()
    with pytest.raises(OSError):
        await sink.emit({"n": 1})
    assert (tmp_path / "p.jsonl").stat().st_size == good
    await sink.emit({"n": 1})
    await sink.close()
    assert (tmp_path / "p.jsonl").read_text().splitlines() == ['{"n":0}', '{"n":1}']


# -- for real: a 16 MiB tmpfs under the store and the WARC files (root only) --------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, timeout=10
    )
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        for args in (["umount", str(mnt)], ["umount", "-l", str(mnt)]):
            if not os.path.ismount(mnt):
                break
            subprocess.run(args, capture_output=True, timeout=10)
        assert not os.path.ismount(mnt), f"could not unmount {mnt}"


def fill(directory: Path, leave: int) -> Path:
    """Write a filler file until only about `leave` bytes are free."""
    filler = directory / "filler"
    st = os.statvfs(directory)
    size = max(0, st.f_bavail * st.f_frsize - leave)
    with filler.open("wb") as fh:
        try:
            fh.write(b"\0" * size)
        except OSError:
            pass
    return filler


async def test_a_real_full_disk_pauses_the_crawl_and_space_back_resumes_it(small_disk: Path) -> None:
    import asyncio

    from services.websim import SimConfig, WebSim, run_in_thread

    sim = WebSim(SimConfig(hosts=6, seed=3))
    seeds = sim.seeds(6)
    cfg = CrawlConfig.model_validate(
        {
            "seeds": seeds,
            "max_depth": 3,
            "politeness": {"min_delay": 0.0},
            "retry": {"base_delay": 0.05, "max_delay": 0.2},
        }
    )
    store = SQLiteStore(small_disk / "store.sqlite")
    warc = WarcOutput(small_disk / "warc", "t")
    filler = fill(small_disk, leave=96 * 1024)
    paused: dict[str, Any] = {}
    with run_in_thread(sim) as port:
        rules = [ResolveRule.parse(f"*.sim.test=127.0.0.1:{port}")]
        async with Fetcher(cfg.fetch, ResolverMap(rules), cfg.user_agent) as fetcher:
            crawl = Crawl("t", cfg, store, fetcher, warc=warc)
            task = asyncio.create_task(crawl.run())
            for _ in range(1200):  # bounded: 60 s
                if crawl.state is CrawlState.PAUSED or task.done():
                    break
                await asyncio.sleep(0.05)
            paused = crawl.status()
            filler.unlink()  # space comes back
            await asyncio.wait_for(task, timeout=120)
            warc.close()
    assert paused["state"] == "paused", paused
    assert paused["paused_reason"].startswith("disk full: "), paused
    assert crawl.state is CrawlState.FINISHED and crawl.error is None, crawl.status()
    assert crawl.paused_reason is None
    counts = store.counts()
    assert counts["DISCOVERED"] == counts["SCHEDULED"] == counts["FETCHING"] == counts["RETRYABLE"] == 0
    assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    fetched = Counter(
        (e["host"], e["path"]) for e in sim.entries() if e["kind"] != "robots" and e["status"] == 200
    )
    assert fetched and max(fetched.values()) == 1  # no page fetched twice
    uris: list[str] = []
    for f in (small_disk / "warc").iterdir():
        with f.open("rb") as fh:
            uris += [
                r.rec_headers.get_header("WARC-Target-URI")
                for r in ArchiveIterator(fh)
                if r.rec_type == "response"
            ]
    pages = [u for u in uris if not u.endswith("/robots.txt")]
    assert len(pages) == len(set(pages)) == counts["FETCHED"]  # every page archived once, none lost
    store.close()
