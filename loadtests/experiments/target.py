"""Where the experiments send load: the running stack, and side servers they start themselves.

The stack is found as `make run` publishes it (the compose topology, every port shifted by
--port-offset), or by explicit --url service=URL. An experiment that compares server settings
which cannot change at runtime (batching off, fair queueing off, an embedding batch delay) starts
its own `python -m services.inference` with those flags on free loopback ports (the command line
comes from the compose file, like the launcher's), uses it, and stops it: a process and its HTTP
API, nothing imported from the service.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deploy.topology import ROOT, local_services

ALICE = os.environ.get("PG_LOADTEST_ALICE_KEY", "dev-alice-key")
BOB = os.environ.get("PG_LOADTEST_BOB_KEY", "dev-bob-key")
KEYS = {"alice": ALICE, "bob": BOB}


@dataclass
class Target:
    port_offset: int = 0
    urls: dict[str, str] = field(default_factory=dict)

    def url(self, service: str) -> str:
        if service in self.urls:
            return self.urls[service].rstrip("/")
        for s in local_services():
            if s.name == service and s.http_port is not None:
                if service == "redis":
                    return f"redis://127.0.0.1:{s.http_port + self.port_offset}/0"
                return f"http://127.0.0.1:{s.http_port + self.port_offset}"
        raise ValueError(f"no published port for service {service!r}")

    def require(self, *services: str) -> None:
        """Fail with one line naming what is not answering (the stack is not up)."""
        for service in services:
            url = self.url(service)
            if url.startswith("redis://"):
                _require_redis(service, url)
                continue
            try:
                httpx.get(f"{url}/healthz", timeout=5.0).raise_for_status()
            except httpx.HTTPError as exc:
                raise StackDown(
                    f"{service} does not answer at {url} ({type(exc).__name__}); start `make run`"
                ) from None


class StackDown(RuntimeError):
    """A service the experiment needs does not answer."""


def _require_redis(service: str, url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=5).ping()
    except redis.RedisError as exc:
        raise StackDown(
            f"{service} does not answer at {url} ({type(exc).__name__}); start `make run`"
        ) from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _argv_of(service: str) -> tuple[list[str], dict[str, str]]:
    spec = next(s for s in local_services() if s.name == service)
    return list(spec.argv), dict(spec.env)


def _set_flag(argv: list[str], flag: str, value: str) -> list[str]:
    if flag in argv:
        i = argv.index(flag)
        return [*argv[: i + 1], value, *argv[i + 2 :]]
    return [*argv, flag, value]


@contextmanager
def side_inference(flags: list[str], log: Path, ready_timeout: float = 240.0) -> Iterator[str]:
    """`python -m services.inference` (the compose command) with extra `flags` on free ports."""
    argv, env = _argv_of("inference")
    port = free_port()
    argv = _set_flag(_set_flag(argv, "--port", str(port)), "--grpc-port", "-1")
    argv += flags
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, ready_timeout, log)
        yield url
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-1500:]
                raise StackDown(f"side server exited with {proc.returncode}: {tail}")
            try:
                if client.get(f"{url}/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    raise StackDown(f"side server at {url} not ready after {timeout:.0f}s (log: {log})")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
