"""The OpenAI-compatible HTTP API (FastAPI), plus this service's own routes.

OpenAI's: /v1/completions and /v1/chat/completions (SSE with stream=true, OpenAI's chunk
format, `[DONE]` last), /v1/embeddings, /v1/models, /v1/models/{id}. Ours: /v1/score, /v1/jobs,
/v1/admin/*. Auth: `Authorization: Bearer <key>` (or `X-API-Key`).

Errors are OpenAI's shape, `{"error": {"message", "type", "param", "code", "field"}}`, with
OpenAI's status codes: 400 for any invalid request (never 422), 401 invalid_api_key, 404,
409, 429 and 503 with Retry-After, 504 deadline. Unknown body fields are ignored, as the
OpenAI API ignores them. InferenceError becomes that body in one place (`_inference_error`),
validation errors in another (`_validation_error`); every status a route can answer is in the
OpenAPI document.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.inference.admission import TenantConfig
from services.inference.errors import InferenceError, InvalidRequest, Unauthenticated, param_of
from services.inference.gateway import (
    MAX_STOP,
    MAX_TOP_LOGPROBS,
    SEED_MAX,
    SEED_MIN,
    CompletionParams,
    Finish,
    Gateway,
    Piece,
    TokenLogprob,
)
from services.inference.jobs import JobStore
from services.inference.sequence import Sequence as Seq

MAX_N = 16  # choices per request
MAX_PROMPTS = 32  # prompts in one list-prompt request


def _no_surrogates(value: str) -> str:
    """A lone UTF-16 surrogate (valid JSON, "\\ud800") cannot be UTF-8 encoded: refuse it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"invalid unicode: lone surrogate at position {exc.start}") from None
    return value


Text = Annotated[str, AfterValidator(_no_surrogates)]
TokenIds = list[Annotated[int, Field(ge=0, le=2**31 - 1)]]
Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX, description="64-bit sampling seed")]


class _Body(BaseModel):
    # Unknown fields are ignored, as the OpenAI API ignores them.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool | None = Field(None, description="a last chunk with the usage, choices []")


class _Sampling(_Body):
    """Fields completions and chat share (OpenAI's names and ranges)."""

    model: str | None = Field(None, description="model id (default: the served generator)")
    temperature: float | None = Field(None, ge=0.0, le=10.0, description="0 = greedy (default)")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="nucleus sampling mass")
    n: int | None = Field(None, ge=1, le=MAX_N, description="choices to generate")
    stop: Text | list[Text] | None = Field(
        None, description=f"up to {MAX_STOP} strings; generation ends before the first found"
    )
    seed: Seed | None = Field(None, description="per-request sampling seed (reproducible output)")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    user: Text | None = Field(None, max_length=256, description="end-user id (accepted, not stored)")
    stream: bool | None = Field(False, description="server-sent events, OpenAI chunk format")
    stream_options: StreamOptions | None = None
    # This service's own extensions.
    priority: Literal["interactive", "batch"] = Field("interactive", description="priority class")
    deadline_ms: int | None = Field(None, gt=0, description="reject early (503) if it would wait longer")
    ignore_eos: bool = Field(False, description="keep generating past the end-of-sequence token")

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise InvalidRequest(f"at most {MAX_STOP} stop strings", "body.stop")
        return [s for s in stops if s]

    def base(self, *, prompt: str = "", prompt_ids: list[int] | None = None) -> CompletionParams:
        return CompletionParams(
            prompt=prompt,
            prompt_ids=prompt_ids,
            temperature=self.temperature or 0.0,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            priority=self.priority,
            deadline_ms=self.deadline_ms,
            ignore_eos=self.ignore_eos,
            model=self.model,
            stop=self.stops(),
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            user=self.user,
        )


