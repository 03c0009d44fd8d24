"""The operations both APIs expose (HTTP in api.py, gRPC in grpc_server.py), transport-free.

Each operation: validate -> admission (ticket held while in flight) -> engine / embedder ->
result. Errors are InferenceError subclasses; each transport translates them once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import TypedDict

from services.inference import metrics as m
from services.inference.admission import Admission, TenantConfig, Ticket
from services.inference.embeddings import DIMENSION as EMBEDDING_DIMENSION
from services.inference.embeddings import EmbeddingBatcher
from services.inference.engine import Engine
from services.inference.errors import InferenceError, InvalidRequest, Overloaded
from services.inference.model.sampling import SamplingParams
from services.inference.model.tokenizer import ByteTokenizer, StreamDecoder
from services.inference.sequence import CLASSES, Sequence

MAX_SCORE_CANDIDATES = 32
EMBED_LOAD_WAIT_S = 30.0


@dataclass
class CompletionParams:
    prompt: str
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    priority: str = "interactive"
    deadline_ms: int | None = None
    ignore_eos: bool = False
    model: str | None = None


@dataclass
class Piece:
    """One streamed token."""

    text: str
    token_id: int


@dataclass
class Finish:
    reason: str
    prompt_tokens: int
    completion_tokens: int
    timing: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Completion:
    id: str
    text: str
    token_ids: list[int]
    finish: Finish


class CandidateScore(TypedDict):
    """One scored candidate, as /v1/score and gRPC Score return it."""

    candidate: str
    logprob: float
    tokens: int
    mean_logprob: float
    prob: float
    token_logprobs: list[float]


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000, 3)


class Gateway:
    def __init__(
        self,
        engine: Engine,
        admission: Admission,
        *,
        model_name: str,
        embedder: Callable[[], EmbeddingBatcher | None] = lambda: None,
        embedder_loading: Callable[[], asyncio.Task | None] = lambda: None,
        embed_model_name: str = "all-MiniLM-L6-v2",
    ) -> None:
        self.engine = engine
        self.admission = admission
        self.tokenizer = ByteTokenizer()
        self.model_name = model_name
        self._embedder = embedder
        self._embedder_loading = embedder_loading
        self.embed_model_name = embed_model_name

    # -- models ------------------------------------------------------------------------------
    def models(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = [
            {
                "id": self.model_name,
                "object": "model",
                "owned_by": "proving-ground",
                "kind": "generation",
                "config": self.engine.model.cfg.to_dict(),
            },
        ]
        if self._embedder() is not None:
            out.append(
                {
                    "id": self.embed_model_name,
                    "object": "model",
                    "owned_by": "sentence-transformers",
                    "kind": "embedding",
                    "dimension": EMBEDDING_DIMENSION,
                }
            )
        return out

    def _check_model(self, model: str | None, expected: str) -> None:
        if model not in (None, "", expected):
            raise InvalidRequest(
                f"model {model!r} is not served here (try {expected!r})",
                "body.model",
                status=404,
                reason="model_not_found",
            )

    # -- generation --------------------------------------------------------------------------
    def prepare(self, tenant: TenantConfig, p: CompletionParams) -> tuple[Sequence, Ticket]:
        """Validate and admit (raises on rejection); run the result with `stream()`."""
        self._check_model(p.model, self.model_name)
        if p.priority not in CLASSES:
            raise InvalidRequest(f"priority must be one of {list(CLASSES)}", "body.priority")
        if p.max_tokens < 1:
            raise InvalidRequest("max_tokens must be >= 1", "body.max_tokens")
        if not 0 < p.top_p <= 1:
            raise InvalidRequest("top_p must be in (0, 1]", "body.top_p")
        if p.temperature < 0:
            raise InvalidRequest("temperature must be >= 0", "body.temperature")
        prompt = self.tokenizer.encode(p.prompt)
        deadline_s = p.deadline_ms / 1000 if p.deadline_ms else None
        ticket = self.admission.admit(
            tenant,
            klass=p.priority,
            prompt_tokens=len(prompt),
            max_tokens=p.max_tokens,
            deadline_s=deadline_s,
        )
        m.PROMPT_TOKENS.labels(tenant.name).inc(len(prompt))
        seq = Sequence(
            seq_id=f"cmpl-{uuid.uuid4().hex[:24]}",
            tenant=tenant.name,
            prompt=prompt,
            max_tokens=p.max_tokens,
            sampling=SamplingParams(temperature=p.temperature, top_p=p.top_p, seed=p.seed),
            klass=p.priority,
            stop_at_eos=not p.ignore_eos,
            deadline=time.monotonic() + deadline_s if deadline_s else None,
        )
        return seq, ticket

    async def generate(
        self,
        tenant: TenantConfig,
        p: CompletionParams,
        on_seq: Callable[[Sequence], None] | None = None,
        *,
        stream_tokens: bool = True,
    ) -> AsyncGenerator[Piece | Finish, None]:
        """Admit (raising before anything is yielded), then yield Pieces and one Finish.

        With stream_tokens=False the text arrives as one Piece just before the Finish.
        """
        seq, ticket = self.prepare(tenant, p)
        seq.emit_tokens = stream_tokens
        if on_seq is not None:
            on_seq(seq)
        return self.stream(seq, ticket)

    async def stream(self, seq: Sequence, ticket: Ticket) -> AsyncGenerator[Piece | Finish, None]:
        decoder = StreamDecoder()
        try:
            async for ev in self.engine.stream(seq):
                if ev.kind == "token":
                    if ev.token is not None and ev.token < 256:
                        yield Piece(decoder.feed(ev.token), ev.token)
                    continue
                reason = ev.finish_reason or "error"
                if not seq.output:
                    self._raise_for(reason)
                if not seq.emit_tokens:
                    yield Piece(self.tokenizer.decode(seq.output), -1)
                elif tail := decoder.flush():
                    yield Piece(tail, -1)
                yield Finish(
                    reason=reason,
                    prompt_tokens=len(seq.prompt),
                    completion_tokens=len(seq.output),
                    timing={
                        "queue_wait_ms": _ms(seq.arrival, seq.first_scheduled),
                        "ttft_ms": _ms(seq.arrival, seq.first_token_at),
                        "e2e_ms": _ms(seq.arrival, seq.finished_at),
                    },
                )
        finally:
            # `async for` does not close the engine's generator when we stop early (client
            # gone, job cancelled): cancel explicitly so the engine frees the slot next step.
            if seq.finished_at is None:
                self.engine.cancel(seq)
            ticket.release()

    @staticmethod
    def _raise_for(reason: str) -> None:
        """A request that ended before its first token: tell the client why, as an error."""
        if reason == "deadline":
            raise InferenceError(
                504, "deadline_exceeded", "the request's deadline passed while it waited", reason="deadline"
            )
        if reason in ("aborted", "kill_switch", "shutdown"):
            raise Overloaded(f"request aborted ({reason})", reason, 30)
        if reason == "error":
            raise InferenceError(500, "internal", "the model step failed for this request")

    async def complete(
        self, tenant: TenantConfig, p: CompletionParams, on_seq: Callable[[Sequence], None] | None = None
    ) -> Completion:
        seq_holder: list[Sequence] = []

        def keep(seq: Sequence) -> None:
            seq_holder.append(seq)
            if on_seq is not None:
                on_seq(seq)

        stream = await self.generate(tenant, p, on_seq=keep, stream_tokens=False)
        text: list[str] = []
        finish: Finish | None = None
        async for item in stream:
            if isinstance(item, Piece):
                text.append(item.text)
            else:
                finish = item
        assert finish is not None
        return Completion(seq_holder[0].seq_id, "".join(text), seq_holder[0].output, finish)

    # -- embeddings --------------------------------------------------------------------------
    async def embed(
        self, tenant: TenantConfig, texts: list[str], model: str | None = None
    ) -> tuple[list, int]:
        self._check_model(model, self.embed_model_name)
        batcher = self._embedder()
        loading = self._embedder_loading()
        if batcher is None and loading is not None and not loading.done():
            # Start-up: the model loads in the background (~10 s on CPU); wait for it briefly
            # rather than fail the first requests.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(loading), EMBED_LOAD_WAIT_S)
            batcher = self._embedder()
        if batcher is None:
            raise Overloaded("the embedding model is not loaded (yet)", "embeddings_unavailable", 10)
        if not texts:
            raise InvalidRequest("input must hold at least one text", "body.input")
        tokens = sum(batcher.model.count_tokens(t) for t in texts)
        ticket = self.admission.admit(
            tenant, klass="interactive", prompt_tokens=0, max_tokens=0, queued=False
        )
        try:
            vectors = await batcher.embed(texts, tenant.name)
        finally:
            ticket.release()
        return vectors, tokens

    # -- scoring -----------------------------------------------------------------------------
    async def score(
        self, tenant: TenantConfig, prompt: str, candidates: list[str], model: str | None = None
    ) -> list[CandidateScore]:
        """Sum of candidate token log-probs given the prompt; probabilities via log-sum-exp."""
        self._check_model(model, self.model_name)
        if not candidates:
            raise InvalidRequest("candidates must hold at least one string", "body.candidates")
        if len(candidates) > MAX_SCORE_CANDIDATES:
            raise InvalidRequest(f"at most {MAX_SCORE_CANDIDATES} candidates", "body.candidates")
        p_ids = self.tokenizer.encode(prompt)
        c_ids = [self.tokenizer.encode(c, add_bos=False) for c in candidates]
        for i, c in enumerate(c_ids):
            if not c:
                raise InvalidRequest("a candidate must not be empty", f"body.candidates.{i}")
        longest = max(len(c) for c in c_ids)
        ticket = self.admission.admit(
            tenant, klass="interactive", prompt_tokens=len(p_ids), max_tokens=longest, queued=False
        )
        try:
            fut = self.engine.call(lambda runner: runner.score(p_ids, c_ids))
            per_token = await asyncio.wrap_future(fut)
        finally:
            ticket.release()
        totals = [sum(lp) for lp in per_token]
        top = max(totals)
        lse = top + math.log(sum(math.exp(t - top) for t in totals))
        return [
            CandidateScore(
                candidate=c,
                logprob=total,
                tokens=len(lp),
                mean_logprob=total / len(lp),
                prob=math.exp(total - lse),
                token_logprobs=lp,
            )
            for c, total, lp in zip(candidates, totals, per_token, strict=True)
        ]
