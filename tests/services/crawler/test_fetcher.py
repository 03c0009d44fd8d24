"""Fetcher against real loopback servers: resolver map, SSRF guard, limits, error translation."""

from __future__ import annotations

import asyncio
import gzip

import pytest
from aiohttp import web

from services.crawler.fetcher import (
    BlockedAddress,
    ConnectError,
    ConnectionDropped,
    Fetcher,
    ReadTimeout,
    ResolverMap,
    ResolveRule,
)
from services.crawler.settings import FetchConfig
from tests.conftest import free_port

from .minisite import MiniSite

UA = "ProvingGroundBot/0.1 (+http://127.0.0.1/bot)"


def _fetcher(port: int, **cfg: object) -> Fetcher:
    rules = [ResolveRule.parse(f"*.sim.test=127.0.0.1:{port}")]
    return Fetcher(FetchConfig(**cfg), ResolverMap(rules), UA)  # type: ignore[arg-type]


def test_resolve_rule_parsing() -> None:
    rule = ResolveRule.parse("*.sim.test=127.0.0.1:8090")
    assert (rule.pattern, rule.ip, rule.port) == ("*.sim.test", "127.0.0.1", 8090)
    assert ResolveRule.parse("*.sim.test=websim:8090").ip == "websim"  # compose service names
    for bad in ["*.sim.test", "*.sim.test=127.0.0.1", "=1.2.3.4:5", "a=not an ip:80", "a=1.2.3.4:99999"]:
        with pytest.raises(ValueError):
            ResolveRule.parse(bad)


async def test_resolver_map_routes_by_name_and_sends_host_header() -> None:
    site = MiniSite()
    site.page("h1.sim.test", "/a%2Fb?x=%7E", "<p>hi</p>")
    with site.serve() as port:
        async with _fetcher(port) as f:
            res = await f.fetch("http://h1.sim.test/a%2Fb?x=%7E")
    assert res.status == 200 and res.body == b"<p>hi</p>" and res.content_type == "text/html"
    assert site.log[0].host == "h1.sim.test" and site.log[0].path == "/a%2Fb?x=%7E"  # bytes sent as given
    assert site.log[0].user_agent == UA


async def test_resolver_map_target_may_be_a_name() -> None:
    site = MiniSite()
    site.page("h1.sim.test", "/", "via a name")
    with site.serve() as port:
        rules = [ResolveRule.parse(f"*.sim.test=localhost:{port}")]
        async with Fetcher(FetchConfig(), ResolverMap(rules), UA) as f:
            res = await f.fetch("http://h1.sim.test/")
    assert res.body == b"via a name" and site.log[0].host == "h1.sim.test"


async def test_ssrf_guard_refuses_loopback_outside_the_map() -> None:
    site = MiniSite()
    site.page("127.0.0.1", "/", "secret")
    with site.serve() as port:
        async with _fetcher(port) as f:
            with pytest.raises(BlockedAddress):
                await f.fetch(f"http://127.0.0.1:{port}/")
            with pytest.raises(BlockedAddress):
                await f.fetch(f"http://localhost:{port}/")
            with pytest.raises(BlockedAddress):
                await f.fetch("http://[::1]/")
    assert site.log == []


async def test_allow_private_opens_the_guard() -> None:
    site = MiniSite()
    site.page("127.0.0.1", "/", "ok")
    with site.serve() as port:
        async with Fetcher(FetchConfig(), ResolverMap([], allow_private=True), UA) as f:
            res = await f.fetch(f"http://127.0.0.1:{port}/")
    assert res.status == 200


async def test_body_limit_truncates_and_decompressed_size_is_bounded() -> None:
    site = MiniSite()
    site.page("h.sim.test", "/big", b"x" * 500_000)
    bomb = gzip.compress(b"a" * 5_000_000)
    site.page("h.sim.test", "/bomb", bomb, **{"Content-Encoding": "gzip"})
    with site.serve() as port:
        async with _fetcher(port, max_body_bytes=10_000) as f:
            big = await f.fetch("http://h.sim.test/big")
            zipped = await f.fetch("http://h.sim.test/bomb")
    assert big.truncated and len(big.body) == 10_000
    assert zipped.truncated and len(zipped.body) == 10_000 and zipped.body == b"a" * 10_000


async def test_content_type_outside_the_allow_list_is_not_read() -> None:
    site = MiniSite()
    site.page("h.sim.test", "/f.pdf", b"%PDF" * 1000, content_type="application/pdf")
    with site.serve() as port:
        async with _fetcher(port) as f:
            res = await f.fetch("http://h.sim.test/f.pdf")
    assert res.status == 200 and res.body_skipped and res.body == b""


async def test_redirects_are_returned_not_followed() -> None:
    site = MiniSite()
    site.page("h.sim.test", "/old", "", status=301, Location="/new")
    with site.serve() as port:
        async with _fetcher(port) as f:
            res = await f.fetch("http://h.sim.test/old")
    assert res.status == 301 and res.location == "/new"
    assert [e.path for e in site.log] == ["/old"]


async def test_slow_response_raises_read_timeout() -> None:
    site = MiniSite()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    site.hooks[("h.sim.test", "/slow")] = slow  # type: ignore[assignment]
    with site.serve() as port:
        async with _fetcher(port, read_timeout=0.3, total_timeout=1.0) as f:
            with pytest.raises(ReadTimeout) as info:
                await f.fetch("http://h.sim.test/slow")
    assert info.value.retryable


async def test_refused_and_dropped_connections_are_network_errors() -> None:
    port = free_port()  # nothing listens here
    async with _fetcher(port) as f:
        with pytest.raises(ConnectError) as info:
            await f.fetch("http://h.sim.test/")
    assert info.value.retryable

    # a server that accepts, reads the request and closes without answering
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    async with _fetcher(server.sockets[0].getsockname()[1]) as f:
        with pytest.raises(ConnectionDropped):
            await f.fetch("http://h.sim.test/")
    server.close()
    await server.wait_closed()
