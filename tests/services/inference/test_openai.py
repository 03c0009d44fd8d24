"""The official `openai` client against a real server: completions, chat (streaming and not),
embeddings, models, errors, and the request options (stop, n, logprobs, seed, echo, penalties).

The built-in model is untrained (it repeats itself), so the tests compare the API with itself:
a stop string against the same generation without it, streaming against non-streaming, a
choice of n against the n = 1 request, base64 against float, never against fixed text.
"""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import time

import httpx
import openai
import pytest

from services.inference.admission import hash_key
from services.inference.chat import render_chat

from .conftest import LiveServer

MODEL = "pg-byte-tiny"
TENANTS = {
    "alice": {"key_sha256": hash_key("dev-alice-key")},
    "carol": {"key_sha256": hash_key("k-carol"), "requests_per_s": 0.001, "burst_requests": 1},
}
ADMIN = {"Authorization": "Bearer dev-admin-key"}


@pytest.fixture(scope="module")
def server():
    s = LiveServer(embeddings=True, tenants=TENANTS)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="dev-alice-key", max_retries=0, timeout=120) as c:
        yield c


def _greedy(client: openai.OpenAI, prompt: str, **kw) -> str:
    r = client.completions.create(model=MODEL, prompt=prompt, temperature=0, **kw)
    return r.choices[0].text


