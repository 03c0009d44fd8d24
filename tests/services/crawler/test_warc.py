"""WARC files as their users read them: warcio's ArchiveIterator over what a crawl wrote."""

from __future__ import annotations

from pathlib import Path

from warcio.archiveiterator import ArchiveIterator

from services.crawler.fetcher import FetchResult
from services.crawler.warc import WarcOutput

from .minisite import MiniSite
from .test_engine import crawl


def _records(path: Path) -> list[tuple[str, str, str | None, bytes]]:
    """(WARC version line, record type, target URI, payload) of every record, in file order."""
    out = []
    with path.open("rb") as fh:
        for rec in ArchiveIterator(fh):
            out.append(
                (
                    rec.rec_headers.protocol,
                    rec.rec_type,
                    rec.rec_headers.get_header("WARC-Target-URI"),
                    rec.content_stream().read(),
                )
            )
    return out


def _result(url: str, body: bytes) -> FetchResult:
    return FetchResult(
        url=url,
        status=200,
        headers=[("Content-Type", "text/html")],
        body=body,
        content_type="text/html",
        charset=None,
        truncated=False,
        body_skipped=False,
        location=None,
        started_at=0.0,
        elapsed=0.01,
        request_headers=[("Host", "a.sim.test"), ("User-Agent", "bot")],
    )


def test_every_file_is_warc_1_1_and_starts_with_warcinfo(tmp_path: Path) -> None:
    out = WarcOutput(tmp_path, "t", max_bytes=2048, info={"http-header-user-agent": "bot"})
    for i in range(6):
        out.write(_result(f"http://a.sim.test/{i}", b"x" * 1500))
    out.close()
    files = sorted(tmp_path.glob("*.warc.gz"))
    assert len(files) >= 2  # rotated
    seen = 0
    for path in files:
        records = _records(path)
        assert records[0][1] == "warcinfo"
        info = records[0][3].decode()
        assert "format: WARC File Format 1.1" in info and "http-header-user-agent: bot" in info
        assert {r[0] for r in records} == {"WARC/1.1"}
        kinds = [r[1] for r in records[1:]]
        assert all({kinds[i], kinds[i + 1]} == {"request", "response"} for i in range(0, len(kinds), 2))
        seen += sum(1 for r in records if r[1] == "response")
    assert seen == 6


async def test_a_crawl_archives_robots_txt_and_pages(tmp_path: Path) -> None:
    site = MiniSite()
    site.page("a.sim.test", "/robots.txt", "User-agent: *\nDisallow: /secret\n", content_type="text/plain")
    site.page("a.sim.test", "/", '<a href="/p">p</a><a href="/secret">s</a>')
    site.page("a.sim.test", "/p", "page p")
    with site.serve() as port:
        await crawl(port, tmp_path, warc=True)
    records = [r for path in sorted((tmp_path / "warc").glob("*.warc.gz")) for r in _records(path)]
    assert {r[0] for r in records} == {"WARC/1.1"}
    responses = {r[2]: r[3] for r in records if r[1] == "response"}
    assert responses["http://a.sim.test/robots.txt"] == b"User-agent: *\nDisallow: /secret\n"
    assert set(responses) == {"http://a.sim.test/robots.txt", "http://a.sim.test/", "http://a.sim.test/p"}
    requests = {r[2] for r in records if r[1] == "request"}
    assert requests == set(responses)
    assert records[0][1] == "warcinfo"
    assert "http-header-user-agent: ProvingGroundBot" in records[0][3].decode()
