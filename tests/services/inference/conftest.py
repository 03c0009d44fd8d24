"""Shared fixtures for the inference tests: a tiny seeded model, few torch threads."""

from __future__ import annotations

import os

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

    def __init__(self, **overrides) -> None:
        import threading

        import uvicorn

        from services.inference.app import build_app
        from services.inference.settings import InferenceSettings
        from tests.conftest import free_port, wait_for_port

        base = dict(
            port=free_port(),
            grpc_port=free_port(),
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
        self.app, self.runtime = build_app(self.settings)
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=self.settings.port, log_config=None, lifespan="on"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for_port(self.settings.port, timeout=30)
        wait_for_port(self.settings.grpc_port, timeout=30)
        self.url = f"http://127.0.0.1:{self.settings.port}"
        self.grpc_target = f"127.0.0.1:{self.settings.grpc_port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def live_server():
    server = LiveServer()
    yield server
    server.stop()