# -- completions ---------------------------------------------------------------------------------
def test_completion_and_its_stream_agree(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.object == "text_completion" and r.model == MODEL
    (choice,) = r.choices
    assert choice.index == 0 and choice.finish_reason == "length" and choice.text
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (17, 10, 27)
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="Once upon a time",
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    # include_usage: one last chunk with no choices carries the usage; the others carry none.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    # the same counts; the stream came second, so its prompt may have come from the cache
    assert chunks[-1].usage.model_dump(exclude={"prompt_tokens_details"}) == r.usage.model_dump(
        exclude={"prompt_tokens_details"}
    )
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_string_across_token_boundaries(client: openai.OpenAI) -> None:
    """Every token of the byte model is one byte, so a 3-character stop spans three tokens."""
    kw = dict(max_tokens=24, temperature=8.0, seed=11, extra_body={"ignore_eos": True})
    full = client.completions.create(model=MODEL, prompt="abc", **kw).choices[0].text
    assert len(full) >= 12
    stop = full[6:9]
    want = full[: full.find(stop)]
    got = client.completions.create(model=MODEL, prompt="abc", stop=stop, **kw)
    assert (got.choices[0].text, got.choices[0].finish_reason) == (want, "stop")
    assert got.usage is not None and got.usage.completion_tokens < 24  # it ended there, early
    # Streaming releases nothing of the stop string, even though it arrives byte by byte.
    stream = client.completions.create(model=MODEL, prompt="abc", stop=[stop, "never"], stream=True, **kw)
    chunks = [c.choices[0] for c in stream if c.choices]
    assert "".join(c.text for c in chunks) == want
    assert chunks[-1].finish_reason == "stop"


def test_n_choices_and_list_prompts(client: openai.OpenAI) -> None:
    kw = dict(model=MODEL, max_tokens=6, temperature=8.0, seed=5, extra_body={"ignore_eos": True})
    one = client.completions.create(prompt="xyz", **kw).choices[0].text
    three = client.completions.create(prompt="xyz", n=3, **kw)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert three.choices[0].text == one  # choice 0 is what n = 1 gives
    assert three.usage is not None
    assert three.usage.prompt_tokens == 4 and three.usage.completion_tokens == 18
    greedy = dict(model=MODEL, max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    listed = client.completions.create(prompt=["first", "second one"], **greedy)
    assert [c.index for c in listed.choices] == [0, 1]
    for prompt, choice in zip(["first", "second one"], listed.choices, strict=True):
        assert choice.text == client.completions.create(prompt=prompt, **greedy).choices[0].text
    # Token-id prompts are prompts too: BOS + the bytes of "first" is the same prompt.
    ids = client.completions.create(prompt=[256, *b"first"], **greedy)
    assert ids.choices[0].text == listed.choices[0].text


def test_completion_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL, prompt="log", max_tokens=6, temperature=0, logprobs=3, extra_body={"ignore_eos": True}
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == r.choices[0].text  # ASCII here: one character per token
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    for token_lp, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 3 and token_lp <= 0
        assert math.isclose(token_lp, max(top.values()), abs_tol=1e-6)  # greedy: the best one
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-5


def test_echo_prepends_the_prompt(client: openai.OpenAI) -> None:
    plain = _greedy(client, "echo me", max_tokens=4)
    r = client.completions.create(
        model=MODEL, prompt="echo me", max_tokens=4, temperature=0, echo=True, logprobs=1
    )
    assert r.choices[0].text == "echo me" + plain
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    assert "".join(lp.tokens).startswith("echo me")
    # Every prompt token after BOS has a log-prob given what precedes it; then the 4 generated.
    assert len(lp.token_logprobs) == len("echo me") + 4
    assert all(v is not None and v <= 0 for v in lp.token_logprobs)


def test_seed_makes_sampling_reproducible(client: openai.OpenAI) -> None:
    kw = dict(model=MODEL, prompt="seed", max_tokens=12, temperature=8.0, extra_body={"ignore_eos": True})
    runs = {s: [client.completions.create(seed=s, **kw).choices[0].text for _ in range(2)] for s in range(4)}
    for a, b in runs.values():
        assert a == b
    assert len({a for a, _ in runs.values()}) > 1  # and the seed matters
    # The whole unsigned 64-bit range is a seed; past it is a 400 naming the field.
    assert client.completions.create(seed=2**64 - 1, **kw).choices[0].text
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(seed=2**64, **kw)
    assert err.value.code == "invalid_value" and err.value.param == "seed"


def test_penalties_change_what_greedy_repeats(client: openai.OpenAI) -> None:
    prompt, kw = "aaaa", dict(max_tokens=16, extra_body={"ignore_eos": True}, user="end-user-7")
    plain = _greedy(client, prompt, **kw)
    assert len(set(plain)) <= 2  # the untrained model repeats itself
    assert _greedy(client, prompt, frequency_penalty=2.0, **kw) != plain
    # presence_penalty is a one-off 2.0, less than this model's margin: accepted, same text
    # (test_openai_units checks what it does to the logits).
    assert _greedy(client, prompt, presence_penalty=2.0, **kw) == plain
    with pytest.raises(openai.BadRequestError):
        _greedy(client, prompt, presence_penalty=2.5, **kw)


# -- chat ----------------------------------------------------------------------------------------
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say something."},
]


def test_chat_and_its_stream_agree(client: openai.OpenAI) -> None:
    kw = dict(model=MODEL, messages=MESSAGES, max_completion_tokens=8, temperature=0)
    r = client.chat.completions.create(**kw)
    assert r.object == "chat.completion"
    (choice,) = r.choices
    assert choice.message.role == "assistant" and choice.finish_reason in ("length", "stop")
    # The default template is ChatML; the prompt is its rendering, plus BOS.
    assert r.usage is not None
    assert r.usage.prompt_tokens == len(render_chat(MESSAGES).encode()) + 1
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    # the same counts; the stream came second, so its prompt may have come from the cache
    assert chunks[-1].usage.model_dump(exclude={"prompt_tokens_details"}) == r.usage.model_dump(
        exclude={"prompt_tokens_details"}
    )
    # Without include_usage no chunk is usage-only; max_tokens is the older name of the limit.
    plain = list(
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0, stream=True
        )
    )
    assert all(c.choices for c in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain) == choice.message.content


