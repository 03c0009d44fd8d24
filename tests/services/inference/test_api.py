"""HTTP API against a real server: results, SSE, errors, cancellation, jobs, scoring, metrics."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from .conftest import LiveServer

ALICE = {"Authorization": "Bearer dev-alice-key"}
BOB = {"Authorization": "Bearer dev-bob-key"}
ADMIN = {"Authorization": "Bearer dev-admin-key"}


def _client(server: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60)


def _sse(client: httpx.Client, body: dict, headers=ALICE) -> list[dict]:
    events = []
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                if data == "[DONE]":
                    break
                events.append(json.loads(data))
    return events


def _wait_idle(server: LiveServer, timeout: float = 30) -> None:
    eng = server.runtime.engine
    deadline = time.monotonic() + timeout
    while eng.stats().running or eng.stats().waiting or eng.cache.used_tokens:
        assert time.monotonic() < deadline, f"engine not idle: {eng.stats()}"
        time.sleep(0.01)


def test_completion_and_sse_stream_agree(live_server: LiveServer) -> None:
    with _client(live_server) as c:
        body = {"prompt": "Once upon a time", "max_tokens": 12, "ignore_eos": True}
        r = c.post("/v1/completions", json=body, headers=ALICE)
        assert r.status_code == 200, r.text
        out = r.json()
        choice = out["choices"][0]
        assert len(choice["token_ids"]) == 12 and choice["finish_reason"] == "length"
        assert out["usage"] == {
            "prompt_tokens": 17,
            "completion_tokens": 12,
            "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0},  # 17 tokens: no full 16-token block cached yet
        }
        events = _sse(c, body)
        tokens = [e["choices"][0]["token_id"] for e in events if e["choices"][0]["finish_reason"] is None]
        assert tokens == choice["token_ids"]
        assert "".join(e["choices"][0]["text"] for e in events) == choice["text"]
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        assert events[-1]["usage"]["completion_tokens"] == 12


def test_seeded_sampling_is_reproducible_over_http(live_server: LiveServer) -> None:
    with _client(live_server) as c:
        body = {
            "prompt": "abc",
            "max_tokens": 10,
            "temperature": 1.5,
            "top_p": 0.95,
            "seed": 7,
            "ignore_eos": True,
        }
        a = c.post("/v1/completions", json=body, headers=ALICE).json()["choices"][0]["token_ids"]
        b = c.post("/v1/completions", json=body, headers=BOB).json()["choices"][0]["token_ids"]
        assert a == b


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"prompt": "x", "max_tokens": 0}, 400, "body.max_tokens"),
        ({"prompt": "x", "max_tokens": 257}, 400, "body.max_tokens"),
        ({"prompt": "x" * 300}, 400, "body.prompt"),  # OpenAI: context_length_exceeded is a 400
        ({"prompt": "x", "top_p": 0}, 400, "body.top_p"),
        ({"prompt": "x", "priority": "urgent"}, 400, "body.priority"),
        ({"prompt": "x", "model": "gpt-9"}, 404, "body.model"),
        ({"max_tokens": 3}, 400, "body.prompt"),
        ({"prompt": "x", "seed": 2**64}, 400, "body.seed"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "body.stop"),
    ],
)
def test_bad_input_names_the_field(live_server: LiveServer, body: dict, status: int, field: str) -> None:
    with _client(live_server) as c:
        r = c.post("/v1/completions", json=body, headers=ALICE)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    # OpenAI's shape (param is the field without its part), plus the project's `field`.
    assert err["field"] == field and err["type"] == "invalid_request_error" and err["message"]
    assert err["param"] == field.removeprefix("body.") and "code" in err


def test_unknown_fields_are_ignored_as_openai_does(live_server: LiveServer) -> None:
    with _client(live_server) as c:
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "bogus": 1}, headers=ALICE)
    assert r.status_code == 200, r.text


def test_auth_errors(live_server: LiveServer) -> None:
    with _client(live_server) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dev-alice-key"}):
            r = c.post("/v1/completions", json={"prompt": "x"}, headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_api_key"
        assert (
            c.post("/v1/completions", json={"prompt": "x"}, headers={"X-API-Key": "dev-bob-key"}).status_code
            == 200
        )
        assert c.get("/v1/admin/state", headers=ALICE).status_code == 401
        r = c.post(
            "/v1/completions", content=b"{not json", headers={**ALICE, "content-type": "application/json"}
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def _cancelled_count() -> float:
    return (
        REGISTRY.get_sample_value(
            "inference_requests_finished_total", {"tenant": "alice", "reason": "cancelled"}
        )
        or 0
    )


def test_disconnect_frees_the_sequence(live_server: LiveServer) -> None:
    eng = live_server.runtime.engine
    # Slow each step down (5 ms) so 256 tokens take over a second: a finish by length would be
    # visible as such, not mistaken for a cancel.
    eng.step_observer = lambda plan: time.sleep(0.005)
    try:
        with _client(live_server) as c:
            body = {"prompt": "long", "max_tokens": 256, "ignore_eos": True, "stream": True}
            before = _cancelled_count()
            with c.stream("POST", "/v1/completions", json=body, headers=ALICE) as r:
                got = 0
                for line in r.iter_lines():
                    got += line.startswith("data: ")
                    if got == 2:
                        break
                assert eng.stats().running == 1 and eng.cache.used_tokens > 0
            # Response closed mid-stream: the engine drops it instead of generating 254 more.
            _wait_idle(live_server)
            assert _cancelled_count() == before + 1
            # Non-streaming: the client gives up (timeout) and the sequence goes too.
            with pytest.raises(httpx.ReadTimeout):
                c.post("/v1/completions", json={**body, "stream": False}, headers=ALICE, timeout=0.3)
            _wait_idle(live_server)
            assert _cancelled_count() == before + 2
    finally:
        eng.step_observer = None


def test_jobs_are_idempotent_and_match_completions(live_server: LiveServer) -> None:
    with _client(live_server) as c:
        body = {"prompt": "job prompt", "max_tokens": 8, "ignore_eos": True}
        direct = c.post("/v1/completions", json=body, headers=ALICE).json()["choices"][0]
        r1 = c.post("/v1/jobs", json=body, headers={**ALICE, "Idempotency-Key": "k-1"})
        r2 = c.post("/v1/jobs", json=body, headers={**ALICE, "Idempotency-Key": "k-1"})
        assert (r1.status_code, r2.status_code) == (202, 200)
        assert r1.json()["id"] == r2.json()["id"]
        conflict = c.post(
            "/v1/jobs", json={**body, "max_tokens": 9}, headers={**ALICE, "Idempotency-Key": "k-1"}
        )
        assert conflict.status_code == 409 and conflict.json()["error"]["field"] == "header.idempotency-key"
        # Keys are per tenant: bob's k-1 is a different job.
        other = c.post("/v1/jobs", json=body, headers={**BOB, "Idempotency-Key": "k-1"})
        assert other.status_code == 202 and other.json()["id"] != r1.json()["id"]
        job_id = r1.json()["id"]
        deadline = time.monotonic() + 30
        while (job := c.get(f"/v1/jobs/{job_id}", headers=ALICE).json())["state"] not in (
            "succeeded",
            "failed",
        ):
            assert job["state"] in ("queued", "running")
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert job["state"] == "succeeded"
        assert job["result"]["token_ids"] == direct["token_ids"]
        assert c.get(f"/v1/jobs/{job_id}", headers=BOB).status_code == 404  # not yours
        assert c.get("/v1/jobs/job-nope", headers=ALICE).status_code == 404


def test_job_cancel_frees_capacity(live_server: LiveServer) -> None:
    with _client(live_server) as c:
        body = {"prompt": "cancel me", "max_tokens": 256, "ignore_eos": True}
        job = c.post("/v1/jobs", json=body, headers=ALICE).json()
        cancelled = c.post(f"/v1/jobs/{job['id']}/cancel", headers=ALICE).json()
        assert cancelled["state"] == "cancelled"
        _wait_idle(live_server)
        assert c.get(f"/v1/jobs/{job['id']}", headers=ALICE).json()["state"] == "cancelled"


def test_score_is_consistent_with_generation(live_server: LiveServer) -> None:
    with _client(live_server) as c:
        prompt = "The answer is"
        greedy = c.post(
            "/v1/completions", json={"prompt": prompt, "max_tokens": 1, "ignore_eos": True}, headers=ALICE
        ).json()["choices"][0]["token_ids"][0]
        # Single-byte candidates: the greedy token must have the highest log-prob of all.
        cands = sorted({chr(greedy), "a", "Z", "0", " ", "?"} if greedy < 128 else {"a", "Z", "0", " ", "?"})
        r = c.post("/v1/score", json={"prompt": prompt, "candidates": cands}, headers=ALICE)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert abs(sum(x["prob"] for x in results) - 1) < 1e-6
        for x in results:
            assert x["logprob"] <= 0
            assert abs(x["logprob"] - sum(x["token_logprobs"])) < 1e-6
        if greedy < 128:
            best = max(results, key=lambda x: x["logprob"])
            assert best["candidate"] == chr(greedy)
        r = c.post("/v1/score", json={"prompt": prompt, "candidates": []}, headers=ALICE)
        assert r.status_code == 400 and r.json()["error"]["field"] == "body.candidates"


def test_models_health_and_metrics(live_server: LiveServer) -> None:
    with _client(live_server) as c:
        ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert "pg-byte-tiny" in ids
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        c.post("/v1/completions", json={"prompt": "metrics", "max_tokens": 3}, headers=ALICE)
        text = c.get("/metrics").text
    for name in (
        "inference_time_to_first_token_seconds_bucket",
        "inference_time_per_output_token_seconds_bucket",
        "inference_request_latency_seconds_bucket",
        "inference_queue_wait_seconds_bucket",
        "inference_batch_size_bucket",
        "inference_step_tokens_bucket",
        "inference_kv_cache_used_tokens",
        "inference_kv_cache_capacity_tokens",
        "inference_admissions_total",
        "inference_tokens_per_second",
        'inference_generated_tokens_total{class="interactive",tenant="alice"}',
        'inference_prompt_tokens_total{tenant="alice"}',
    ):
        assert name in text, name


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_fields = st.sampled_from(
    [
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "seed",
        "stream",
        "priority",
        "deadline_ms",
        "model",
        "x",
        "n",
        "stop",
        "logprobs",
        "echo",
        "presence_penalty",
    ]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(_fields, _json_values, max_size=6))
def test_malformed_completion_bodies_get_4xx_json_never_500(live_server: LiveServer, body: dict) -> None:
    if isinstance(body.get("max_tokens"), int) and 0 < body["max_tokens"] <= 256:
        body["max_tokens"] = min(body["max_tokens"], 4)  # keep valid ones quick
    body["stream"] = False
    with httpx.Client(base_url=live_server.url, timeout=60) as c:
        r = c.post("/v1/completions", json=body, headers=ALICE)
    assert r.status_code in (200, 400, 404), r.text
    if r.status_code != 200:
        err = r.json()["error"]
        assert err["type"] and err["message"]
        assert err["field"] is None or err["field"].startswith("body")
