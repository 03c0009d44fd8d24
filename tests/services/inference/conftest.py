"""Shared fixtures for the inference tests: a tiny seeded model, few torch threads."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch

# The test machine's cores are shared; one intra-op thread keeps the tests predictable.
torch.set_num_threads(int(os.environ.get("PG_TEST_TORCH_THREADS", "1")))

from services.inference.model.transformer import ModelConfig  # noqa: E402
from services.inference.model.weights import build_model  # noqa: E402

TINY = ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=256)


@pytest.fixture(scope="session")
def tiny_model():
    return build_model(TINY, seed=1)


class LiveServer:
    """The real app under uvicorn on free loopback ports, in a thread of this process (so tests
    can also look at the engine's state); HTTP and gRPC both listen on real sockets."""

    # How long a start may take while the server thread lives. Idle, a start takes well under a
    # second; on a loaded 2-core box (CI, or the benchmarks running beside the tests) several
    # times that, an engine process's (a spawned child imports torch and builds the model) far
    # more. A thread that dies in its start is reported at once (_wait_ready), so this only
    # bounds a start that hangs; pytest-timeout's 300 s per test bounds it as well.
    START_TIMEOUT_S = 120.0

    def __init__(self, **overrides) -> None:
        import threading

        import uvicorn

        from services.inference.app import build_app
        from services.inference.settings import InferenceSettings

        # Our own listening socket for uvicorn, and gRPC on port 0 (it binds any free one and
        # says which): a free_port() that was closed again until the server thread bound it
        # could be taken meanwhile on a busy box, and the server then never came up.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        base = dict(
            port=sock.getsockname()[1],
            grpc_port=0,
            d_model=64,
            n_layers=2,
            n_heads=4,
            d_ff=128,
            max_seq_len=512,
            kv_cache_tokens=4096,
            max_prompt_tokens=256,
            max_output_tokens=256,
            embeddings=False,
            torch_threads=1,
            seed=1,
            # The engine as a thread of this process: the tests look at (and hold) its state;
            # test_engine_process.py serves with the engine in its own process.
            engine_process=False,
        )
        base.update(overrides)
        self.settings = InferenceSettings(**base)
        try:
            self.app, self.runtime = build_app(self.settings)
            self.server = uvicorn.Server(
                uvicorn.Config(
                    self.app, host="127.0.0.1", port=self.settings.port, log_config=None, lifespan="on"
                )
            )
            self.thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self.url = f"http://127.0.0.1:{self.settings.port}"
            self.thread.start()
            self._wait_ready()
        except BaseException:
            if hasattr(self, "server"):
                self.server.should_exit = True  # a start that hangs: let it end on its own
            if not (hasattr(self, "thread") and self.thread.is_alive()):
                sock.close()  # uvicorn closes it when it stops: not when it never ran or died
                if hasattr(self, "runtime"):
                    self.runtime.engine.stop()  # a startup that failed after starting it left it
            raise
        self.grpc_target = f"127.0.0.1:{self.runtime.grpc_port}"

    def _serve(self, sock: socket.socket) -> None:
        try:
            self.server.run(sockets=[sock])
        except SystemExit as exc:  # uvicorn's way out of a failed start, after it logged why
            self.start_exit = exc.code  # _wait_ready reports it

    def _wait_ready(self) -> None:
        """Until the app has answered a request: not merely until its port accepts (the kernel
        completes a connect before the server thread has even accepted it). The server thread
        does its first-connection work before it answers (uvicorn creates its access logger
        then), so none of it is left running when the test starts: pytest (9.1 on) iterates
        logging's loggerDict, unlocked, at the start of each test phase, and a server thread
        creating a logger meanwhile failed the first test with "RuntimeError: dictionary
        changed size during iteration" (1 run in 17 at load 7-11). uvicorn has bound HTTP only
        after the app's startup, so gRPC (rt.grpc_port) is up too once it answers."""
        import httpx

        deadline = time.monotonic() + self.START_TIMEOUT_S
        while True:
            if not self.thread.is_alive():
                raise RuntimeError(
                    f"the inference server's thread ended in its start (exit "
                    f"{getattr(self, 'start_exit', None)}; uvicorn logged why: see the captured log)"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet (refused), or not answering yet (timed out)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the inference server did not answer in {self.START_TIMEOUT_S} s")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def live_server():
    server = LiveServer()
    yield server
    server.stop()