def test_chat_options(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=5,
        n=2,
        seed=3,
        temperature=8.0,
        logprobs=True,
        top_logprobs=2,
    )
    assert [c.index for c in r.choices] == [0, 1]
    for c in r.choices:
        assert c.logprobs is not None and c.logprobs.content
        # Sampled bytes need not be UTF-8 alone: `bytes` puts the text back together.
        raw = bytes(b for e in c.logprobs.content for b in e.bytes or [])
        assert raw.decode("utf-8", errors="replace") == c.message.content
        for e in c.logprobs.content:
            assert len(e.top_logprobs) == 2 and e.logprob <= 0
            assert e.token.startswith("bytes:") or e.bytes == list(e.token.encode())
    # Streamed with n = 2: both choices arrive, each with its own finish.
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, n=2, stream=True)
    )
    assert {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason} == {0, 1}
    # Content as a list of text parts is the same conversation.
    parts = [{"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi."}]}]
    joined = [{"role": "user", "content": "Say hi."}]
    kw = dict(model=MODEL, max_tokens=4, temperature=0)
    a = client.chat.completions.create(messages=parts, **kw)  # type: ignore[arg-type]
    b = client.chat.completions.create(messages=joined, **kw)  # type: ignore[arg-type]
    assert a.choices[0].message.content == b.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        )
    assert err.value.param == "messages.0.content.0.type"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=2)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user"}], max_tokens=2)  # type: ignore[typeddict-item]
    assert err.value.param == "messages.0.content"


# -- embeddings ----------------------------------------------------------------------------------
def test_embeddings_float_base64_and_dimensions(client: openai.OpenAI, server: LiveServer) -> None:
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1, 2] and floats.usage.prompt_tokens > 0
    vecs = [d.embedding for d in floats.data]
    assert all(len(v) == 384 and math.isclose(sum(x * x for x in v), 1, rel_tol=1e-4) for v in vecs)
    # The client asks for base64 by default and decodes it itself (little-endian float32).
    default = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    for a, b in zip(default.data, floats.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    raw = httpx.post(
        f"{server.url}/v1/embeddings",
        json={"input": texts[0], "encoding_format": "base64"},
        headers={"Authorization": "Bearer dev-alice-key"},
    ).json()["data"][0]["embedding"]
    decoded = struct.unpack("<384f", base64.b64decode(raw))
    assert list(decoded) == pytest.approx(vecs[0], abs=1e-6)
    # dimensions: the first k components, renormalised; past the model's width is a 400.
    short = (
        client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], dimensions=64).data[0].embedding
    )
    head = vecs[0][:64]
    norm = math.sqrt(sum(x * x for x in head))
    assert short == pytest.approx([x / norm for x in head], abs=1e-5)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="all-MiniLM-L6-v2", input="x", dimensions=385)
    assert err.value.param == "dimensions"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")


# -- models --------------------------------------------------------------------------------------
def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[0] == MODEL and "all-MiniLM-L6-v2" in ids
    m = client.models.retrieve(MODEL)
    assert (m.id, m.object, m.owned_by) == (MODEL, "model", "proving-ground") and m.created > 0
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-nope")
    assert err.value.code == "model_not_found"