class CompletionRequest(_Sampling):
    prompt: Text | list[Text] | TokenIds | list[TokenIds] = Field(
        ..., description="a text, a list of texts (one choice each), or token ids"
    )
    max_tokens: int | None = Field(16, ge=1, description="tokens to generate at most")
    logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="log-probs of each token and this many alternatives"
    )
    echo: bool | None = Field(False, description="prepend the prompt to the text")

    def prompts(self) -> list[tuple[str, list[int] | None]]:
        """(text, token ids or None) per prompt."""
        p = self.prompt
        if isinstance(p, str):
            return [(p, None)]
        if not p:
            raise InvalidRequest("prompt must not be an empty list", "body.prompt")
        if len(p) > MAX_PROMPTS:
            raise InvalidRequest(f"at most {MAX_PROMPTS} prompts per request", "body.prompt")
        if all(isinstance(x, int) for x in p):
            return [("", [int(x) for x in p])]  # type: ignore[arg-type]
        if all(isinstance(x, str) for x in p):
            return [(str(x), None) for x in p]
        return [("", list(x)) for x in p]  # type: ignore[arg-type]

    def params_list(self) -> list[tuple[int, CompletionParams]]:
        """(prompt index, params) for every choice, in choice-index order."""
        n = self.n or 1
        out = []
        prompts = self.prompts()
        for pi, (text, ids) in enumerate(prompts):
            for i in range(n):
                p = self.base(prompt=text, prompt_ids=ids)
                p.prompt_field = "body.prompt" if isinstance(self.prompt, str) else f"body.prompt.{pi}"
                if ids is not None and len(prompts) == 1:
                    p.prompt_field = "body.prompt"
                p.max_tokens = self.max_tokens or 16
                p.logprobs = self.logprobs
                p.seed = _choice_seed(self.seed, i)
                out.append((pi, p))
        return out

    def params(self) -> CompletionParams:
        """One request, one sequence (async jobs)."""
        choices = self.params_list()
        if len(choices) != 1:
            raise InvalidRequest("a job takes one prompt and n = 1", "body.n")
        return choices[0][1]


class TextPart(_Body):
    type: str = Field(..., description='"text" (no other content type is supported)')
    text: Text | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1, description="the conversation so far")
    max_tokens: int | None = Field(None, ge=1, description="deprecated name of max_completion_tokens")
    max_completion_tokens: int | None = Field(None, ge=1, description="tokens to generate at most")
    logprobs: bool | None = Field(False, description="log-prob of each output token")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="alternatives per token")

    def conversation(self) -> list[dict[str, Any]]:
        out = []
        for i, msg in enumerate(self.messages):
            content = msg.content
            if isinstance(content, list):
                texts = []
                for j, part in enumerate(content):
                    if part.type != "text" or part.text is None:
                        raise InvalidRequest(
                            "only text content parts are supported", f"body.messages.{i}.content.{j}.type"
                        )
                    texts.append(part.text)
                content = "".join(texts)
            if content is None and msg.role != "assistant":  # an assistant turn may be tool calls
                raise InvalidRequest(f"a {msg.role} message needs content", f"body.messages.{i}.content")
            entry: dict[str, Any] = {"role": msg.role, "content": content or ""}
            if msg.name is not None:
                entry["name"] = msg.name
            out.append(entry)
        return out


class EmbeddingRequest(_Body):
    model: str | None = None
    input: Text | list[Text] | TokenIds | list[TokenIds] = Field(..., description="one text or a list")
    encoding_format: Literal["float", "base64"] | None = Field(
        "float", description="base64: little-endian float32, as the OpenAI API sends it"
    )
    dimensions: int | None = Field(None, ge=1, description="truncate to this many and renormalise")
    user: Text | None = Field(None, max_length=256)

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        if self.input and not all(isinstance(x, str) for x in self.input):
            raise InvalidRequest("token-id input is not supported by this model; send text", "body.input")
        return [str(x) for x in self.input]


class ScoreRequest(_Body):
    model: str | None = None
    prompt: Text
    candidates: list[Text] = Field(..., min_length=1, max_length=32)


class KillSwitch(BaseModel):
    enabled: bool


