"""The in-repo fault proxy speaks Toxiproxy's API: driven by a client nobody here wrote
(`toxiproxy-python`), its toxics act on real sockets as Toxiproxy's do.

Timing assertions are lower bounds only (a toxic must hold bytes at least as long as it says);
nothing asserts that the machine is fast.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from deploy.topology import ROOT
from tests.conftest import IN_CI, free_port, wait_for_port

try:  # the client nobody here wrote (dev extra); the tests that need it skip without it
    import toxiproxy
except ImportError:
    toxiproxy = None


class EchoServer:
    """Echoes every byte back; closes its side when the client closes its own."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with closing(conn):
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass


@pytest.fixture(scope="module")
def api_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    log = open(tmp_path_factory.mktemp("faultproxy") / "log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.faultproxy", "-port", str(port), "-seed", "1"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, timeout=30)
        yield port
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        log.close()


@pytest.fixture(scope="module")
def echo() -> EchoServer:
    return EchoServer()


@pytest.fixture
def server(api_port: int) -> Iterator[toxiproxy.Toxiproxy]:
    if toxiproxy is None:
        reason = "toxiproxy-python not installed (run `make setup`)"
        pytest.fail(f"CI=true and {reason}") if IN_CI else pytest.skip(reason)
    client = toxiproxy.Toxiproxy()
    client.update_api_consumer("127.0.0.1", api_port)
    yield client
    client.destroy_all()


@pytest.fixture
def proxy(server: toxiproxy.Toxiproxy, echo: EchoServer) -> toxiproxy.Proxy:
    return server.create(upstream=f"127.0.0.1:{echo.port}", name="echo")


def port_of(proxy: toxiproxy.Proxy) -> int:
    return int(proxy.listen.rsplit(":", 1)[1])


def connect(proxy: toxiproxy.Proxy, timeout: float = 30.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def round_trip(proxy: toxiproxy.Proxy, payload: bytes = b"ping") -> tuple[bytes, float]:
    with closing(connect(proxy)) as sock:
        start = time.monotonic()
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        return got, time.monotonic() - start


def read_until_closed(sock: socket.socket) -> bytes:
    got = b""
    for _ in range(10_000):  # bounded
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk
    raise AssertionError("never closed")


def test_the_client_creates_lists_and_passes_bytes_through(server, proxy):
    assert json.loads(server.version())["version"]
    assert port_of(proxy) > 0
    listed = server.proxies()
    assert set(listed) == {"echo"} and listed["echo"].upstream == proxy.upstream
    assert round_trip(proxy, b"hello")[0] == b"hello"
    with pytest.raises(toxiproxy.api.ProxyExists):
        server.create(upstream=proxy.upstream, name="echo")


def test_latency_holds_each_response_and_stops_when_removed(proxy):
    proxy.add_toxic(type="latency", attributes={"latency": 300, "jitter": 0})
    assert set(proxy.toxics()) == {"latency_downstream"}
    got, took = round_trip(proxy)
    assert got == b"ping" and took >= 0.3
    proxy.add_toxic(type="latency", stream="upstream", attributes={"latency": 200})
    got, took = round_trip(proxy)
    assert got == b"ping" and took >= 0.5  # both directions add up
    proxy.destroy_toxic("latency_downstream")
    proxy.destroy_toxic("latency_upstream")
    assert proxy.toxics() == {}
    assert round_trip(proxy)[0] == b"ping"


def test_reset_peer_resets_the_connection(proxy):
    proxy.add_toxic(type="reset_peer", attributes={"timeout": 0})
    with closing(connect(proxy)) as sock:
        sock.sendall(b"ping")
        with pytest.raises(ConnectionResetError):
            read_until_closed(sock)
    proxy.destroy_toxic("reset_peer_downstream")
    assert round_trip(proxy)[0] == b"ping"


def test_reset_peer_with_zero_toxicity_never_applies(proxy):
    proxy.add_toxic(type="reset_peer", toxicity=0.0, attributes={"timeout": 0})
    assert round_trip(proxy)[0] == b"ping"


def test_timeout_drops_data_then_closes(proxy):
    proxy.add_toxic(type="timeout", attributes={"timeout": 300})
    start = time.monotonic()  # before connecting: the proxy's timer starts after its accept
    with closing(connect(proxy)) as sock:
        sock.sendall(b"ping")
        assert read_until_closed(sock) == b""  # nothing came back, then the proxy closed it
        assert time.monotonic() - start >= 0.3


def test_timeout_zero_holds_the_connection_until_the_toxic_goes(proxy):
    proxy.add_toxic(type="timeout", attributes={"timeout": 0})
    with closing(connect(proxy, timeout=0.5)) as sock:
        sock.sendall(b"ping")
        with pytest.raises(TimeoutError):  # held open, nothing passes
            sock.recv(10)
        proxy.destroy_toxic("timeout_downstream")  # as in Toxiproxy: the held connections close
        sock.settimeout(30)
        assert read_until_closed(sock) == b""
    assert round_trip(proxy)[0] == b"ping"  # new connections pass again


def test_limit_data_closes_after_that_many_bytes(proxy):
    proxy.add_toxic(type="limit_data", attributes={"bytes": 5})
    with closing(connect(proxy)) as sock:
        sock.sendall(b"0123456789")
        assert read_until_closed(sock) == b"01234"


def test_slow_close_holds_the_eof(proxy):
    proxy.add_toxic(type="slow_close", attributes={"delay": 300})
    with closing(connect(proxy)) as sock:
        sock.sendall(b"ping")
        start = time.monotonic()
        sock.shutdown(socket.SHUT_WR)
        assert read_until_closed(sock) == b"ping"
        assert time.monotonic() - start >= 0.3


def test_bandwidth_limits_the_rate(proxy):
    proxy.add_toxic(type="bandwidth", attributes={"rate": 20})  # 20 KB/s
    got, took = round_trip(proxy, b"x" * 10_000)
    assert len(got) == 10_000 and took >= 0.49  # 0.5 s, less the clock's rounding


def test_disable_refuses_and_drops_connections_enable_restores(proxy):
    held = connect(proxy)
    held.sendall(b"x")
    assert held.recv(1) == b"x"  # accepted and connected upstream: a live connection to drop
    with proxy.down():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=5)
        with closing(held):
            assert read_until_closed(held) == b""
    assert round_trip(proxy)[0] == b"ping"


