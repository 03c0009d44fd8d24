"""Input limits (issue 14): named settings, each a 400 naming its field (the official `openai`
client sees BadRequestError with that `param`; gRPC INVALID_ARGUMENT naming it); tokenising off
the event loop (/healthz and streaming answer while a big request is being tokenised); embeddings
charged to the tenant's token bucket and batched round robin across tenants.

No timing thresholds: a blocked tokeniser or forward pass is held on an Event while the other
requests are made, so the test only passes if they do not need the event loop the block holds.
"""

from __future__ import annotations

import asyncio
import json
import threading

import grpc
import httpx
import openai
import pytest
import torch

from services.inference.admission import hash_key
from services.inference.embeddings import EmbeddingBatcher
from services.inference.proto import inference_pb2 as pb
from services.inference.proto import inference_pb2_grpc as pb_grpc

from .conftest import LiveServer

MODEL = "pg-byte-tiny"
EMBED = "all-MiniLM-L6-v2"
TENANTS = {
    "alice": {"key_sha256": hash_key("dev-alice-key")},
    "bob": {"key_sha256": hash_key("dev-bob-key")},
    # A small token bucket that does not refill within a test: what embeddings are charged to.
    "carol": {"key_sha256": hash_key("k-carol"), "tokens_per_s": 0.001, "burst_tokens": 280},
}
PROMPT_BYTES = 200
PROMPT_TOKENS = 64
EMBED_INPUTS = 2048
EMBED_TEXT_BYTES = 4096
ALICE = {"Authorization": "Bearer dev-alice-key"}
BOB = {"Authorization": "Bearer dev-bob-key"}
WAIT_S = 120  # an upper bound on a wait that is expected to end (not a measured threshold)


@pytest.fixture(scope="module")
def server():
    s = LiveServer(
        embeddings=True,
        tenants=TENANTS,
        max_prompt_bytes=PROMPT_BYTES,
        max_prompt_tokens=PROMPT_TOKENS,
        max_output_tokens=16,
        embed_max_inputs=EMBED_INPUTS,
        embed_max_text_bytes=EMBED_TEXT_BYTES,
    )
    # The embedding model loads in the background; the first request waits for it.
    r = httpx.post(f"{s.url}/v1/embeddings", json={"input": "warm up"}, headers=BOB, timeout=WAIT_S)
    assert r.status_code == 200, r.text
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer):
    with openai.OpenAI(
        base_url=f"{server.url}/v1", api_key="dev-alice-key", max_retries=0, timeout=WAIT_S
    ) as c:
        yield c


def _bad_request(call) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as err:
        call()
    assert err.value.status_code == 400
    return err.value


# -- the limits, through the official client -----------------------------------------------------
def test_prompt_bytes_and_tokens(client: openai.OpenAI) -> None:
    big = "x" * (PROMPT_BYTES + 1)
    e = _bad_request(lambda: client.completions.create(model=MODEL, prompt=big, max_tokens=1))
    assert e.param == "prompt" and "max_prompt_bytes" in e.message
    # Bytes, not characters: 67 three-byte characters are 201 bytes.
    e = _bad_request(lambda: client.completions.create(model=MODEL, prompt="€" * 67, max_tokens=1))
    assert e.param == "prompt"
    e = _bad_request(lambda: client.completions.create(model=MODEL, prompt=["ok", big], max_tokens=1))
    assert e.param == "prompt.1"
    # Within the bytes, past the tokens (the byte model: one token a byte, plus BOS).
    e = _bad_request(
        lambda: client.completions.create(model=MODEL, prompt="y" * (PROMPT_TOKENS + 5), max_tokens=1)
    )
    assert e.param == "prompt" and e.code == "context_length_exceeded"
    assert client.completions.create(model=MODEL, prompt="fine", max_tokens=2).choices[0].text is not None


