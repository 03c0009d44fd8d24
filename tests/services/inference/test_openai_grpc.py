"""gRPC carries the OpenAI operations too: chat, stop strings, penalties, log-probs, a model
by id, embedding dimensions; each gives what HTTP gives for the same request."""

from __future__ import annotations

import math

import grpc
import httpx
import pytest

from services.inference.proto import inference_pb2 as pb
from services.inference.proto import inference_pb2_grpc as pb_grpc

from .conftest import LiveServer

ALICE_HTTP = {"Authorization": "Bearer dev-alice-key"}
ALICE_GRPC = (("authorization", "Bearer dev-alice-key"),)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]


@pytest.fixture(scope="module")
def server():
    s = LiveServer(embeddings=True)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def stub(server: LiveServer):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.InferenceStub(channel)


def _http(server: LiveServer, path: str, body: dict) -> dict:
    r = httpx.post(f"{server.url}{path}", json=body, headers=ALICE_HTTP, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_chat_over_grpc_equals_http(server: LiveServer, stub) -> None:
    http = _http(server, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 10})
    req = pb.ChatRequest(messages=[pb.ChatMessage(**m) for m in MESSAGES], max_tokens=10)
    chunks = list(stub.Chat(req, metadata=ALICE_GRPC, timeout=60))
    assert "".join(c.text for c in chunks) == http["choices"][0]["message"]["content"]
    assert chunks[-1].finish_reason == http["choices"][0]["finish_reason"]
    assert chunks[-1].usage.prompt_tokens == http["usage"]["prompt_tokens"]
    assert chunks[-1].usage.completion_tokens == http["usage"]["completion_tokens"]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Chat(pb.ChatRequest(), metadata=ALICE_GRPC, timeout=60))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_generate_options_over_grpc_equal_http(server: LiveServer, stub) -> None:
    body = {
        "prompt": "options",
        "max_tokens": 20,
        "temperature": 8.0,
        "seed": 9,
        "frequency_penalty": 1.0,
        "ignore_eos": True,
    }
    full = _http(server, "/v1/completions", body)["choices"][0]["text"]
    stop = full[5:8]
    http = _http(server, "/v1/completions", {**body, "stop": [stop], "logprobs": 2})["choices"][0]
    req = pb.GenerateRequest(
        prompt="options",
        max_tokens=20,
        temperature=8.0,
        seed=9,
        frequency_penalty=1.0,
        ignore_eos=True,
        stop=[stop],
        logprobs=2,
    )
    chunks = list(stub.Generate(req, metadata=ALICE_GRPC, timeout=60))
    assert "".join(c.text for c in chunks) == http["text"] == full[: full.find(stop)]
    assert chunks[-1].finish_reason == http["finish_reason"] == "stop"
    token_lps = [c.logprob.logprob for c in chunks if c.HasField("logprob")]
    assert len(token_lps) == len(http["logprobs"]["token_logprobs"])
    for a, b in zip(token_lps, http["logprobs"]["token_logprobs"], strict=True):
        assert math.isclose(a, b, abs_tol=1e-5)
    assert all(len(c.logprob.top) == 2 for c in chunks if c.HasField("logprob"))


def test_models_and_embedding_dimensions_over_grpc(server: LiveServer, stub) -> None:
    assert stub.GetModel(pb.ModelRef(id="pg-byte-tiny"), metadata=ALICE_GRPC, timeout=30).kind == "generation"
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModel(pb.ModelRef(id="nope"), metadata=ALICE_GRPC, timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    http = _http(server, "/v1/embeddings", {"input": ["a cat", "a dog"], "dimensions": 32})
    got = stub.Embed(
        pb.EmbedRequest(input=["a cat", "a dog"], dimensions=32), metadata=ALICE_GRPC, timeout=60
    )
    for mine, theirs in zip(got.data, http["data"], strict=True):
        assert len(mine.values) == 32
        assert list(mine.values) == pytest.approx(theirs["embedding"], abs=1e-6)
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(input=["x"], dimensions=1000), metadata=ALICE_GRPC, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "dimensions" in (
        err.value.details() or ""
    )