def test_reset_enables_every_proxy_and_removes_every_toxic(server, proxy):
    proxy.add_toxic(type="latency", attributes={"latency": 10_000})
    proxy.disable()
    assert server.reset()
    (after,) = server.proxies().values()
    assert after.enabled and after.toxics() == {}
    assert round_trip(proxy)[0] == b"ping"


def test_api_errors_are_json_and_name_the_field(api_port: int, echo: EchoServer):
    base = f"http://127.0.0.1:{api_port}"
    with httpx.Client(base_url=base, timeout=10) as http:
        r = http.post("/proxies", json={"name": "echo", "upstream": f"127.0.0.1:{echo.port}"})
        assert r.status_code == 201 and r.json()["enabled"] and r.json()["toxics"] == []
        r = http.get("/proxies/nope")
        assert r.status_code == 404 and r.json() == {"error": "proxy not found", "status": 404}
        r = http.post("/proxies/echo/toxics", json={"type": "gremlins"})
        assert r.status_code == 400 and "type" in r.json()["error"]
        r = http.post("/proxies/echo/toxics", json={"type": "latency", "stream": "sideways"})
        assert r.status_code == 400 and "stream" in r.json()["error"]
        r = http.post("/proxies/echo/toxics", json={"type": "latency", "attributes": {"latency": -1}})
        assert r.status_code == 400 and "attributes.latency" in r.json()["error"]
        r = http.post("/proxies", json={"name": "x"})
        assert r.status_code == 400 and "upstream" in r.json()["error"]
        r = http.post("/proxies", content=b"{not json")
        assert r.status_code == 400 and "bad request body" in r.json()["error"]
        assert http.post("/proxies/echo/toxics", json={"type": "latency"}).status_code == 200
        assert http.post("/proxies/echo/toxics", json={"type": "latency"}).status_code == 409
        r = http.patch("/proxies/echo/toxics/latency_downstream", json={"attributes": {"latency": 5}})
        assert r.json()["attributes"] == {"latency": 5, "jitter": 0}
        assert http.delete("/proxies/echo/toxics/latency_downstream").status_code == 204
        assert http.delete("/proxies/echo/toxics/latency_downstream").status_code == 404
        assert http.delete("/proxies/echo").status_code == 204
        assert http.get("/proxies").json() == {}


def test_config_file_creates_the_proxies_at_start(tmp_path: Path, echo: EchoServer):
    api, listen = free_port(), free_port()
    config = tmp_path / "proxies.json"
    config.write_text(
        json.dumps([{"name": "e", "listen": f"127.0.0.1:{listen}", "upstream": f"127.0.0.1:{echo.port}"}])
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.faultproxy", "-port", str(api), "-config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(api, timeout=30)
        with closing(socket.create_connection(("127.0.0.1", listen), timeout=10)) as sock:
            sock.sendall(b"hi")
            assert sock.recv(10) == b"hi"
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_bad_config_exits_2_with_one_line(tmp_path: Path):
    config = tmp_path / "proxies.json"
    config.write_text('{"not": "a list"}')
    result = subprocess.run(
        [sys.executable, "-m", "deploy.faultproxy", "-port", str(free_port()), "-config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "config" in result.stderr
