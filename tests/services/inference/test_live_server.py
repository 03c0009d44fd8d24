"""The LiveServer harness: it hands a server over only once the app has answered, and a start
that fails is reported at once instead of after the start timeout."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from .conftest import LiveServer


def test_handed_over_only_after_the_server_thread_served_its_first_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pytest (9.1 on) iterates logging's loggerDict, unlocked, as each test phase starts; when a
    # server thread still busy with its first connection (uvicorn creates its access logger
    # then) added a logger meanwhile, the first test failed with "dictionary changed size during
    # iteration". A server thread slow to get there, as on a loaded box, is simulated by holding
    # each logger lookup off the main thread for 0.3 s: uvicorn looks its access logger up for
    # every connection it accepts, before it answers on it.
    real = logging.Manager.getLogger
    ended: list[tuple[int | None, float]] = []

    def held_off_main(self: logging.Manager, name: str) -> logging.Logger:
        if threading.current_thread() is threading.main_thread():
            return real(self, name)
        time.sleep(0.3)
        try:
            return real(self, name)
        finally:
            ended.append((threading.get_ident(), time.monotonic()))

    monkeypatch.setattr(logging.Manager, "getLogger", held_off_main)
    server = LiveServer()
    handed_over = time.monotonic()
    try:
        time.sleep(0.6)  # a lookup still held at the hand-over has ended by now
        in_server_thread = [t for ident, t in ended if ident == server.thread.ident]
    finally:
        server.stop()
    assert in_server_thread, "uvicorn looked no logger up in its thread: the simulation missed"
    assert max(in_server_thread) < handed_over


def test_a_start_that_fails_is_reported_at_once() -> None:
    # gRPC cannot bind a port this socket listens on: the app's startup fails and uvicorn's
    # thread ends. Waiting for the port then ran out the whole start timeout (30 s, then a
    # TimeoutError that said nothing of why); the harness now sees the thread end.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="ended in its start"):
            LiveServer(grpc_port=taken.getsockname()[1])
    assert time.monotonic() - started < LiveServer.START_TIMEOUT_S / 2
