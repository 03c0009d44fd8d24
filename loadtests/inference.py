"""Locust: the inference server under two tenants (interactive alice, batch-flooding bob).

    make loadtest SERVICE=inference USERS=20 DURATION=60s

User classes are weighted like the benchmark's mix: interactive users send short streaming and
non-streaming completions and embeddings; batch users send long completions at a steady clip.
A 429/503 with Retry-After is admission control doing its job: it is counted as a separate
request name (".. rejected") rather than a failure, so the report separates shed load from
errors. Tenant keys are the dev keys (services/inference/settings.py); override with
PG_LOADTEST_ALICE_KEY / PG_LOADTEST_BOB_KEY.
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, constant_pacing, task

ALICE = os.environ.get("PG_LOADTEST_ALICE_KEY", "dev-alice-key")
BOB = os.environ.get("PG_LOADTEST_BOB_KEY", "dev-bob-key")
PROMPTS = ["The crawler fetched", "Once upon a time", "def fib(n):", "Prometheus scrapes", "Hello"]


def post(user: HttpUser, path: str, name: str, body: dict, key: str, stream: bool = False) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    with user.client.post(
        path, json=body, headers=headers, name=name, stream=stream, catch_response=True
    ) as resp:
        if resp.status_code in (429, 503):
            resp.request_meta["name"] = f"{name} rejected"
            resp.success()
        elif resp.status_code != 200:
            resp.failure(f"{resp.status_code}: {resp.text[:200]}")
        elif stream:
            events = [line for line in resp.iter_lines() if line.startswith(b"data:")]
            if not events or events[-1] != b"data: [DONE]":
                resp.failure("stream did not end with [DONE]")


class InteractiveUser(HttpUser):
    """Tenant alice: short prompts, small outputs, a person's think time."""

    weight = 3
    wait_time = between(0.2, 1.0)

    @task(4)
    def completion(self) -> None:
        body = {
            "prompt": random.choice(PROMPTS),
            "max_tokens": random.randint(8, 32),
            "priority": "interactive",
        }
        post(self, "/v1/completions", "/v1/completions", body, ALICE)

    @task(3)
    def completion_stream(self) -> None:
        body = {"prompt": random.choice(PROMPTS), "max_tokens": 24, "stream": True, "priority": "interactive"}
        post(self, "/v1/completions", "/v1/completions [stream]", body, ALICE, stream=True)

    @task(2)
    def embeddings(self) -> None:
        body = {"input": random.sample(PROMPTS, k=random.randint(1, 4))}
        post(self, "/v1/embeddings", "/v1/embeddings", body, ALICE)

    @task(1)
    def score(self) -> None:
        body = {"prompt": "The answer is", "candidates": [" yes", " no"]}
        post(self, "/v1/score", "/v1/score", body, ALICE)


class BatchUser(HttpUser):
    """Tenant bob: long batch-class generations, sent without think time (the flood)."""

    weight = 1
    wait_time = constant_pacing(0.5)

    @task
    def long_completion(self) -> None:
        body = {
            "prompt": random.choice(PROMPTS) * 8,
            "max_tokens": random.randint(64, 128),
            "priority": "batch",
            "ignore_eos": True,
        }
        post(self, "/v1/completions", "/v1/completions [batch]", body, BOB)