class ErrorObject(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorObject


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


_AUTH: dict[int | str, dict[str, Any]] = {
    400: _err("invalid request: a field is missing, malformed or out of range (param names it)"),
    401: _err("missing or unknown API key (code invalid_api_key)"),
}
_LIMITED: dict[int | str, dict[str, Any]] = {
    **_AUTH,
    429: _err("tenant rate or concurrency limit (Retry-After)"),
    503: _err(
        "overloaded (shed at arrival on the estimated wait; or admitted and still waiting for a first"
        " step at the class's cap: queue_timeout), draining or kill switch (Retry-After)"
    ),
}
_GENERATE: dict[int | str, dict[str, Any]] = {
    **_LIMITED,
    404: _err("model not served here (code model_not_found)"),
    500: _err("the model step failed"),
    504: _err("the request's deadline passed while it waited"),
}


def _choice_seed(seed: int | None, i: int) -> int | None:
    """Choice i of n gets its own stream; choice 0 is what n = 1 gives."""
    if seed is None or i == 0:
        return seed
    return (seed + i) % 2**64


def _bearer(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


async def current_tenant(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> TenantConfig:
    return request.app.state.gateway.admission.authenticate(_bearer(authorization, x_api_key))


async def require_admin(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    if not request.app.state.gateway.admission.is_admin(_bearer(authorization, x_api_key)):
        raise Unauthenticated("admin key required")


Tenant = Annotated[TenantConfig, Depends(current_tenant)]

# -- errors ------------------------------------------------------------------------------------
_TYPE_TAGS = ("str", "int", "float", "bool", "none", "list", "dict", "function")


def _clean_loc(loc: Sequence[Any]) -> str:
    """Pydantic's location without union-member tags: ('body','prompt','list[str]',0) -> body.prompt.0"""
    parts = []
    for part in loc:
        if isinstance(part, str) and (part.startswith(_TYPE_TAGS) or "[" in part):
            continue
        parts.append(str(part))
    return ".".join(parts)


def _error(
    status: int, message: str, field: str | None, code: str | None, type_: str | None = None
) -> JSONResponse:
    exc = InferenceError(status, "invalid_request", message, field=field, code=code)
    body = exc.openai_error()
    if type_ is not None:
        body["error"]["type"] = type_  # type: ignore[index]
    return JSONResponse(body, status_code=status)


async def _inference_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InferenceError)
    status = 400 if exc.status == 413 else exc.status  # OpenAI: context_length_exceeded is a 400
    return JSONResponse(exc.openai_error(), status_code=status, headers=exc.headers())


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    for err in errors:
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error") or err.get("msg", "")
            return _error(400, f"the body is not valid JSON: {reason}", "body", "invalid_json")
    if not errors:
        return _error(400, "invalid request", None, "invalid_value")
    # A union reports one error per member: the most specific is our own check (value_error,
    # e.g. a lone surrogate), else the deepest location (the item of a list, not the list).
    first = min(errors, key=lambda e: (e.get("type") != "value_error", -len(e.get("loc", ()))))
    field_ = _clean_loc(first.get("loc", ()))
    param = param_of(field_)
    message = str(first.get("msg", "invalid"))
    if param:
        message = f"invalid value for {param!r}: {message}"
    code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
    return _error(400, message, field_ or None, code)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else "error"
    if exc.status_code in (404, 405):
        detail = f"{detail.lower()}: {request.method} {request.url.path}"
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    response = _error(exc.status_code, detail, None, code)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _install_openapi(app: FastAPI) -> None:
    """FastAPI documents a 422 for every body; this API answers 400 instead: say so."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for path in schema.get("paths", {}).values():
            for op in path.values():
                responses = op.get("responses", {})
                if responses.pop("422", None) is not None and "400" not in responses:
                    responses["400"] = {
                        "description": "invalid request",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
                        },
                    }
        components = schema.setdefault("components", {})
        # The key travels as a bearer token (or X-API-Key); documented once, not per operation.
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "the tenant's API key"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        schemas = components.setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas.setdefault(
            "ErrorResponse", ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        )
        schemas.setdefault("ErrorObject", ErrorObject.model_json_schema())
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# -- results -----------------------------------------------------------------------------------
@dataclass
class _Choice:
    index: int
    prompt_index: int
    seq: Seq
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: Finish | None = None


def _usage(choices: list[_Choice]) -> dict[str, Any]:
    """OpenAI's usage; `prompt_tokens_details.cached_tokens`: prompt tokens whose KV came from
    the prefix cache (each prompt counted once, as its tokens are, whatever `n` is)."""
    prompts: dict[int, int] = {}
    cached: dict[int, int] = {}
    completion = 0
    for c in choices:
        prompts[c.prompt_index] = len(c.seq.prompt)
        cached.setdefault(c.prompt_index, c.seq.cached_tokens)
        if c.finish is not None:
            completion += c.finish.completion_tokens
    prompt = sum(prompts.values())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": sum(cached.values())},
    }


def _completion_logprobs(
    entries: list[TokenLogprob | None], start_offset: int, texts: list[str]
) -> dict[str, Any]:
    """OpenAI's completions logprobs object; `texts` are the pieces each entry's token released."""
    tokens, token_lps, tops, offsets = [], [], [], []
    offset = start_offset
    for lp, text in zip(entries, texts, strict=True):
        if lp is not None:
            tokens.append(lp.token)
            token_lps.append(lp.logprob)
            tops.append({t: v for t, _, v in lp.top} if lp.logprob is not None else None)
            offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def _chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": lp.bytes,
                "top_logprobs": [{"token": t, "logprob": v, "bytes": b} for t, b, v in lp.top],
            }
            for lp in entries
        ],
        "refusal": None,
    }


async def _merge(
    streams: list[AsyncGenerator[Piece | Finish, None]],
) -> AsyncIterator[tuple[int, Piece | Finish]]:
    """Items of several choice streams as they come, tagged with the stream's index.

    Closing this generator (client gone) closes every stream, which cancels its sequence.
    """
    if len(streams) == 1:
        try:
            async for item in streams[0]:
                yield 0, item
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue[tuple[int, Piece | Finish | Exception | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncGenerator[Piece | Finish, None]) -> None:
        try:
            async for item in stream:
                queue.put_nowait((i, item))
        except Exception as exc:  # handed to the consumer, which raises it
            queue.put_nowait((i, exc))
            return
        finally:
            await stream.aclose()
        queue.put_nowait((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(tasks)
        while left:
            i, got = await queue.get()
            if got is None:
                left -= 1
            elif isinstance(got, Exception):
                raise got
            else:
                yield i, got
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _watch_disconnect(request: Request, gateway: Gateway, seqs: list[Seq]) -> None:
    """The body is already read, so the next ASGI message is the disconnect: wait for it
    (no polling; hundreds of waiting requests would otherwise wake the loop constantly)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for seq in seqs:
                gateway.engine.cancel(seq)
            return


def _event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_json_str = json.encoder.encode_basestring_ascii  # json.dumps(str) with its defaults, in C


def _completion_token(index: int, text: str, token_id: int) -> bytes:
    """A completions token choice without log-probs, as json.dumps renders its dict."""
    tok = str(token_id) if token_id >= 0 else "null"
    return (
        f'{{"index":{index},"text":{_json_str(text)},"token_id":{tok},"logprobs":null,"finish_reason":null}}'
    ).encode()


def _chat_token(index: int, text: str) -> bytes:
    """A chat token choice without log-probs, as json.dumps renders its dict."""
    delta = f'{{"content":{_json_str(text)}}}'
    return f'{{"index":{index},"delta":{delta},"logprobs":null,"finish_reason":null}}'.encode()


class _Run:
    """One completions or chat request: its choices, run together, as a body or as SSE."""

    def __init__(
        self,
        gateway: Gateway,
        tenant: TenantConfig,
        choices: list[tuple[int, CompletionParams]],
        *,
        chat: bool,
        model: str,
        echo: bool = False,
        prompt_texts: list[str] | None = None,
        include_usage: bool = False,
    ) -> None:
        self.gateway = gateway
        self.chat = chat
        self.model = model
        self.echo = echo
        self.include_usage = include_usage
        self.prompt_texts = prompt_texts or []
        self.params = [p for _, p in choices]
        pairs = gateway.prepare_many(tenant, self.params)
        self.choices = [
            _Choice(index=i, prompt_index=pi, seq=seq)
            for i, ((pi, _), (seq, _)) in enumerate(zip(choices, pairs, strict=True))
        ]
        self.tickets = [t for _, t in pairs]
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def start(self, streaming: bool) -> list[AsyncGenerator[Piece | Finish, None]]:
        streams = []
        for c, p, ticket in zip(self.choices, self.params, self.tickets, strict=True):
            # Per-token events when streaming, and when a stop string should end it early.
            c.seq.emit_tokens = streaming or bool(p.stop or p.extra_stop)
            streams.append(self.gateway.stream(c.seq, ticket))
        return streams

    def close(self) -> None:
        """Cancel what still runs and release every ticket (idempotent; the streams' own
        cleanup does the same for each stream that started)."""
        for c, ticket in zip(self.choices, self.tickets, strict=True):
            if c.seq.finished_at is None and not c.seq.cancelled:
                self.gateway.engine.cancel(c.seq)
            ticket.release()

    def _echo_text(self, c: _Choice) -> str:
        if not self.echo:
            return ""
        text = self.prompt_texts[c.prompt_index] if c.prompt_index < len(self.prompt_texts) else ""
        return text or self.gateway.tokenizer.decode(c.seq.prompt)

    async def _echo_logprobs(self, c: _Choice) -> tuple[list[TokenLogprob | None], list[str]]:
        ids = [t for t in c.seq.prompt]
        lps = await self.gateway.prompt_logprobs(ids)
        entries: list[TokenLogprob | None] = []
        texts: list[str] = []
        for tok, lp in zip(ids, lps, strict=True):
            if self.gateway.is_special(tok):
                continue
            text = self.gateway.token_text(tok)
            entries.append(TokenLogprob(text, self.gateway.token_bytes(tok), lp, []))
            texts.append(text)
        return entries, texts

    # -- one body ------------------------------------------------------------------------------
    async def body(self, request: Request) -> dict[str, Any]:
        streams = self.start(streaming=False)
        pieces: dict[int, list[Piece]] = {c.index: [] for c in self.choices}
        watcher = asyncio.create_task(_watch_disconnect(request, self.gateway, [c.seq for c in self.choices]))
        try:
            async for i, item in _merge(streams):
                if isinstance(item, Piece):
                    pieces[i].append(item)
                else:
                    self.choices[i].finish = item
        finally:
            watcher.cancel()
            self.close()
        out = []
        for c in self.choices:
            assert c.finish is not None
            got = pieces[c.index]
            text = "".join(p.text for p in got)
            lp_entries = [p.logprob for p in got]
            entry: dict[str, Any] = {"index": c.index, "finish_reason": c.finish.reason}
            want_lp = c.seq.sampling.logprobs is not None
            if self.chat:
                entry["message"] = {"role": "assistant", "content": text, "refusal": None}
                entry["logprobs"] = (
                    _chat_logprobs([x for x in lp_entries if x is not None]) if want_lp else None
                )
            else:
                prefix = self._echo_text(c)
                entry["text"] = prefix + text
                entry["token_ids"] = list(c.seq.output[: c.finish.completion_tokens])
                if want_lp:
                    if self.echo:
                        e_entries, e_texts = await self._echo_logprobs(c)
                        lp_all = _completion_logprobs(
                            [*e_entries, *lp_entries], 0, [*e_texts, *(p.text for p in got)]
                        )
                    else:
                        lp_all = _completion_logprobs(lp_entries, 0, [p.text for p in got])
                    entry["logprobs"] = lp_all
                else:
                    entry["logprobs"] = None
            out.append(entry)
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": out,
            "usage": _usage(self.choices),
            "timing": self.choices[0].finish.timing if self.choices[0].finish else {},
        }

    # -- SSE -----------------------------------------------------------------------------------
    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            out["usage"] = None
        out.update(extra)
        return out

    def _token_frame(self) -> tuple[bytes, bytes]:
        """The bytes of a token event around its one choice: what `_event(self._chunk([choice]))`
        gives, split at the choice. A streamed token is the event the server sends most (one
        per token per stream); building it from two dicts through json.dumps each time was a
        fair share of the event loop's time under load (drill 5)."""
        marker = "\x00choice\x00"
        text = _event(self._chunk([marker]))  # type: ignore[list-item]
        head, _, tail = text.partition(json.dumps(marker).encode())
        return head, tail

    async def sse(self) -> AsyncIterator[bytes]:
        """One event per token per choice, one with each choice's finish_reason, the usage when
        asked (stream_options.include_usage: a last chunk with choices []), then [DONE].

        If the client disconnects, Starlette cancels this generator; closing the streams cancels
        the sequences, which the engine frees at its next step.
        """
        streams = self.start(streaming=True)
        offsets = {c.index: 0 for c in self.choices}
        finished = 0
        try:
            for c in self.choices:  # chat: the role first; completions with echo: the prompt
                if self.chat:
                    yield _event(
                        self._chunk(
                            [
                                {
                                    "index": c.index,
                                    "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ]
                        )
                    )
                elif self.echo:
                    prompt = self._echo_text(c)
                    offsets[c.index] = len(prompt)
                    yield _event(
                        self._chunk(
                            [
                                {
                                    "index": c.index,
                                    "text": prompt,
                                    "token_id": None,
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ]
                        )
                    )
            head, tail = self._token_frame()
            async for i, item in _merge(streams):
                c = self.choices[i]
                if isinstance(item, Piece):
                    lp = item.logprob
                    if lp is None:  # the common case, rendered without a dict or json.dumps
                        if self.chat:
                            if item.text:
                                yield b"".join((head, _chat_token(i, item.text), tail))
                            continue
                        offsets[i] += len(item.text)
                        yield b"".join((head, _completion_token(i, item.text, item.token_id), tail))
                        continue
                    if self.chat:
                        if not item.text and lp is None:
                            continue
                        choice = {
                            "index": i,
                            "delta": {"content": item.text},
                            "logprobs": _chat_logprobs([lp]) if lp is not None else None,
                            "finish_reason": None,
                        }
                    else:
                        choice = {
                            "index": i,
                            "text": item.text,
                            "token_id": item.token_id if item.token_id >= 0 else None,
                            "logprobs": _completion_logprobs([lp], offsets[i], [item.text])
                            if lp is not None
                            else None,
                            "finish_reason": None,
                        }
                        offsets[i] += len(item.text)
                    yield _event(self._chunk([choice]))
                    continue
                c.finish = item
                finished += 1
                done: dict[str, Any] = {"index": i, "logprobs": None, "finish_reason": item.reason}
                if self.chat:
                    done["delta"] = {}
                else:
                    done.update(text="", token_id=None)
                extra: dict[str, Any] = {"timing": item.timing}
                if finished == len(self.choices) and not self.include_usage:
                    extra["usage"] = _usage(self.choices)  # this service's clients read it here
                yield _event(self._chunk([done], **extra))
            if self.include_usage:
                yield _event(self._chunk([], usage=_usage(self.choices)))
        except InferenceError as exc:  # headers are sent: report in-band
            yield _event(exc.openai_error())
        yield _event("[DONE]")


class _SSEResponse(StreamingResponse):
    """Releases the run's admission tickets however the response ends: a client gone before
    the body was iterated leaves generators that never started, and so never ran their own
    cleanup; an in-flight count that never comes down would reject the tenant forever."""

    def __init__(self, run: _Run) -> None:
        super().__init__(run.sse(), media_type="text/event-stream", headers=_SSE_HEADERS)
        self.run = run

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.close()


def _streaming_response(run: _Run) -> StreamingResponse:
    return _SSEResponse(run)


def _embedding_value(vec: list[float], encoding: str | None) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
    return vec


def add_routes(app: FastAPI, gateway: Gateway, jobs: JobStore) -> None:
    admission = gateway.admission
    app.add_exception_handler(InferenceError, _inference_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    _install_openapi(app)
    app.state.gateway = gateway

    @app.get("/v1/models", tags=["inference"], summary="Served models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": gateway.models()}

    @app.get(
        "/v1/models/{model:path}",
        tags=["inference"],
        summary="One served model",
        responses={404: _err("no such model (code model_not_found)")},
    )
    async def model(model: str) -> dict[str, Any]:
        return gateway.model(model)

    @app.post(
        "/v1/completions",
        tags=["inference"],
        summary="Generate text (OpenAI completions; SSE with stream=true)",
        responses=_GENERATE,
    )
    async def completions(body: CompletionRequest, request: Request, t: Tenant):
        prompts = body.prompts()
        choices = body.params_list()
        for _, p in choices:
            gateway.validate(p)
        await gateway.tokenize([p for _, p in choices])  # off the event loop
        run = _Run(
            gateway,
            t,
            choices,
            chat=False,
            model=body.model or gateway.model_name,
            echo=bool(body.echo),
            prompt_texts=[text for text, _ in prompts],
            include_usage=bool(body.stream and body.stream_options and body.stream_options.include_usage),
        )
        if body.stream:
            return _streaming_response(run)
        return await run.body(request)

    @app.post(
        "/v1/chat/completions",
        tags=["inference"],
        summary="Chat (OpenAI chat completions; SSE with stream=true)",
        responses=_GENERATE,
    )
    async def chat_completions(body: ChatRequest, request: Request, t: Tenant):
        if body.top_logprobs is not None and not body.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true", "body.top_logprobs")
        base = body.base()
        base.logprobs = (body.top_logprobs or 0) if body.logprobs else None
        gateway.validate(base)
        await gateway.chat_params(body.conversation(), base, body.max_completion_tokens or body.max_tokens)
        choices = []
        for i in range(body.n or 1):
            p = CompletionParams(**{**base.__dict__, "seed": _choice_seed(body.seed, i)})
            choices.append((0, p))
        run = _Run(
            gateway,
            t,
            choices,
            chat=True,
            model=body.model or gateway.model_name,
            include_usage=bool(body.stream and body.stream_options and body.stream_options.include_usage),
        )
        if body.stream:
            return _streaming_response(run)
        return await run.body(request)

    @app.post(
        "/v1/embeddings",
        tags=["inference"],
        summary="Sentence embeddings (all-MiniLM-L6-v2; float or base64 float32)",
        responses={**_LIMITED, 404: _err("model not served here (code model_not_found)")},
    )
    async def embeddings(body: EmbeddingRequest, t: Tenant) -> dict[str, Any]:
        vectors, tokens = await gateway.embed(
            t, body.texts(), body.model, body.dimensions, single=isinstance(body.input, str)
        )
        return {
            "object": "list",
            "model": gateway.embed_model_name,
            "data": [
                {"object": "embedding", "index": i, "embedding": _embedding_value(v, body.encoding_format)}
                for i, v in enumerate(vectors)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.post(
        "/v1/score",
        tags=["inference"],
        summary="Log-prob of each candidate continuation",
        responses={**_LIMITED, 404: _err("model not served here")},
    )
    async def score(body: ScoreRequest, t: Tenant) -> dict[str, Any]:
        results = await gateway.score(t, body.prompt, body.candidates, body.model)
        return {"object": "score", "model": gateway.model_name, "prompt": body.prompt, "results": results}

    @app.post(
        "/v1/jobs",
        tags=["jobs"],
        status_code=202,
        summary="Submit an async completion job",
        responses={
            **_LIMITED,
            200: {"description": "the job this Idempotency-Key already made"},
            404: _err("model not served here"),
            409: _err("Idempotency-Key reused with a different body"),
        },
    )
    async def submit_job(
        body: CompletionRequest,
        t: Tenant,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> JSONResponse:
        params = body.params()
        gateway.validate(params)
        await gateway.tokenize([params])  # off the event loop
        if params.priority == "interactive" and "priority" not in body.model_fields_set:
            params.priority = "batch"  # jobs are background work unless asked otherwise
        job, created = jobs.submit(t, params, body.model_dump(), idempotency_key)
        return JSONResponse(
            job.to_dict(), status_code=202 if created else 200, headers={"Location": f"/v1/jobs/{job.id}"}
        )

    job_responses: dict[int | str, dict[str, Any]] = {**_AUTH, 404: _err("no such job (for this tenant)")}

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], summary="Poll a job", responses=job_responses)
    async def get_job(job_id: str, t: Tenant) -> dict[str, Any]:
        return jobs.get(t, job_id).to_dict()

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"], summary="Cancel a job", responses=job_responses)
    async def cancel_job(job_id: str, t: Tenant) -> dict[str, Any]:
        return (await jobs.cancel(t, job_id)).to_dict()

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"], summary="Cancel a job", responses=job_responses)
    async def delete_job(job_id: str, t: Tenant) -> dict[str, Any]:
        return (await jobs.cancel(t, job_id)).to_dict()

    @app.get("/v1/admin/state", tags=["admin"], dependencies=[Depends(require_admin)], responses=_AUTH)
    async def admin_state() -> dict[str, Any]:
        st = gateway.engine.stats()
        return {
            "draining": admission.draining,
            "kill_switch": admission.killed,
            "engine": st.__dict__,
            "in_flight": {name: admission.in_flight(name) for name in admission.tenants},
            "wait_estimate": admission.calibration(),  # estimated against real waits, by class
        }

    @app.post(
        "/v1/admin/drain",
        tags=["admin"],
        dependencies=[Depends(require_admin)],
        summary="Stop admitting new work (503), finish what is in flight",
        responses=_AUTH,
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
        responses=_AUTH,
    )
    async def kill_switch(body: KillSwitch) -> dict[str, Any]:
        admission.killed = body.enabled
        if body.enabled:
            gateway.engine.abort_all("kill_switch")
        return {"kill_switch": admission.killed}
