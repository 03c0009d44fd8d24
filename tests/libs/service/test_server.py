"""Graceful shutdown, for real: a service subprocess, a request in flight, then SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[3]

SERVICE = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from libs.service.app import create_app
    from libs.service.health import Health
    from libs.service.logging import configure_logging
    from libs.service.server import serve

    port, events, slow_s, drain_timeout, drain_delay, loop = (
        int(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]),
        sys.argv[6])
    configure_logging("slowsvc", "INFO")
    health = Health()
    app = create_app("slowsvc", health=health)

    def note(what):
        with events.open("a") as f:
            f.write(what + "\\n")

    @app.get("/loop")
    async def which_loop():
        return {"loop": type(asyncio.get_running_loop()).__module__}

    @app.get("/slow")
    async def slow():
        note("started")
        await asyncio.sleep(slow_s)
        note("finished")
        return {"slept": slow_s}

    async def flush():
        note("hook")

    health.set_ready(True)
    sys.exit(serve(app, "127.0.0.1", port, health=health, drain_timeout=drain_timeout,
                   drain_delay=drain_delay, on_shutdown=[flush], loop=loop))
    """
)


AIOHTTP_SERVICE = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from aiohttp import web
    from libs.service.aiohttp_app import instrument_aiohttp, serve_aiohttp
    from libs.service.logging import configure_logging

    port, events, slow_s, drain_timeout, drain_delay = (
        int(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
    configure_logging("slowaio", "INFO")

    def note(what):
        with events.open("a") as f:
            f.write(what + "\\n")

    async def slow(request):
        note("started")
        await asyncio.sleep(slow_s)
        note("finished")
        return web.json_response({"slept": slow_s})

    async def flush():
        note("hook")

    app = web.Application()
    app.router.add_get("/slow", slow)
    health = instrument_aiohttp(app, "slowaio")
    sys.exit(serve_aiohttp(app, "127.0.0.1", port, health=health, drain_timeout=drain_timeout,
                           drain_delay=drain_delay, on_shutdown=[flush]))
    """
)


@contextmanager
def service(
    tmp_path: Path, *, slow_s: float, drain_timeout: float, drain_delay: float = 0.0, kind: str = "fastapi"
) -> Iterator[tuple]:
    script = tmp_path / "slowsvc.py"
    script.write_text(AIOHTTP_SERVICE if kind == "aiohttp" else SERVICE)
    events = tmp_path / "events.txt"
    events.touch()
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(port),
            str(events),
            str(slow_s),
            str(drain_timeout),
            str(drain_delay),
            "uvloop" if kind == "fastapi-uvloop" else "asyncio",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, timeout=30)
        yield proc, port, events
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def wait_for_line(events: Path, line: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in events.read_text().splitlines():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{line!r} never appeared in {events}")
        time.sleep(0.02)


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def wait_until_refused(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not refused(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} still accepting after {timeout}s")
        time.sleep(0.05)


def fire(url: str, result: dict) -> threading.Thread:
    def run() -> None:
        try:
            r = httpx.get(url, timeout=30)
            result["status"], result["text"] = r.status_code, r.text
        except httpx.HTTPError as exc:
            result["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.mark.parametrize(
    ("kind", "sig"),
    [
        ("fastapi", signal.SIGTERM),
        ("fastapi", signal.SIGINT),
        ("fastapi-uvloop", signal.SIGTERM),  # serve(loop="uvloop"): the inference server's loop
        ("aiohttp", signal.SIGTERM),
    ],
)
def test_signal_mid_request_finishes_it_refuses_new_connections_and_exits_0(
    tmp_path: Path, kind: str, sig: int
) -> None:
    with service(tmp_path, slow_s=1.5, drain_timeout=20, kind=kind) as (proc, port, events):
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        if kind.startswith("fastapi"):
            loop = httpx.get(f"http://127.0.0.1:{port}/loop").json()["loop"]
            assert loop == ("uvloop" if kind == "fastapi-uvloop" else "asyncio.unix_events"), loop
        result: dict = {}
        t = fire(f"http://127.0.0.1:{port}/slow", result)
        wait_for_line(events, "started")
        proc.send_signal(sig)
        wait_until_refused(port)
        assert proc.poll() is None, "exited before the in-flight request finished"
        t.join(timeout=30)
        assert result.get("status") == 200, result
        assert json.loads(result["text"]) == {"slept": 1.5}
        assert proc.wait(timeout=20) == 0
        _, stderr = proc.communicate(timeout=5)
    # the request finished before the shutdown hook ran
    assert events.read_text().splitlines() == ["started", "finished", "hook"]
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert len(records) == len(stderr.splitlines()), stderr  # every stderr line is a JSON log line
    draining = [r for r in records if r["msg"] == "draining"]
    assert draining and draining[0]["signal"] == signal.Signals(sig).name
    assert "Traceback" not in stderr


@pytest.mark.parametrize("kind", ["fastapi", "aiohttp"])
def test_readyz_says_503_while_draining_before_the_listener_closes(tmp_path: Path, kind: str) -> None:
    with service(tmp_path, slow_s=1.0, drain_timeout=20, drain_delay=1.5, kind=kind) as (proc, port, _events):
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/readyz").status_code == 200
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        body = None
        while time.monotonic() < deadline:
            r = httpx.get(f"{url}/readyz", timeout=5)
            if r.status_code == 503:
                body = r.json()
                break
            time.sleep(0.02)
        assert body is not None and body["draining"] is True and body["status"] == "draining"
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        wait_until_refused(port)
        assert proc.wait(timeout=20) == 0


@pytest.mark.parametrize("kind", ["fastapi", "aiohttp"])
def test_request_longer_than_drain_timeout_is_cut_and_process_still_exits_0(
    tmp_path: Path, kind: str
) -> None:
    with service(tmp_path, slow_s=60, drain_timeout=0.5, kind=kind) as (proc, port, events):
        result: dict = {}
        t = fire(f"http://127.0.0.1:{port}/slow", result)
        wait_for_line(events, "started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        t.join(timeout=30)
    # cut off: uvicorn answers 500 if nothing was sent yet, else drops the connection; never a 200
    assert result.get("status") == 500 or isinstance(result.get("error"), httpx.HTTPError), result
    lines = events.read_text().splitlines()
    assert lines == ["started", "hook"]


def test_busy_port_is_reported_in_one_log_line_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        script = tmp_path / "svc.py"
        script.write_text(
            "import sys\n"
            "from libs.service.app import create_app\n"
            "from libs.service.logging import configure_logging\n"
            "from libs.service.server import serve\n"
            "configure_logging('busy')\n"
            f"sys.exit(serve(create_app('busy'), '127.0.0.1', {port}))\n"
        )
        run = subprocess.run(
            [sys.executable, str(script)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    errors = [json.loads(line) for line in run.stderr.splitlines() if '"ERROR"' in line]
    assert errors and "address already in use" in errors[0]["msg"].lower()
