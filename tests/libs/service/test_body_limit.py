"""The request-body bound, over a real socket: 413 with the uniform JSON error before a handler
reads the body, whether the client says its length or streams it chunked."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request

from libs.service.app import create_app
from tests.libs.service.conftest import serve_in_thread

LIMIT = 1000


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, list[int]]]:
    app: FastAPI = create_app("demo", max_body_bytes=LIMIT)
    seen: list[int] = []  # bodies the handler got

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        body = await request.body()
        seen.append(len(body))
        return {"bytes": len(body)}

    with serve_in_thread(app) as base:
        yield base, seen


def chunks(total: int, size: int = 100) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


@pytest.mark.parametrize("total", [0, 1, LIMIT])
def test_bodies_up_to_the_bound_reach_the_handler(served: tuple[str, list[int]], total: int):
    base, seen = served
    assert httpx.post(f"{base}/echo", content=b"x" * total).json() == {"bytes": total}
    # the same body streamed without a length (Transfer-Encoding: chunked)
    assert httpx.post(f"{base}/echo", content=chunks(total)).json() == {"bytes": total}
    assert seen[-2:] == [total, total]


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_bound_is_413_and_never_reaches_the_handler(
    served: tuple[str, list[int]], chunked: bool
):
    base, seen = served
    before = len(seen)
    content = chunks(LIMIT + 1) if chunked else b"x" * (LIMIT + 1)
    r = httpx.post(f"{base}/echo", content=content)
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "payload_too_large"
    assert r.json()["error"]["field"] == "body"
    assert r.headers["x-request-id"]
    assert len(seen) == before
    # the service goes on answering
    assert httpx.post(f"{base}/echo", content=b"ok").json() == {"bytes": 2}
