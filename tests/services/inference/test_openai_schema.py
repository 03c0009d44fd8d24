"""schemathesis against a live server's own /openapi.json: generated requests, valid and not,
to every operation, as a tenant. No answer may be a 5xx (one exception: the 504 a request's own
deadline_ms asks for), and every status answered must be one the document lists for that
operation. Bounded: a few examples per operation and mode (PG_SCHEMATHESIS_EXAMPLES for more)."""

from __future__ import annotations

import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, note, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from .conftest import LiveServer

ALICE = {"Authorization": "Bearer dev-alice-key"}
EXAMPLES = int(os.environ.get("PG_SCHEMATHESIS_EXAMPLES", "10"))  # per operation and mode


@pytest.fixture(scope="module")
def server():
    # Small outputs keep each generated completion quick; the limits still answer 400 past them.
    s = LiveServer(max_output_tokens=8, max_prompt_tokens=64, max_seq_len=128, embeddings=True)
    # The embedding model loads in the background; the first request waits for it, and then
    # /readyz is 200 (a 503 there before is documented but would count as a server error).
    r = httpx.post(f"{s.url}/v1/embeddings", json={"input": "warm up"}, headers=ALICE, timeout=120)
    assert r.status_code == 200, r.text
    yield s
    s.stop()


def not_a_server_error_save_the_clients_deadline(ctx, response, case):
    """not_a_server_error, but a 504 (or 503 at admission) for a request whose own `deadline_ms`
    passed while it waited (or would have) is the answer that request asked for (a client-set
    deadline, like gRPC's DEADLINE_EXCEEDED), not a fault: deadline_ms = 1 is valid and expires."""
    body = case.body if isinstance(case.body, dict) else {}
    if response.status_code in (503, 504) and body.get("deadline_ms") is not None:
        # 504: the deadline passed while it waited; 503: admission saw at once that the
        # estimated queue wait would miss it (with Retry-After). Both are the client's deadline.
        assert response.json()["error"]["code"] == "deadline"
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [not_a_server_error_save_the_clients_deadline, status_code_conformance]


def _fuzz(op, mode: GenerationMode) -> None:
    @given(case=op.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        note(f"{op.label} ({mode.value})")
        case.call_and_validate(headers=ALICE, checks=CHECKS, timeout=60)

    try:
        run()
    except Unsatisfiable:
        # An operation without parameters or body (GET /healthz) has no invalid request.
        if mode is not GenerationMode.NEGATIVE:
            raise


def test_no_server_errors_and_every_status_documented(server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"POST /v1/chat/completions", "POST /v1/embeddings", "GET /v1/models/{model}"} <= {
        op.label for op in operations
    }
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(op, mode)