# -- errors --------------------------------------------------------------------------------------
def test_errors_map_to_the_clients_exceptions(client: openai.OpenAI, server: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=MODEL, prompt="x", max_tokens=0)
    body = bad.value.body
    assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error" and body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as long_prompt:
        client.completions.create(model=MODEL, prompt="x" * 300)
    assert long_prompt.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="x")
    stranger = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with stranger, pytest.raises(openai.AuthenticationError) as auth:
        stranger.completions.create(model=MODEL, prompt="x")
    assert auth.value.code == "invalid_api_key"
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="k-carol", max_retries=0) as carol:
        carol.completions.create(model=MODEL, prompt="x", max_tokens=1)  # the burst of one
        with pytest.raises(openai.RateLimitError) as limited:
            carol.completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert int(limited.value.response.headers["Retry-After"]) >= 1
    assert limited.value.code == "rate_limit_exceeded"
    with httpx.Client(base_url=server.url, timeout=30) as h:
        assert h.post("/v1/admin/kill-switch", json={"enabled": True}, headers=ADMIN).status_code == 200
        try:
            with pytest.raises(openai.InternalServerError) as unavailable:
                client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
        finally:
            h.post("/v1/admin/kill-switch", json={"enabled": False}, headers=ADMIN)
    assert unavailable.value.status_code == 503 and "Retry-After" in unavailable.value.response.headers


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", b'{"prompt": "a\\ud800b"}', "prompt"),
        ("/v1/completions", b'{"prompt": ["ok", "\\udfff"]}', "prompt.1"),
        ("/v1/completions", b'{"prompt": "ok", "stop": "\\ud800"}', "stop"),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "\\ud83d"}]}',
            "messages.0.content",
        ),
        ("/v1/embeddings", b'{"input": ["\\ud800"]}', "input.0"),
        ("/v1/score", b'{"prompt": "p", "candidates": ["\\ud800"]}', "candidates.0"),
    ],
)
def test_lone_surrogates_are_a_400(server: LiveServer, path: str, body: bytes, param: str) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as h:
        r = h.post(
            path,
            content=body,
            headers={"Authorization": "Bearer dev-alice-key", "Content-Type": "application/json"},
        )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_a_stream_whose_client_left_before_it_started_gives_its_tickets_back(server: LiveServer) -> None:
    """Admission happens before the response starts; if sending its first bytes fails, the body
    generators never run (nor their cleanup): the response must still release the tickets."""
    from services.inference.api import _Run, _streaming_response
    from services.inference.gateway import CompletionParams

    gateway = server.runtime.gateway
    admission = gateway.admission
    tenant = admission.authenticate("dev-alice-key")
    before = admission.in_flight("alice")

    async def go() -> None:
        choices = [
            (0, CompletionParams(prompt="x", max_tokens=2)),
            (1, CompletionParams(prompt="y", max_tokens=2)),
        ]
        run = _Run(gateway, tenant, choices, chat=False, model=MODEL)
        assert admission.in_flight("alice") == before + 2

        async def send(message: dict) -> None:
            raise OSError("the client is gone")

        async def receive() -> dict:
            return {"type": "http.disconnect"}

        with pytest.raises(Exception):  # noqa: B017 - Starlette's ClientDisconnect or the OSError
            await _streaming_response(run)({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)

    asyncio.run(go())
    assert admission.in_flight("alice") == before


def test_a_job_honours_stop_strings_as_a_completion_does(server: LiveServer) -> None:
    """A job reads its sequence once it has finished (no per-token events): the stop string is
    found in the finished output, with the same result."""
    body = {"prompt": "jobs", "max_tokens": 20, "temperature": 8.0, "seed": 21, "ignore_eos": True}
    with httpx.Client(
        base_url=server.url, timeout=60, headers={"Authorization": "Bearer dev-alice-key"}
    ) as h:
        full = h.post("/v1/completions", json=body).json()["choices"][0]["text"]
        stop = full[4:7]
        direct = h.post("/v1/completions", json={**body, "stop": stop}).json()["choices"][0]
        job = h.post("/v1/jobs", json={**body, "stop": stop}).json()
        deadline = time.monotonic() + 60
        while (job := h.get(f"/v1/jobs/{job['id']}").json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.02)
    assert job["state"] == "succeeded", job
    assert (job["result"]["text"], job["result"]["finish_reason"]) == (direct["text"], "stop")
    assert direct["text"] == full[: full.find(stop)]


def test_usage_reports_prompt_tokens_served_from_the_prefix_cache(client: openai.OpenAI) -> None:
    """OpenAI's usage.prompt_tokens_details.cached_tokens: 0 the first time a long prompt is
    seen, most of it (whole KV blocks) the second time; the client parses it."""
    prompt = "A long shared system prompt about crawlers, politeness and robots. " * 2
    kw = {"model": MODEL, "prompt": prompt, "max_tokens": 2, "temperature": 0}
    first = client.completions.create(**kw)  # type: ignore[call-overload]
    second = client.completions.create(**kw)  # type: ignore[call-overload]
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert 0 < cached < second.usage.prompt_tokens
    assert second.choices[0].text == first.choices[0].text
