"""`python -m deploy.figures` draws one crawl (the last, by default) and never overwrites a doc
figure unless asked."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deploy import figures
from deploy.figures import DEFAULT_OUT, Window, main, output_path
from deploy.topology import ROOT
from libs.service.cli import UsageError
from services.websim import SimConfig, WebSim, run_in_thread
from tests.conftest import free_port

UA = "ProvingGroundBot/0.1 (+test)"


def get(port: int, host: str, path: str, ua: str = UA) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host, "User-Agent": ua})
        conn.getresponse().read()
    finally:
        conn.close()


class FakeCrawler(ThreadingHTTPServer):
    """GET /v1/crawls and /v1/crawls/{id}, as the crawler's API answers them."""

    def __init__(self, crawls: dict[str, dict]) -> None:
        self.crawls = crawls

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/v1/crawls":
                    body: object = [{"crawl_id": c, "state": "finished"} for c in crawls]
                elif self.path.startswith("/v1/crawls/") and self.path[11:] in crawls:
                    body = {"crawl_id": self.path[11:], "state": "finished", "stats": crawls[self.path[11:]]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[str, str]]:
    """websim with two crawls' worth of bot requests (3 then 4) and a crawler that knows both."""
    sim = WebSim(SimConfig(hosts=5, seed=1))
    with run_in_thread(sim) as port:
        get(port, "h0002.sim.test", "/", ua="SomeoneElse/1.0")  # not ours: never drawn
        for _ in range(3):
            get(port, "h0000.sim.test", "/")
        first = sim.entries()
        for _ in range(4):
            get(port, "h0001.sim.test", "/")
        second = sim.entries()[len(first) :]
        a = [e["ts"] for e in first if e["user_agent"] == UA]
        b = [e["ts"] for e in second]
        crawler = FakeCrawler(
            {
                "a": {"started_at": min(a), "finished_at": max(a)},
                "b": {"started_at": min(b), "finished_at": max(b)},
            }
        )
        thread = threading.Thread(target=crawler.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{crawler.server_address[1]}"
        finally:
            crawler.shutdown()
            crawler.server_close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("which", "requests"), [((), 4), (("--crawl", "a"), 3), (("--all",), 7)])
def test_draws_the_last_crawl_by_default(
    stack: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], which: tuple, requests: int
) -> None:
    websim, crawler = stack
    out = tmp_path / "p.png"
    code, stdout, stderr = run(capsys, "--websim", websim, "--crawler", crawler, "-o", str(out), *which)
    assert code == 0, stderr
    assert f": {requests} requests)" in stdout
    assert out.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (("--crawl", "nope"), "no crawl 'nope'"),
        (("--crawl", "a", "--all"), "not allowed with"),
        (("-o", "x.txt"), ".png"),
        (("--bogus",), "unrecognized"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    stack: tuple[str, str], capsys: pytest.CaptureFixture[str], argv: tuple, needle: str
) -> None:
    websim, crawler = stack
    code, stdout, stderr = run(capsys, "--websim", websim, "--crawler", crawler, *argv)
    assert code == 2 and stdout == ""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and needle in stderr, stderr


def test_unreachable_crawler_or_websim_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    out = str(tmp_path / "p.png")
    for argv in (("--crawler", dead), ("--all", "--websim", dead)):
        code, _, stderr = run(capsys, "-o", out, *argv)
        assert code == 2 and stderr.count("\n") == 1, stderr


def test_output_goes_to_reports_and_spares_tracked_docs(tmp_path: Path) -> None:
    assert output_path(None, force=False) == DEFAULT_OUT
    assert DEFAULT_OUT.is_relative_to(ROOT / "reports")
    assert output_path(tmp_path, force=False) == tmp_path / "politeness.png"
    doc = ROOT / "docs" / "img" / "politeness.png"
    assert figures.is_tracked(doc)
    with pytest.raises(UsageError, match="--force"):
        output_path(doc, force=False)
    assert output_path(doc, force=True) == doc
    untracked = tmp_path / "mine.png"
    untracked.write_bytes(b"old")
    assert output_path(untracked, force=False) == untracked


def test_window_selects_by_timestamp() -> None:
    entries = [{"ts": t} for t in (1.0, 2.0, 3.0, 4.0)]
    assert Window("w", 2.0, 3.0).select(entries) == [{"ts": 2.0}, {"ts": 3.0}]
    assert Window("all").select(entries) == entries
