"""Real servers on free loopback ports: pick a port, wait until something listens on it."""

from __future__ import annotations

import socket
import time


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port_offset(ports: list[int], start: int, step: int, stop: int = 15000) -> int:
    """A shift under which every one of `ports` is free: a whole stack on shifted ports.

    Callers pass different start/step so stacks started by different test files at once
    tend to land on different ranges (50051 + stop stays a valid port).
    """
    for offset in range(start, stop, step):
        if all(port_is_free(p + offset) for p in ports):
            return offset
    raise RuntimeError("no free port range for the stack")


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
