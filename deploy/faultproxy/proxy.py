"""One proxy: a TCP listener that forwards each connection to its upstream through its toxics.

Each accepted connection opens its own upstream connection (when that fails, the client's
connection is closed, as Toxiproxy does) and becomes two links, one per direction:
"upstream" carries client -> server bytes, "downstream" server -> client. A link is a reader
task that stamps each chunk with its arrival time into a small bounded queue (backpressure: a
slow link stops reading) and a writer task that passes each chunk through the toxics of its
stream that apply to this connection, in the order they were added. Toxics are looked up per
chunk, so adding or removing one acts on live connections at once.

A connection ends when both directions have seen EOF, or when a toxic, a disable or a delete
closes it; `reset_peer` closes it with a TCP RST (SO_LINGER 0) towards the link's destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import time
from typing import Any

from deploy.faultproxy.toxics import Toxic

log = logging.getLogger("faultproxy")

CHUNK = 32 * 1024
QUEUE_CHUNKS = 16  # read-ahead per link; bounds memory per connection to ~512 KiB
CONNECT_TIMEOUT_S = 10.0
BANDWIDTH_SLICE_S = 0.05  # a bandwidth-limited chunk is written in slices of this much time


class ProxyError(Exception):
    """An API request the proxies cannot honour; carries the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def split_hostport(address: str, what: str) -> tuple[str, int]:
    """ "host:port", "[::1]:port" or ":port" (all interfaces) -> (host, port)."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ProxyError(f"{what}: expected host:port, got {address!r}")
    host = host.strip("[]")
    return ("127.0.0.1" if host == "localhost" else host or "0.0.0.0"), int(port)


class Link:
    """One direction of a connection: reader -> queue -> toxics -> writer."""

    def __init__(
        self, conn: Connection, stream: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.conn, self.stream, self.reader, self.writer = conn, stream, reader, writer
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        self.sent = 0

    async def read_loop(self) -> None:
        try:
            while data := await self.reader.read(CHUNK):
                await self.queue.put((time.monotonic(), data))
        except OSError:
            pass  # a reset from the source ends this direction like an EOF
        await self.queue.put((time.monotonic(), b""))

    async def write_loop(self) -> None:
        try:
            while True:
                arrived, data = await self.queue.get()
                toxics = self.conn.toxics(self.stream)
                if not data:
                    await self.close_after(toxics)
                    return
                if not await self.through(arrived, data, toxics):
                    return
        except OSError:
            self.conn.close()

    async def close_after(self, toxics: list[Toxic]) -> None:
        delay = max((t.attr("delay") for t in toxics if t.type == "slow_close"), default=0)
        if delay:
            await asyncio.sleep(delay / 1000)
        if self.writer.can_write_eof():
            with contextlib.suppress(OSError):
                self.writer.write_eof()

    async def through(self, arrived: float, data: bytes, toxics: list[Toxic]) -> bool:
        """Pass one chunk through the toxics; False when the connection ends here."""
        rng = self.conn.proxy.rng
        rate = 0
        for toxic in toxics:
            if toxic.type == "timeout":
                return True  # dropped on the floor; the connection's timer closes it
            if toxic.type == "reset_peer":
                await asyncio.sleep(toxic.attr("timeout") / 1000)
                self.conn.close(reset=self.stream)
                return False
            if toxic.type == "latency":
                jitter = toxic.attr("jitter")
                delay = toxic.attr("latency") + (rng.randint(-jitter, jitter) if jitter else 0)
                wait = arrived + max(0, delay) / 1000 - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            elif toxic.type == "bandwidth" and toxic.attr("rate"):
                rate = toxic.attr("rate") if not rate else min(rate, toxic.attr("rate"))
        limit = min((t.attr("bytes") for t in toxics if t.type == "limit_data"), default=None)
        ending = limit is not None and self.sent + len(data) >= limit
        if limit is not None:
            data = data[: max(0, limit - self.sent)]
        await self.write(data, rate * 1000)
        if ending:
            self.conn.close()
        return not ending

    async def write(self, data: bytes, bytes_per_s: int) -> None:
        if not bytes_per_s:
            self.writer.write(data)
            await self.writer.drain()
        else:
            # Each slice waits for its share of time before it goes, as Toxiproxy's does.
            step = max(1, int(bytes_per_s * BANDWIDTH_SLICE_S))
            started = time.monotonic()
            for start in range(0, len(data), step):
                piece = data[start : start + step]
                wait = started + (start + len(piece)) / bytes_per_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.writer.write(piece)
                await self.writer.drain()
        self.sent += len(data)


class Connection:
    """A client connection and its upstream connection, as two links."""

    def __init__(
        self,
        proxy: Proxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.links = [
            Link(self, "upstream", client[0], upstream[1]),
            Link(self, "downstream", upstream[0], client[1]),
        ]
        self.closed = asyncio.Event()
        self.reset_stream: str | None = None
        self._draws: dict[str, tuple[Toxic, bool]] = {}  # toxic name -> (toxic, applies here)
        self._timers: dict[str, tuple[Toxic, int, asyncio.Task]] = {}

    def applies(self, toxic: Toxic) -> bool:
        """Toxicity is drawn once per connection and toxic."""
        drawn = self._draws.get(toxic.name)
        if drawn is None or drawn[0] is not toxic:
            drawn = (toxic, toxic.toxicity >= 1 or self.proxy.rng.random() < toxic.toxicity)
            self._draws[toxic.name] = drawn
        return drawn[1]

    def toxics(self, stream: str) -> list[Toxic]:
        return [t for t in self.proxy.toxics.values() if t.stream == stream and self.applies(t)]

    def toxics_changed(self) -> None:
        """(Re)arm the close timer of each `timeout` toxic that applies here."""
        current = {t.name: t for t in self.proxy.toxics.values() if t.type == "timeout" and self.applies(t)}
        for name, (toxic, ms, task) in list(self._timers.items()):
            if current.get(name) is not toxic or toxic.attr("timeout") != ms:
                task.cancel()
                del self._timers[name]
        for name, toxic in current.items():
            if name not in self._timers and toxic.attr("timeout") > 0:
                ms = toxic.attr("timeout")
                self._timers[name] = (toxic, ms, asyncio.get_running_loop().create_task(self._close_in(ms)))

    def toxic_removed(self, toxic: Toxic) -> None:
        if toxic.type == "timeout" and self._draws.get(toxic.name, (None, False))[1]:
            self.close()  # its data was dropped: the stream is unusable, as in Toxiproxy
        self.toxics_changed()

    async def _close_in(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000)
        self.close()

    def close(self, reset: str | None = None) -> None:
        if reset and not self.closed.is_set():
            self.reset_stream = reset
        self.closed.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(link.read_loop()) for link in self.links]
        writers = [loop.create_task(link.write_loop()) for link in self.links]
        closed = loop.create_task(self.closed.wait())
        both = asyncio.gather(*writers, return_exceptions=True)
        waits: list[asyncio.Future[Any]] = [both, closed]
        try:
            self.toxics_changed()
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [*tasks, *writers, closed, *(t for _, _, t in self._timers.values())]:
                task.cancel()
            await asyncio.gather(both, return_exceptions=True)
            for link in self.links:
                writer = link.writer
                if self.reset_stream == link.stream:
                    sock = writer.get_extra_info("socket")
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                else:
                    writer.close()


class Proxy:
    """A named listener -> upstream pair with its toxics (Toxiproxy's proxy object)."""

    def __init__(
        self, name: str, listen: str, upstream: str, enabled: bool = True, rng: random.Random | None = None
    ) -> None:
        split_hostport(listen, "listen")
        split_hostport(upstream, "upstream")
        self.name, self.listen, self.upstream, self.enabled = name, listen, upstream, enabled
        self.toxics: dict[str, Toxic] = {}
        self.rng = rng or random.Random()
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task] = set()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [t.to_json() for t in self.toxics.values()],
        }

    async def start(self) -> None:
        if self._server is not None:
            return
        host, port = split_hostport(self.listen, "listen")
        try:
            self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        except OSError as exc:
            raise ProxyError(f"listen: cannot listen on {self.listen}: {exc.strerror}", 409) from exc
        bound = self._server.sockets[0].getsockname()
        self.listen = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
        self.enabled = True
        log.info("proxy %s listening on %s -> %s", self.name, self.listen, self.upstream)

    async def stop(self) -> None:
        """Stop listening and drop every connection (what disabling a Toxiproxy proxy does)."""
        server, self._server = self._server, None
        self.enabled = False
        if server is not None:
            server.close()
        for conn in list(self.connections):
            conn.close()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)

    async def update(self, body: dict[str, Any]) -> None:
        listen, upstream = body.get("listen", self.listen), body.get("upstream", self.upstream)
        enabled = body.get("enabled", self.enabled)
        if not isinstance(enabled, bool):
            raise ProxyError(f"enabled: expected true or false, got {enabled!r}")
        split_hostport(listen, "listen")
        split_hostport(upstream, "upstream")
        moved = listen != self.listen or upstream != self.upstream
        if moved or not enabled:
            await self.stop()
        self.listen, self.upstream = listen, upstream
        if enabled:
            await self.start()

    def add_toxic(self, toxic: Toxic) -> None:
        if toxic.name in self.toxics:
            raise ProxyError("toxic already exists", 409)
        self.toxics[toxic.name] = toxic
        for conn in self.connections:
            conn.toxics_changed()
        log.info("proxy %s: toxic %s added %s", self.name, toxic.name, toxic.to_json())

    def changed(self) -> None:
        for conn in self.connections:
            conn.toxics_changed()

    def remove_toxic(self, name: str) -> None:
        toxic = self.toxics.pop(name, None)
        if toxic is None:
            raise ProxyError("toxic not found", 404)
        for conn in list(self.connections):
            conn.toxic_removed(toxic)
        log.info("proxy %s: toxic %s removed", self.name, name)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            host, port = split_hostport(self.upstream, "upstream")
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                log.info("proxy %s: upstream %s unreachable: %s", self.name, self.upstream, exc)
                writer.close()
                return
            if self._server is None:  # disabled while this connection was being set up
                upstream[1].close()
                writer.close()
                return
            conn = Connection(self, (reader, writer), upstream)
            self.connections.add(conn)
            try:
                await conn.run()
            finally:
                self.connections.discard(conn)
        finally:
            self._handlers.discard(task)