def test_chat_message_bytes_and_tokens(client: openai.OpenAI) -> None:
    def chat(*contents: str):
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": c} for c in contents], max_tokens=1
        )

    e = _bad_request(lambda: chat("x" * (PROMPT_BYTES + 1)))
    assert e.param == "messages.0.content"
    e = _bad_request(lambda: chat("a" * 150, "b" * 150))  # together past the limit
    assert e.param == "messages.1.content"
    e = _bad_request(lambda: chat("z" * 100))  # within the bytes; the rendered prompt is too long
    assert e.param == "messages" and e.code == "context_length_exceeded"
    assert chat("hi").choices[0].message is not None


def test_embeddings_inputs_and_bytes(client: openai.OpenAI) -> None:
    e = _bad_request(lambda: client.embeddings.create(model=EMBED, input=["a"] * (EMBED_INPUTS + 1)))
    assert e.param == "input" and "embed_max_inputs" in e.message
    e = _bad_request(
        lambda: client.embeddings.create(model=EMBED, input=["ok", "w" * (EMBED_TEXT_BYTES + 1)])
    )
    assert e.param == "input.1" and "embed_max_text_bytes" in e.message
    e = _bad_request(lambda: client.embeddings.create(model=EMBED, input="w" * (EMBED_TEXT_BYTES + 1)))
    assert e.param == "input"
    # Five 2 MB texts: refused at once, before any tokenising.
    e = _bad_request(lambda: client.embeddings.create(model=EMBED, input=["v" * 2_000_000] * 5))
    assert e.param == "input.0"
    assert len(client.embeddings.create(model=EMBED, input=["w" * EMBED_TEXT_BYTES] * 3).data) == 3


