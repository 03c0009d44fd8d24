"""gRPC server (grpc.aio, same event loop as the HTTP app) over the same Gateway.

InferenceError -> gRPC status in `_abort`, the one translation seam: 400/413 INVALID_ARGUMENT,
401 UNAUTHENTICATED, 404 NOT_FOUND, 409 ALREADY_EXISTS, 429 RESOURCE_EXHAUSTED,
503 UNAVAILABLE, 504 DEADLINE_EXCEEDED; retry-after goes in the trailing metadata. A client
that cancels the call (or disconnects) cancels the handler, which frees the sequence.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from services.inference.errors import InferenceError
from services.inference.gateway import CompletionParams, Finish, Gateway, Piece, TokenLogprob
from services.inference.jobs import Job, JobStore
from services.inference.proto import inference_pb2 as pb
from services.inference.proto import inference_pb2_grpc as pb_grpc
from services.inference.sequence import Sequence

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _sampling_fields(req: pb.GenerateRequest | pb.ChatRequest) -> dict:
    """The fields Generate and Chat share, read the same way (unset optionals -> defaults)."""
    return {
        "temperature": req.temperature,
        "top_p": req.top_p if req.HasField("top_p") else 1.0,
        "seed": req.seed if req.HasField("seed") else None,
        "priority": req.priority or "interactive",
        "deadline_ms": req.deadline_ms if req.HasField("deadline_ms") else None,
        "ignore_eos": req.ignore_eos,
        "model": req.model or None,
        "stop": list(req.stop),
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "user": req.user or None,
    }


def _params(req: pb.GenerateRequest) -> CompletionParams:
    return CompletionParams(
        prompt=req.prompt,
        max_tokens=req.max_tokens or 16,
        logprobs=req.logprobs if req.HasField("logprobs") else None,
        **_sampling_fields(req),
    )


async def _chat_params(gateway: Gateway, req: pb.ChatRequest) -> CompletionParams:
    p = CompletionParams(
        logprobs=req.top_logprobs if req.HasField("top_logprobs") else None,
        **_sampling_fields(req),
    )
    messages = [
        {"role": m.role, "content": m.content, **({"name": m.name} if m.name else {})} for m in req.messages
    ]
    gateway.validate(p)
    return await gateway.chat_params(messages, p, req.max_tokens or None)


def _logprob_pb(lp: TokenLogprob | None) -> pb.TokenLogprob | None:
    if lp is None:
        return None
    return pb.TokenLogprob(
        token=lp.token,
        logprob=lp.logprob if lp.logprob is not None else 0.0,
        token_bytes=bytes(lp.bytes),
        top=[pb.TopLogprob(token=t, logprob=v, token_bytes=bytes(b)) for t, b, v in lp.top],
    )


def _job_pb(job: Job, created: bool = True) -> pb.Job:
    out = pb.Job(id=job.id, state=job.state, created=created)
    if job.result is not None:
        r = job.result
        out.result.CopyFrom(
            pb.Completion(
                id=job.id,
                text=r["text"],
                token_ids=r["token_ids"],
                finish_reason=r["finish_reason"],
                usage=pb.Usage(**r["usage"]),
            )
        )
    if job.error is not None:
        out.error_type = job.error["type"]
        out.error_message = job.error["message"]
    return out


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, gateway: Gateway, jobs: JobStore) -> None:
        self.gateway = gateway
        self.jobs = jobs

    def _tenant(self, context: grpc.aio.ServicerContext):
        md = {k.lower(): v for k, v in context.invocation_metadata() or ()}
        key = md.get("x-api-key")
        auth = md.get("authorization", "")
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        return self.gateway.admission.authenticate(key)

    async def _abort(self, context: grpc.aio.ServicerContext, exc: InferenceError) -> None:
        if exc.retry_after is not None:
            context.set_trailing_metadata((("retry-after", str(max(1, math.ceil(exc.retry_after)))),))
        field = f" (field {exc.field})" if exc.field else ""
        await context.abort(
            _CODES.get(exc.status, grpc.StatusCode.INTERNAL), f"{exc.type}: {exc.message}{field}"
        )

    async def Generate(self, request, context) -> AsyncIterator[pb.GenerateChunk]:
        async def params() -> CompletionParams:
            return _params(request)

        async for chunk in self._stream(context, params):
            yield chunk

    async def Chat(self, request, context) -> AsyncIterator[pb.GenerateChunk]:
        async for chunk in self._stream(context, lambda: _chat_params(self.gateway, request)):
            yield chunk

    async def _stream(
        self, context: grpc.aio.ServicerContext, params: Callable[[], Awaitable[CompletionParams]]
    ) -> AsyncIterator[pb.GenerateChunk]:
        holder: list[Sequence] = []
        try:
            tenant = self._tenant(context)
            stream = await self.gateway.generate(tenant, await params(), on_seq=holder.append)
        except InferenceError as exc:
            await self._abort(context, exc)
            return
        try:
            async for item in stream:
                if isinstance(item, Piece):
                    yield pb.GenerateChunk(
                        id=holder[0].seq_id,
                        text=item.text,
                        token_id=item.token_id,
                        logprob=_logprob_pb(item.logprob),
                    )
                else:
                    yield _final_chunk(holder[0], item)
        except InferenceError as exc:
            await self._abort(context, exc)
        finally:
            await stream.aclose()

    async def Complete(self, request, context) -> pb.Completion:
        try:
            c = await self.gateway.complete(self._tenant(context), _params(request))
        except InferenceError as exc:
            await self._abort(context, exc)
            raise  # unreachable: abort raises
        return pb.Completion(
            id=c.id,
            text=c.text,
            token_ids=c.token_ids,
            finish_reason=c.finish.reason,
            usage=pb.Usage(
                prompt_tokens=c.finish.prompt_tokens, completion_tokens=c.finish.completion_tokens
            ),
        )

    async def Embed(self, request, context) -> pb.EmbedResponse:
        try:
            vectors, tokens = await self.gateway.embed(
                self._tenant(context),
                list(request.input),
                request.model or None,
                request.dimensions if request.HasField("dimensions") else None,
            )
        except InferenceError as exc:
            await self._abort(context, exc)
            raise
        return pb.EmbedResponse(
            model=self.gateway.embed_model_name,
            prompt_tokens=tokens,
            data=[pb.Embedding(values=v) for v in vectors],
        )

    async def Score(self, request, context) -> pb.ScoreResponse:
        try:
            results = await self.gateway.score(
                self._tenant(context), request.prompt, list(request.candidates), request.model or None
            )
        except InferenceError as exc:
            await self._abort(context, exc)
            raise
        return pb.ScoreResponse(
            results=[
                pb.CandidateScore(
                    candidate=r["candidate"],
                    logprob=r["logprob"],
                    tokens=r["tokens"],
                    mean_logprob=r["mean_logprob"],
                    prob=r["prob"],
                )
                for r in results
            ]
        )

    async def SubmitJob(self, request, context) -> pb.Job:
        try:
            params = _params(request.request)
            if not request.request.priority:
                params.priority = "batch"
            self.gateway.validate(params)
            await self.gateway.tokenize([params])  # off the event loop
            body = {
                "prompt": params.prompt,
                "max_tokens": params.max_tokens,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "seed": params.seed,
                "priority": params.priority,
                "deadline_ms": params.deadline_ms,
                "ignore_eos": params.ignore_eos,
                "model": params.model,
            }
            job, created = self.jobs.submit(
                self._tenant(context), params, body, request.idempotency_key or None
            )
        except InferenceError as exc:
            await self._abort(context, exc)
            raise
        return _job_pb(job, created)

    async def GetJob(self, request, context) -> pb.Job:
        try:
            return _job_pb(self.jobs.get(self._tenant(context), request.id))
        except InferenceError as exc:
            await self._abort(context, exc)
            raise

    async def CancelJob(self, request, context) -> pb.Job:
        try:
            return _job_pb(await self.jobs.cancel(self._tenant(context), request.id))
        except InferenceError as exc:
            await self._abort(context, exc)
            raise

    async def GetModel(self, request, context) -> pb.Model:
        try:
            m = self.gateway.model(request.id)
        except InferenceError as exc:
            await self._abort(context, exc)
            raise
        return pb.Model(id=str(m["id"]), kind=str(m["kind"]))

    async def ListModels(self, request, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            data=[pb.Model(id=str(m["id"]), kind=str(m["kind"])) for m in self.gateway.models()]
        )


def _final_chunk(seq: Sequence, fin: Finish) -> pb.GenerateChunk:
    return pb.GenerateChunk(
        id=seq.seq_id,
        token_id=-1,
        finish_reason=fin.reason,
        usage=pb.Usage(prompt_tokens=fin.prompt_tokens, completion_tokens=fin.completion_tokens),
    )


INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["Inference"].full_name


class HealthServicer(health_aio.HealthServicer):
    """The standard grpc.health.v1 service for "" (the server) and the Inference service:
    SERVING while the engine runs and the service takes work (not draining, kill switch off),
    read live on every Check and followed (every HEALTH_POLL_S) while a Watch is open."""

    HEALTH_POLL_S = 0.5

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway

    def _status(self) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        adm = self._gateway.admission
        if self._gateway.engine.alive and not adm.draining and not adm.killed:
            return health_pb2.HealthCheckResponse.SERVING
        return health_pb2.HealthCheckResponse.NOT_SERVING

    async def refresh(self) -> None:
        status = self._status()
        for service in ("", INFERENCE_SERVICE):
            if self._server_status.get(service) != status:
                await self.set(service, status)

    async def Check(self, request, context):
        await self.refresh()
        return await super().Check(request, context)

    async def Watch(self, request, context):
        async def follow() -> None:
            while True:
                await self.refresh()
                await asyncio.sleep(self.HEALTH_POLL_S)

        await self.refresh()
        task = asyncio.create_task(follow())
        try:
            await super().Watch(request, context)
        finally:
            task.cancel()


async def start_grpc(gateway: Gateway, jobs: JobStore, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """The Inference service, grpc.health.v1 and server reflection, on one port."""
    server = grpc.aio.server()
    pb_grpc.add_InferenceServicer_to_server(InferenceServicer(gateway, jobs), server)
    health = HealthServicer(gateway)
    await health.refresh()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            INFERENCE_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC on {host}:{port}")
    await server.start()
    return server, bound
