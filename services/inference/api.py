"""OpenAI-style HTTP API (FastAPI): completions (+SSE), embeddings, score, jobs, models, admin.

Auth: `Authorization: Bearer <key>` (or `X-API-Key`). Every error is
{"error": {"type", "message", "field"}}; 429/503 carry Retry-After. InferenceError is turned
into that body in exactly one place (`_inference_error`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from libs.service.errors import error_response
from services.inference.admission import TenantConfig
from services.inference.errors import InferenceError, Unauthenticated
from services.inference.gateway import CompletionParams, Finish, Gateway, Piece
from services.inference.jobs import JobStore
from services.inference.sequence import Sequence


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="model id (default: the served generator)")
    prompt: str = Field(..., description="text prompt (bytes are tokens)")
    max_tokens: int = Field(16, ge=1, description="tokens to generate at most")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    seed: int | None = Field(None, description="per-request sampling seed (reproducible output)")
    stream: bool = Field(False, description="server-sent events, one per token")
    priority: Literal["interactive", "batch"] = Field("interactive", description="priority class")
    deadline_ms: int | None = Field(None, gt=0, description="reject early (503) if it would wait longer")
    ignore_eos: bool = Field(False, description="keep generating past the end-of-sequence token")

    def params(self) -> CompletionParams:
        return CompletionParams(
            prompt=self.prompt,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            priority=self.priority,
            deadline_ms=self.deadline_ms,
            ignore_eos=self.ignore_eos,
            model=self.model,
        )


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    input: str | list[str] = Field(..., description="one text or a list of texts")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str
    candidates: list[str] = Field(..., min_length=1, max_length=32)


class KillSwitch(BaseModel):
    enabled: bool


def _bearer(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def _finish_body(completion_id: str, model: str, text: str, ids: list[int], fin: Finish) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "token_ids": ids, "finish_reason": fin.reason}],
        "usage": {
            "prompt_tokens": fin.prompt_tokens,
            "completion_tokens": fin.completion_tokens,
            "total_tokens": fin.prompt_tokens + fin.completion_tokens,
        },
        "timing": fin.timing,
    }


async def current_tenant(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> TenantConfig:
    return request.app.state.gateway.admission.authenticate(_bearer(authorization, x_api_key))


async def require_admin(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> None:
    if not request.app.state.gateway.admission.is_admin(_bearer(authorization, x_api_key)):
        raise Unauthenticated("admin key required")


Tenant = Annotated[TenantConfig, Depends(current_tenant)]


def add_routes(app: FastAPI, gateway: Gateway, jobs: JobStore) -> None:
    admission = gateway.admission

    @app.exception_handler(InferenceError)
    async def _inference_error(request: Request, exc: InferenceError) -> JSONResponse:
        return error_response(exc.status, exc.type, exc.message, exc.field, headers=exc.headers())

    app.state.gateway = gateway

    @app.get("/v1/models", tags=["inference"], summary="Served models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": gateway.models()}

    @app.post(
        "/v1/completions",
        tags=["inference"],
        summary="Generate text (SSE with stream=true)",
        responses={429: {"description": "tenant limit"}, 503: {"description": "overloaded"}},
    )
    async def completions(body: CompletionRequest, request: Request, t: Tenant):
        holder: list[Sequence] = []
        stream = await gateway.generate(t, body.params(), on_seq=holder.append, stream_tokens=body.stream)
        model = body.model or gateway.model_name
        if body.stream:
            return StreamingResponse(
                _sse(stream, holder[0], model),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        # Not streaming: still notice a client that hangs up, and free its sequence.
        watcher = asyncio.create_task(_watch_disconnect(request, gateway, holder[0]))
        try:
            text, fin = [], None
            async for item in stream:
                if isinstance(item, Piece):
                    text.append(item.text)
                else:
                    fin = item
        finally:
            watcher.cancel()
        assert fin is not None
        return _finish_body(holder[0].seq_id, model, "".join(text), list(holder[0].output), fin)

    @app.post("/v1/embeddings", tags=["inference"], summary="Sentence embeddings (all-MiniLM-L6-v2)")
    async def embeddings(body: EmbeddingRequest, t: Tenant) -> dict[str, Any]:
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors, tokens = await gateway.embed(t, texts, body.model)
        return {
            "object": "list",
            "model": gateway.embed_model_name,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.post("/v1/score", tags=["inference"], summary="Log-prob of each candidate continuation")
    async def score(body: ScoreRequest, t: Tenant) -> dict[str, Any]:
        results = await gateway.score(t, body.prompt, body.candidates, body.model)
        return {"object": "score", "model": gateway.model_name, "prompt": body.prompt, "results": results}

    @app.post("/v1/jobs", tags=["jobs"], status_code=202, summary="Submit an async completion job")
    async def submit_job(
        body: CompletionRequest,
        t: Tenant,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> JSONResponse:
        params = body.params()
        if params.priority == "interactive" and "priority" not in body.model_fields_set:
            params.priority = "batch"  # jobs are background work unless asked otherwise
        job, created = jobs.submit(t, params, body.model_dump(), idempotency_key)
        return JSONResponse(
            job.to_dict(), status_code=202 if created else 200, headers={"Location": f"/v1/jobs/{job.id}"}
        )

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], summary="Poll a job")
    async def get_job(job_id: str, t: Tenant) -> dict[str, Any]:
        return jobs.get(t, job_id).to_dict()

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"], summary="Cancel a job")
    async def cancel_job(job_id: str, t: Tenant) -> dict[str, Any]:
        return (await jobs.cancel(t, job_id)).to_dict()

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"], summary="Cancel a job")
    async def delete_job(job_id: str, t: Tenant) -> dict[str, Any]:
        return (await jobs.cancel(t, job_id)).to_dict()

    @app.get("/v1/admin/state", tags=["admin"], dependencies=[Depends(require_admin)])
    async def admin_state() -> dict[str, Any]:
        st = gateway.engine.stats()
        return {
            "draining": admission.draining,
            "kill_switch": admission.killed,
            "engine": st.__dict__,
            "in_flight": {name: admission.in_flight(name) for name in admission.tenants},
        }

    @app.post(
        "/v1/admin/drain",
        tags=["admin"],
        dependencies=[Depends(require_admin)],
        summary="Stop admitting new work (503), finish what is in flight",
    )
    async def drain(enabled: bool = True) -> dict[str, Any]:
        admission.draining = enabled
        app.state.health.set_draining(enabled)
        return {"draining": admission.draining}

    @app.post(
        "/v1/admin/kill-switch",
        tags=["admin"],
        dependencies=[Depends(require_admin)],
        summary="Reject everything and abort all running work",
    )
    async def kill_switch(body: KillSwitch) -> dict[str, Any]:
        admission.killed = body.enabled
        if body.enabled:
            gateway.engine.abort_all("kill_switch")
        return {"kill_switch": admission.killed}


async def _watch_disconnect(request: Request, gateway: Gateway, seq: Sequence) -> None:
    """The body is already read, so the next ASGI message is the disconnect: wait for it
    (no polling; hundreds of waiting requests would otherwise wake the loop constantly)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gateway.engine.cancel(seq)
            return


async def _sse(
    stream: AsyncGenerator[Piece | Finish, None], seq: Sequence, model: str
) -> AsyncIterator[bytes]:
    """One `data:` event per token, a last one with finish_reason and usage, then [DONE].

    If the client disconnects, Starlette cancels this generator; closing `stream` cancels the
    sequence, which the engine frees at its next step.
    """
    created = int(time.time())

    def event(payload: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()

    try:
        async for item in stream:
            if isinstance(item, Piece):
                yield event(
                    {
                        "id": seq.seq_id,
                        "object": "text_completion",
                        "created": created,
                        "model": model,
                        "choices": [
                            {"index": 0, "text": item.text, "token_id": item.token_id, "finish_reason": None}
                        ],
                    }
                )
            else:
                yield event(
                    {
                        **_finish_body(seq.seq_id, model, "", [], item),
                        "choices": [{"index": 0, "text": "", "token_id": None, "finish_reason": item.reason}],
                    }
                )
    except InferenceError as exc:  # headers are sent: report in-band
        yield event({"error": {"type": exc.type, "message": exc.message, "field": exc.field}})
    finally:
        await stream.aclose()
    yield b"data: [DONE]\n\n"