def test_seed_is_64_bits(client: openai.OpenAI) -> None:
    kw = dict(model=MODEL, prompt="s", max_tokens=1, temperature=1.0)
    for seed in (2**64, -(2**63) - 1, 2**80):
        assert _bad_request(lambda s=seed: client.completions.create(seed=s, **kw)).param == "seed"
        e = _bad_request(
            lambda s=seed: client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "s"}],
                max_tokens=1,
                temperature=1.0,
                seed=s,
            )
        )
        assert e.param == "seed"
    for seed in (2**64 - 1, -(2**63), 0):
        assert client.completions.create(seed=seed, **kw).choices


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/embeddings", {"input": "a\ud800"}, "input"),
        ("/v1/embeddings", {"input": ["ok", "\udc00"]}, "input.1"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "\udfff"}]}, "messages.0.content"),
        ("/v1/completions", {"prompt": "x", "stop": ["\ud83d"]}, "stop.0"),
        ("/v1/score", {"prompt": "\ud800", "candidates": ["a"]}, "prompt"),
    ],
)
def test_lone_surrogates(server: LiveServer, path: str, body: dict, param: str) -> None:
    raw = json.dumps(body)  # ensure_ascii: the surrogate travels as a \\uXXXX escape, valid JSON
    r = httpx.post(
        server.url + path, content=raw, headers={**ALICE, "Content-Type": "application/json"}, timeout=WAIT_S
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert set(r.json()["error"]) >= {"message", "type", "param", "code"}


def test_score_prompt_and_candidate_bytes(server: LiveServer) -> None:
    big = "q" * (PROMPT_BYTES + 1)
    for body, param in (
        ({"prompt": big, "candidates": ["a"]}, "prompt"),
        ({"prompt": "p", "candidates": ["a", big]}, "candidates.1"),
    ):
        r = httpx.post(f"{server.url}/v1/score", json=body, headers=ALICE, timeout=WAIT_S)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


# -- the token bucket ----------------------------------------------------------------------------
def test_embeddings_are_charged_to_the_tenants_token_bucket(server: LiveServer) -> None:
    with openai.OpenAI(
        base_url=f"{server.url}/v1", api_key="k-carol", max_retries=0, timeout=WAIT_S
    ) as carol:
        text = "word " * 40  # 42 tokens with [CLS] and [SEP]
        # Larger than carol's whole burst (280): can never pass, so a 400 at once, not a 429.
        e = _bad_request(lambda: carol.embeddings.create(model=EMBED, input=[text] * 8))
        assert e.param == "input" and e.code == "request_too_large"
        r = carol.embeddings.create(model=EMBED, input=[text] * 5)
        assert r.usage.prompt_tokens == 210
        with pytest.raises(openai.RateLimitError) as limited:  # 70 left, 210 asked
            carol.embeddings.create(model=EMBED, input=[text] * 5)
        assert limited.value.response.headers.get("retry-after")
        # The same bucket completions use: 70 tokens left cannot pay for 61 + 16.
        with pytest.raises(openai.RateLimitError):
            carol.completions.create(model=MODEL, prompt="p" * 60, max_tokens=16)


# -- gRPC ----------------------------------------------------------------------------------------
def test_grpc_limits_are_invalid_argument_naming_the_field(server: LiveServer) -> None:
    md = (("authorization", "Bearer dev-alice-key"),)
    big = "x" * (PROMPT_BYTES + 1)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        calls = [
            (
                lambda: stub.Complete(
                    pb.GenerateRequest(prompt=big, max_tokens=1), metadata=md, timeout=WAIT_S
                )
            ),
            (
                lambda: list(
                    stub.Generate(pb.GenerateRequest(prompt=big, max_tokens=1), metadata=md, timeout=WAIT_S)
                )
            ),
            (
                lambda: list(
                    stub.Chat(
                        pb.ChatRequest(messages=[pb.ChatMessage(role="user", content=big)], max_tokens=1),
                        metadata=md,
                        timeout=WAIT_S,
                    )
                )
            ),
            (
                lambda: stub.Embed(
                    pb.EmbedRequest(input=["a"] * (EMBED_INPUTS + 1)), metadata=md, timeout=WAIT_S
                )
            ),
            (
                lambda: stub.Embed(
                    pb.EmbedRequest(input=["w" * (EMBED_TEXT_BYTES + 1)]), metadata=md, timeout=WAIT_S
                )
            ),
            (
                lambda: stub.Complete(
                    pb.GenerateRequest(prompt="y" * (PROMPT_TOKENS + 5), max_tokens=1),
                    metadata=md,
                    timeout=WAIT_S,
                )
            ),
        ]
        fields = [
            "body.prompt",
            "body.prompt",
            "body.messages.0.content",
            "body.input",
            "body.input.0",
            "body.prompt",
        ]
        for call, field in zip(calls, fields, strict=True):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            assert f"(field {field})" in err.value.details()


# -- off the event loop --------------------------------------------------------------------------
def test_healthz_and_streaming_answer_while_a_big_embeddings_request_is_tokenised(server: LiveServer) -> None:
    """The big request's token counting is held (an Event) on the tokeniser thread; meanwhile
    /healthz, another tenant's embeddings and a streamed completion all finish. Were counting on
    the event loop, none of them could be answered until the release."""
    model = server.runtime.embedder.model
    started, release = threading.Event(), threading.Event()
    real = model.count_many

    def held(texts: list[str]) -> list[int]:
        if len(texts) >= 1000:
            started.set()
            assert release.wait(WAIT_S)
        return real(texts)

    texts = [f"text {i}" for i in range(1500)] + ["long " * 800] * 5  # within the limits
    result: dict[str, httpx.Response] = {}

    def big() -> None:
        result["r"] = httpx.post(
            f"{server.url}/v1/embeddings", json={"input": texts}, headers=ALICE, timeout=600
        )

    model.count_many = held  # type: ignore[method-assign]
    thread = threading.Thread(target=big)
    try:
        thread.start()
        assert started.wait(WAIT_S)
        with httpx.Client(base_url=server.url, timeout=WAIT_S) as h:
            assert h.get("/healthz").status_code == 200
            assert h.post("/v1/embeddings", json={"input": ["one"]}, headers=BOB).status_code == 200
            with h.stream(
                "POST",
                "/v1/completions",
                json={"prompt": "stream", "max_tokens": 4, "stream": True, "ignore_eos": True},
                headers=BOB,
            ) as s:
                events = [line for line in s.iter_lines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]" and len(events) >= 5
        assert thread.is_alive()  # the big request was held all along
    finally:
        release.set()
        thread.join(600)
        model.count_many = real  # type: ignore[method-assign]
    r = result["r"]
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == len(texts)


# -- fair batching across tenants, by weight (a stand-in model: no weights needed) ------------
class _HeldModel:
    """Counts 3 tokens a text; the first forward pass waits for `release`."""

    def __init__(self) -> None:
        self.first = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def count_many(self, texts: list[str]) -> list[int]:
        return [3] * len(texts)

    def embed(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            self.first.set()
            assert self.release.wait(WAIT_S)
        return torch.zeros(len(texts), 4)


async def test_a_big_request_does_not_make_another_tenants_text_wait() -> None:
    model = _HeldModel()
    batcher = EmbeddingBatcher(model, max_batch_tokens=10_000, max_batch_texts=8, max_delay=0.001)  # type: ignore[arg-type]
    batcher.start()
    try:
        big = asyncio.create_task(batcher.embed([f"a{i}" for i in range(300)], "alice"))
        assert await asyncio.to_thread(model.first.wait, WAIT_S)  # alice's first batch is running
        small = asyncio.create_task(batcher.embed(["b"], "bob"))
        for _ in range(100):  # bob's text is queued once its task has run to its first await
            if "bob" in batcher._queues:
                break
            await asyncio.sleep(0)
        assert "bob" in batcher._queues
        model.release.set()
        assert len(await asyncio.wait_for(small, WAIT_S)) == 1
        # Bob went in the very next batch, beside alice's texts, not after her other 292.
        assert batcher.batch_tenants[0] == ["alice"] * 8
        assert "bob" in batcher.batch_tenants[1] and "alice" in batcher.batch_tenants[1]
        assert len(await asyncio.wait_for(big, WAIT_S)) == 300
        assert sum(batcher.batches) == 301
    finally:
        model.release.set()
        await batcher.stop()


async def test_round_robin_takes_turns_and_keeps_the_token_budget() -> None:
    model = _HeldModel()
    model.calls = 1  # no held batch
    batcher = EmbeddingBatcher(model, max_batch_tokens=12, max_batch_texts=8, max_delay=0.001)  # type: ignore[arg-type]
    # Queue before the loop runs, so the first batches see all three tenants.
    loop = asyncio.get_running_loop()
    tasks = [
        loop.create_task(batcher.embed([f"{t}{i}" for i in range(n)], t))
        for t, n in (("alice", 10), ("bob", 2), ("carol", 1))
    ]
    for _ in range(100):
        if len(batcher._queues) == 3:
            break
        await asyncio.sleep(0)
    batcher.start()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    finally:
        await batcher.stop()
    assert max(batcher.batches) <= 4  # 12 tokens / 3 a text
    assert batcher.batch_tenants[0] == ["alice", "bob", "carol", "alice"]
    assert batcher.batch_tenants[1] == ["bob", "alice", "alice", "alice"]
    assert sum(batcher.batches) == 13


# -- the tokeniser pool is bounded ---------------------------------------------------------------
class _HeldPool:
    """A gateway whose tokeniser holds any prompt starting with "held" until released, and
    records the thread each prompt was tokenised on."""

    def __init__(self, *, inline_chars: int) -> None:
        from services.inference.admission import Admission, Limits
        from services.inference.gateway import Gateway, InputLimits
        from services.inference.model.tokenizer import ByteTokenizer

        self.started, self.release = threading.Event(), threading.Event()
        self.threads: dict[str, str] = {}
        pool = self

        class HeldTokenizer(ByteTokenizer):
            def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
                pool.threads[text] = threading.current_thread().name
                if text.startswith("held"):
                    pool.started.set()
                    assert pool.release.wait(WAIT_S)
                return super().encode(text, add_bos=add_bos)

        self.gateway = Gateway(
            None,  # type: ignore[arg-type]  # tokenising needs no engine
            Admission([], Limits()),
            model_name=MODEL,
            tokenizer=HeldTokenizer(),
            input_limits=InputLimits(
                tokenize_threads=1, tokenize_max_pending=1, tokenize_inline_chars=inline_chars
            ),
        )


async def test_tokenising_past_the_pending_bound_is_a_503() -> None:
    from services.inference.errors import Overloaded
    from services.inference.gateway import CompletionParams
    from services.inference.model.tokenizer import ByteTokenizer

    pool = _HeldPool(inline_chars=0)
    held = CompletionParams(prompt="held")
    first = asyncio.create_task(pool.gateway.tokenize([held]))
    try:
        assert await asyncio.to_thread(pool.started.wait, WAIT_S)
        with pytest.raises(Overloaded) as busy:
            await pool.gateway.tokenize([CompletionParams(prompt="next")])
        assert busy.value.status == 503 and busy.value.retry_after
    finally:
        pool.release.set()
    await asyncio.wait_for(first, WAIT_S)
    assert held.encoded == ByteTokenizer().encode("held")
    after = CompletionParams(prompt="after")
    await pool.gateway.tokenize([after])  # the bound is free again
    assert after.encoded == ByteTokenizer().encode("after")


async def test_short_prompts_are_tokenised_on_the_loop_long_ones_on_the_pool() -> None:
    """A short prompt never queues for the pool (not even behind a busy one, not a 503): the
    hop costs more than the tokenising; one past tokenize_inline_chars goes to the pool."""
    from services.inference.errors import Overloaded
    from services.inference.gateway import CompletionParams
    from services.inference.model.tokenizer import ByteTokenizer

    pool = _HeldPool(inline_chars=8)
    held = CompletionParams(prompt="held" * 3)  # 12 characters: the pool
    first = asyncio.create_task(pool.gateway.tokenize([held]))
    try:
        assert await asyncio.to_thread(pool.started.wait, WAIT_S)
        short = [CompletionParams(prompt="abcd"), CompletionParams(prompt="efgh")]  # 8 together
        await pool.gateway.tokenize(short)  # the pool is full, yet no 503 and no wait
        assert [p.encoded for p in short] == [ByteTokenizer().encode("abcd"), ByteTokenizer().encode("efgh")]
        assert pool.threads["abcd"] == pool.threads["efgh"] == threading.current_thread().name
        with pytest.raises(Overloaded):  # 9 characters together: the pool, which is full
            await pool.gateway.tokenize([CompletionParams(prompt="abcd"), CompletionParams(prompt="efghi")])
    finally:
        pool.release.set()
    await asyncio.wait_for(first, WAIT_S)
    assert pool.threads["heldheldheld"].startswith("tokenize")


async def test_batches_follow_the_tenants_weights() -> None:
    """Deficit round robin: weight 3 takes three texts a turn, weight 1 one, weight 0.5 one
    every other turn."""
    model = _HeldModel()
    model.calls = 1  # no held batch
    batcher = EmbeddingBatcher(model, max_batch_tokens=10_000, max_batch_texts=12, max_delay=0.001)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    tasks = [
        loop.create_task(batcher.embed([f"{t}{i}" for i in range(40)], t, weight=w))
        for t, w in (("alice", 3.0), ("bob", 1.0), ("carol", 0.5))
    ]
    for _ in range(100):
        if len(batcher._queues) == 3:
            break
        await asyncio.sleep(0)
    batcher.start()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    finally:
        await batcher.stop()
    first = batcher.batch_tenants[0]
    # Turns: a3 b1 c0 | a3 b1 c1 | a3 (full at 12)
    assert first == ["alice"] * 3 + ["bob"] + ["alice"] * 3 + ["bob", "carol"] + ["alice"] * 3
    assert sum(batcher.batches) == 120
