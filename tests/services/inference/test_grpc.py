"""gRPC and HTTP are two doors to the same operations: same inputs, identical results."""

from __future__ import annotations

import time

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY

from services.inference.proto import inference_pb2 as pb
from services.inference.proto import inference_pb2_grpc as pb_grpc

from .conftest import LiveServer

ALICE_HTTP = {"Authorization": "Bearer dev-alice-key"}
ALICE_GRPC = (("authorization", "Bearer dev-alice-key"),)
PROMPTS = ["Hello", "The quick brown fox", "é😀 unicode", "x" * 60]


@pytest.fixture(scope="module")
def server():
    s = LiveServer(embeddings=True)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def stub(server: LiveServer):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.InferenceStub(channel)


def test_embeddings_wait_for_the_model_at_startup(server: LiveServer) -> None:
    # First test on a fresh server: the model loads in the background for several seconds.
    with httpx.Client(base_url=server.url, timeout=60) as c:
        # Not ready while it loads, for that reason alone (checked without racing the load:
        # a 200 means the load finished, and then the embedder is there).
        r = c.get("/readyz")
        if r.status_code == 503:
            assert "embeddings" in r.text
        else:
            assert r.status_code == 200 and server.runtime.embedder is not None
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/embeddings", json={"input": "early bird"}, headers=ALICE_HTTP)
        assert r.status_code == 200, r.text  # waited for the model instead of failing
        assert len(r.json()["data"][0]["embedding"]) == 384
        assert c.get("/readyz").status_code == 200


def test_greedy_generation_identical_over_http_and_grpc(server: LiveServer, stub) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for prompt in PROMPTS:
            http = c.post(
                "/v1/completions",
                json={"prompt": prompt, "max_tokens": 24, "ignore_eos": True},
                headers=ALICE_HTTP,
            ).json()["choices"][0]
            req = pb.GenerateRequest(prompt=prompt, max_tokens=24, ignore_eos=True)
            chunks = list(stub.Generate(req, metadata=ALICE_GRPC, timeout=60))
            streamed = [ch.token_id for ch in chunks if ch.token_id >= 0]
            unary = stub.Complete(req, metadata=ALICE_GRPC, timeout=60)
            assert streamed == http["token_ids"] == list(unary.token_ids)
            assert "".join(ch.text for ch in chunks) == http["text"] == unary.text
            assert chunks[-1].finish_reason == unary.finish_reason == http["finish_reason"] == "length"
            assert chunks[-1].usage.completion_tokens == 24


def test_seeded_sampling_identical_over_http_and_grpc(server: LiveServer, stub) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        http = c.post(
            "/v1/completions",
            json={
                "prompt": "seed",
                "max_tokens": 16,
                "temperature": 1.2,
                "top_p": 0.9,
                "seed": 99,
                "ignore_eos": True,
            },
            headers=ALICE_HTTP,
        ).json()["choices"][0]["token_ids"]
    req = pb.GenerateRequest(
        prompt="seed", max_tokens=16, temperature=1.2, top_p=0.9, seed=99, ignore_eos=True
    )
    assert list(stub.Complete(req, metadata=ALICE_GRPC, timeout=60).token_ids) == http


def test_score_identical(server: LiveServer, stub) -> None:
    cands = [" yes", " no", " maybe"]
    with httpx.Client(base_url=server.url, timeout=60) as c:
        http = c.post("/v1/score", json={"prompt": "Is it?", "candidates": cands}, headers=ALICE_HTTP).json()
    g = stub.Score(pb.ScoreRequest(prompt="Is it?", candidates=cands), metadata=ALICE_GRPC, timeout=60)
    for h, r in zip(http["results"], g.results, strict=True):
        assert h["candidate"] == r.candidate and h["tokens"] == r.tokens
        assert h["logprob"] == pytest.approx(r.logprob, abs=1e-9)


def test_embeddings_identical(server: LiveServer, stub) -> None:
    texts = ["A man is eating food.", "Someone is playing a guitar."]
    deadline = time.monotonic() + 60
    while server.runtime.embedder is None:  # the model loads in the background at start-up
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        http = c.post("/v1/embeddings", json={"input": texts}, headers=ALICE_HTTP).json()
    g = stub.Embed(pb.EmbedRequest(input=texts), metadata=ALICE_GRPC, timeout=60)
    assert len(http["data"]) == len(g.data) == 2
    for h, r in zip(http["data"], g.data, strict=True):
        assert h["embedding"] == pytest.approx(list(r.values), abs=1e-6)  # float32 on the wire
    assert http["usage"]["prompt_tokens"] == g.prompt_tokens > 0


def test_jobs_over_grpc_are_idempotent(server: LiveServer, stub) -> None:
    req = pb.SubmitJobRequest(
        request=pb.GenerateRequest(prompt="job", max_tokens=5, ignore_eos=True), idempotency_key="g-1"
    )
    a = stub.SubmitJob(req, metadata=ALICE_GRPC, timeout=30)
    b = stub.SubmitJob(req, metadata=ALICE_GRPC, timeout=30)
    assert a.id == b.id and a.created and not b.created
    deadline = time.monotonic() + 30
    while (job := stub.GetJob(pb.JobRef(id=a.id), metadata=ALICE_GRPC, timeout=30)).state not in (
        "succeeded",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert job.state == "succeeded" and len(job.result.token_ids) == 5


def test_grpc_errors_map_to_status_codes(server: LiveServer, stub) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub.Complete(
            pb.GenerateRequest(prompt="x"), metadata=(("authorization", "Bearer nope"),), timeout=10
        )
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        list(
            stub.Generate(pb.GenerateRequest(prompt="x", max_tokens=10_000), metadata=ALICE_GRPC, timeout=10)
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_tokens" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        stub.GetJob(pb.JobRef(id="job-nope"), metadata=ALICE_GRPC, timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    models = stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert "pg-byte-tiny" in [m.id for m in models.data]


def test_grpc_cancel_frees_the_sequence(server: LiveServer, stub) -> None:
    eng = server.runtime.engine
    eng.step_observer = lambda plan: time.sleep(0.005)  # 256 tokens would take over a second
    labels = {"tenant": "alice", "reason": "cancelled"}
    before = REGISTRY.get_sample_value("inference_requests_finished_total", labels) or 0
    try:
        call = stub.Generate(
            pb.GenerateRequest(prompt="long", max_tokens=256, ignore_eos=True),
            metadata=ALICE_GRPC,
            timeout=60,
        )
        next(call)
        next(call)
        call.cancel()
        deadline = time.monotonic() + 10
        while eng.stats().running or eng.cache.used_tokens:
            assert time.monotonic() < deadline, "cancelled gRPC stream still holds its sequence"
            time.sleep(0.01)
        assert REGISTRY.get_sample_value("inference_requests_finished_total", labels) == before + 1
    finally:
        eng.step_observer = None
