"""create_app over a real socket: uniform JSON errors, request ids, /healthz and /readyz."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Query
from pydantic import BaseModel, Field

from libs.service.app import ApiError, create_app
from libs.service.health import Health
from libs.service.logging import configure_logging, get_logger
from tests.libs.service.conftest import serve_in_thread


class CrawlRequest(BaseModel):
    seeds: list[str] = Field(min_length=1)
    max_pages: int = Field(100, gt=0)


def build(health: Health | None = None) -> FastAPI:
    app = create_app("demo", title="Demo", version="1.2.3", health=health)
    log = get_logger("tests.demo")

    @app.post("/v1/crawls")
    async def start(body: CrawlRequest) -> dict:
        log.info("starting", extra={"seeds": len(body.seeds)})
        return {"seeds": body.seeds}

    @app.get("/v1/crawls/{crawl_id}")
    async def get(crawl_id: str, limit: int = Query(10, le=100)) -> dict:
        if crawl_id == "missing":
            raise ApiError(status=404, type="not_found", message="no crawl 'missing'", field="crawl_id")
        if crawl_id == "busy":
            raise ApiError(status=503, type="overloaded", message="try later", headers={"Retry-After": "3"})
        if crawl_id == "boom":
            raise RuntimeError("db password is hunter2")
        return {"id": crawl_id, "limit": limit}

    return app


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("demo", "INFO", stream=stream)
    yield stream
    for handler in list(logging.getLogger().handlers):
        if type(handler).__name__ == "_ServiceHandler":
            logging.getLogger().removeHandler(handler)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with serve_in_thread(build()) as url, httpx.Client(base_url=url, timeout=10) as c:
        yield c


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert {"type", "message", "field"} <= set(body["error"])
    return body["error"]


def test_valid_request_passes_through(client: httpx.Client) -> None:
    r = client.post("/v1/crawls", json={"seeds": ["http://a/"]})
    assert r.status_code == 200 and r.json() == {"seeds": ["http://a/"]}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"seeds": ["ok", 7]}, "body.seeds.1"),
        ({"seeds": []}, "body.seeds"),
        ({}, "body.seeds"),
        ({"seeds": ["a"], "max_pages": "lots"}, "body.max_pages"),
        ({"seeds": ["a"], "max_pages": 0}, "body.max_pages"),
        ([1, 2], "body"),
    ],
)
def test_validation_errors_are_422_naming_the_field(
    client: httpx.Client, payload: object, field: str
) -> None:
    r = client.post("/v1/crawls", json=payload)
    assert r.status_code == 422
    err = error_of(r)
    assert err["type"] == "invalid_request" and err["field"] == field
    assert field in err["message"]


def test_query_and_path_validation_names_the_parameter(client: httpx.Client) -> None:
    r = client.get("/v1/crawls/c1", params={"limit": "many"})
    assert r.status_code == 422 and error_of(r)["field"] == "query.limit"
    r = client.get("/v1/crawls/c1", params={"limit": 1000})
    assert r.status_code == 422 and error_of(r)["field"] == "query.limit"


@pytest.mark.parametrize("body", [b"{not json", b'{"seeds": ["a"', b"\xff\xfe", b"[1,]"])
def test_malformed_json_is_400(client: httpx.Client, body: bytes) -> None:
    r = client.post("/v1/crawls", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["type"] == "malformed_json" and err["field"] == "body"


def test_404_and_405_are_json(client: httpx.Client) -> None:
    r = client.get("/no/such/route")
    assert r.status_code == 404 and error_of(r)["type"] == "not_found"
    assert "/no/such/route" in error_of(r)["message"]
    r = client.delete("/v1/crawls")
    assert r.status_code == 405 and error_of(r)["type"] == "method_not_allowed"
    assert r.headers["allow"] == "POST"


def test_api_error_keeps_status_type_field_and_headers(client: httpx.Client) -> None:
    r = client.get("/v1/crawls/missing")
    assert r.status_code == 404
    assert error_of(r) == {"type": "not_found", "message": "no crawl 'missing'", "field": "crawl_id"}
    r = client.get("/v1/crawls/busy")
    assert r.status_code == 503 and r.headers["retry-after"] == "3"
    assert error_of(r)["type"] == "overloaded"


def test_unhandled_error_is_500_without_traceback_and_logged_with_request_id(logs: io.StringIO) -> None:
    with serve_in_thread(build()) as url:
        r = httpx.get(f"{url}/v1/crawls/boom", headers={"X-Request-ID": "trace-me-1"}, timeout=10)
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "trace-me-1"
    err = error_of(r)
    assert err["type"] == "internal" and err["request_id"] == "trace-me-1"
    assert "hunter2" not in r.text and "Traceback" not in r.text and "RuntimeError" not in r.text
    records = [json.loads(line) for line in logs.getvalue().splitlines()]
    [failure] = [rec for rec in records if rec["msg"] == "unhandled error"]
    assert failure["request_id"] == "trace-me-1" and failure["level"] == "ERROR"
    assert "RuntimeError: db password is hunter2" in failure["exc"]
    [access] = [rec for rec in records if rec["msg"] == "request" and rec.get("path") == "/v1/crawls/boom"]
    assert access["status"] == 500 and access["route"] == "/v1/crawls/{crawl_id}"


def test_request_id_is_honoured_when_well_formed_else_generated(logs: io.StringIO) -> None:
    with serve_in_thread(build()) as url, httpx.Client(base_url=url, timeout=10) as c:
        r = c.post("/v1/crawls", json={"seeds": ["a"]}, headers={"X-Request-ID": "abc-123"})
        assert r.headers["x-request-id"] == "abc-123"
        for bad in ["has space", "x" * 200, "semi;colon", "-leading-dash"]:
            r = c.post("/v1/crawls", json={"seeds": ["a"]}, headers={"X-Request-ID": bad})
            assert r.status_code == 200
            assert r.headers["x-request-id"] != bad and len(r.headers["x-request-id"]) == 32
        generated = {c.get("/healthz").headers["x-request-id"] for _ in range(5)}
        assert len(generated) == 5
    records = [json.loads(line) for line in logs.getvalue().splitlines()]
    handler_lines = [rec for rec in records if rec["msg"] == "starting"]
    assert handler_lines[0]["request_id"] == "abc-123"
    assert all(len(rec["request_id"]) == 32 for rec in handler_lines[1:])


def test_openapi_docs_are_served(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["info"] == {"title": "Demo", "version": "1.2.3"}
    assert "/v1/crawls" in spec["paths"] and "/readyz" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_readyz_follows_ready_flag_checks_and_draining() -> None:
    health = Health()
    state = {"redis": True}
    health.add_check("redis", lambda: state["redis"])

    async def slow() -> bool:
        await asyncio.sleep(5)
        return True

    def raising() -> bool:
        raise ConnectionError("refused")

    with serve_in_thread(build(health)) as url, httpx.Client(base_url=url, timeout=10) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")  # not yet set ready
        assert r.status_code == 503 and r.json()["status"] == "not_ready" and r.json()["ready"] is False

        health.set_ready(True)
        r = c.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json()["checks"]["redis"]["ok"] is True

        state["redis"] = False
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["redis"] == {
            "ok": False,
            "error": "check returned False",
            "duration_ms": r.json()["checks"]["redis"]["duration_ms"],
        }
        state["redis"] = True

        health.add_check("model", slow, timeout=0.2)
        health.add_check("disk", raising)
        r = c.get("/readyz")
        checks = r.json()["checks"]
        assert r.status_code == 503
        assert checks["model"]["error"] == "timed out after 0.2s"
        assert checks["disk"]["error"] == "ConnectionError: refused"
        assert checks["redis"]["ok"] is True
        health.remove_check("model")
        health.remove_check("disk")
        assert c.get("/readyz").status_code == 200

        health.set_draining()
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "draining"
        assert c.get("/healthz").status_code == 200  # still alive while draining


def test_sync_check_runs_off_the_event_loop() -> None:
    """A blocking check must not stall other requests: /healthz answers while it sleeps."""
    health = Health(ready=True)
    started, release = threading.Event(), threading.Event()

    def blocking_check() -> bool:
        started.set()
        return release.wait(30)

    health.add_check("blocking", blocking_check, timeout=30)
    with serve_in_thread(build(health)) as url, httpx.Client(base_url=url, timeout=60) as c:
        result: dict[str, int] = {}
        t = threading.Thread(target=lambda: result.setdefault("status", c.get("/readyz").status_code))
        t.start()
        try:
            assert started.wait(30), "the readiness check never ran"
            # The check is blocked inside /readyz right now; the loop still answers others.
            assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
            assert "status" not in result
        finally:
            release.set()
            t.join(timeout=30)
        assert result["status"] == 200


def test_two_apps_in_one_process_do_not_clash() -> None:
    a, b = create_app("svc-a"), create_app("svc-b")
    with serve_in_thread(a) as ua, serve_in_thread(b) as ub:
        assert httpx.get(f"{ua}/healthz").status_code == 200
        assert httpx.get(f"{ub}/healthz").status_code == 200


def test_health_rejects_nonpositive_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Health().add_check("x", lambda: True, timeout=0)
