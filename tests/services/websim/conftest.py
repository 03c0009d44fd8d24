"""Fixtures: one default-sized simulated web per module, served on a free loopback port."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser

import pytest

from services.websim import SimConfig, WebSim, run_in_thread


@pytest.fixture(scope="module")
def sim() -> WebSim:
    return WebSim(SimConfig(hosts=200, seed=1))


@pytest.fixture(scope="module")
def port(sim: WebSim) -> Iterator[int]:
    with run_in_thread(sim) as bound:
        yield bound


@dataclass
class Reply:
    status: int  # 0: the connection was dropped without a response
    headers: dict[str, str]
    body: bytes


def fetch(
    port: int,
    host: str,
    path: str,
    method: str = "GET",
    ua: str = "ProvingGroundBot/0.1 (+test)",
    body: bytes | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One request over a real socket, with the Host header a crawler with --resolve would send."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Host": host, "User-Agent": ua})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    except (http.client.RemoteDisconnected, ConnectionError):
        return Reply(0, {}, b"")
    finally:
        conn.close()


class LinkParser(HTMLParser):
    """Independent of websim and the crawler: the stdlib's HTML tokenizer, which (like browsers)
    ignores markup inside comments and <script>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []  # (href, rel)
        self.base: str | None = None
        self.canonical: str | None = None
        self.meta_robots = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "a" and "href" in a:
            self.links.append((a["href"], a.get("rel", "")))
        elif tag == "base" and self.base is None and "href" in a:
            self.base = a["href"]
        elif tag == "link" and a.get("rel", "").lower() == "canonical":
            self.canonical = a.get("href")
        elif tag == "meta" and a.get("name", "").lower() == "robots":
            self.meta_robots = a.get("content", "").lower()


def parse_links(body: bytes, encoding: str = "utf-8") -> LinkParser:
    parser = LinkParser()
    parser.feed(body.decode(encoding, "replace"))
    parser.close()
    return parser
