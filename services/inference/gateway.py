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
import weakref
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from services.inference import metrics as m
from services.inference.admission import Admission, TenantConfig, Ticket
from services.inference.chat import DEFAULT_STOP as DEFAULT_CHAT_STOP
from services.inference.chat import ChatTemplateError, render_chat
from services.inference.embeddings import DIMENSION as EMBEDDING_DIMENSION
from services.inference.embeddings import EmbeddingBatcher
from services.inference.engine import Engine
from services.inference.errors import InferenceError, InvalidRequest, Overloaded
from services.inference.model.sampling import SamplingParams
from services.inference.model.tokenizer import ByteTokenizer, Tokenizer
from services.inference.sequence import CLASSES, Sequence

MAX_SCORE_CANDIDATES = 32
EMBED_LOAD_WAIT_S = 30.0
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts
MAX_STOP = 4  # stop strings per request, as the OpenAI API allows
MAX_TOP_LOGPROBS = 20


@dataclass
class CompletionParams:
    prompt: str = ""
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    priority: str = "interactive"
    deadline_ms: int | None = None
    ignore_eos: bool = False
    model: str | None = None
    prompt_ids: list[int] | None = None  # an already tokenised prompt (wins over `prompt`)
    stop: list[str] = field(default_factory=list)
    extra_stop: tuple[str, ...] = ()  # the server's own (the default chat template's end of turn)
    logprobs: int | None = None  # record each token's log-prob and this many alternatives
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None


@dataclass
class TokenLogprob:
    """One generated token's log-prob (raw model distribution) and its top alternatives."""

    token: str
    bytes: list[int]
    logprob: float | None  # None: the first prompt token (echo), which nothing predicts
    top: list[tuple[str, list[int], float]]


@dataclass
class Piece:
    """One streamed token (text may be "" while a UTF-8 character or a stop prefix is held)."""

    text: str
    token_id: int
    logprob: TokenLogprob | None = None


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


def _renormalised(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v] if norm > 0 else v


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000, 3)


class StopMatcher:
    """Finds stop strings in streamed text, across token boundaries.

    Generation ends at the first point where a stop string is complete (the earliest end, as
    when checking after every character); the text is cut before that stop string (the longest
    one when several end there). However the text is split into pieces, the result is the
    same. Text is released as soon as it cannot be the start of a stop string; a suffix that
    is a proper prefix of one is held until the next piece decides. `feed` returns the text to
    release and whether a stop string was found (then the rest is dropped).
    """

    def __init__(self, stops: list[str] | tuple[str, ...]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        buf = self._held + text
        # The held text holds no complete stop: only ends inside the new text can match.
        for end in range(len(self._held) + 1, len(buf) + 1):
            starts = [end - len(s) for s in self.stops if len(s) <= end and buf.startswith(s, end - len(s))]
            if starts:
                self._held = ""
                return buf[: min(starts)], True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self._held = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


class _ChoiceText:
    """Token ids -> released text pieces for one sequence: UTF-8 reassembly, stop strings."""

    def __init__(self, gateway: Gateway, seq: Sequence, stop: tuple[str, ...]) -> None:
        self.gateway = gateway
        self.seq = seq
        self.decoder = gateway.tokenizer.stream_decoder()
        self.matcher = StopMatcher(stop) if stop else None
        self.consumed = 0
        self.stopped = False

    def token(self, tok: int) -> Piece | None:
        """The piece for the next generated token (None for special tokens)."""
        index = self.consumed
        self.consumed += 1
        if self.gateway.is_special(tok):
            return None
        text = self.decoder.feed(tok)
        if self.matcher is not None:
            text, self.stopped = self.matcher.feed(text)
        return Piece(text, tok, self.gateway.logprob_of(self.seq, index, tok))

    def tail(self) -> str:
        text = self.decoder.flush()
        if self.matcher is None:
            return text
        text, self.stopped = self.matcher.feed(text)
        return text if self.stopped else text + self.matcher.flush()


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
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.engine = engine
        self.admission = admission
        self.tokenizer: Tokenizer = tokenizer or ByteTokenizer()
        self.model_name = model_name
        self._embedder = embedder
        self._embedder_loading = embedder_loading
        self.embed_model_name = embed_model_name
        # Chat: a checkpoint's own template and special tokens replace these (chat.py).
        self.chat_template: str | None = self.tokenizer.chat_template
        self.chat_special_tokens: dict[str, str] = dict(self.tokenizer.special_tokens)
        self.chat_stop: tuple[str, ...] = () if self.chat_template else DEFAULT_CHAT_STOP
        self.created = int(time.time())
        self._stops: weakref.WeakKeyDictionary[Sequence, tuple[str, ...]] = weakref.WeakKeyDictionary()

    # -- tokens ------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self.engine.model.cfg.vocab_size)

    def is_special(self, tok: int) -> bool:
        """Tokens with no text (BOS, EOS, PAD): neither streamed nor given log-probs."""
        return self.tokenizer.is_special(tok)

    def token_bytes(self, tok: int) -> list[int]:
        return self.tokenizer.token_bytes(tok)

    def token_text(self, tok: int) -> str:
        """A token as OpenAI's logprobs show it: its text, or `bytes:\\xNN` when not UTF-8 alone."""
        return self.tokenizer.token_text(tok)

    def logprob_of(self, seq: Sequence, index: int, tok: int) -> TokenLogprob | None:
        rec = seq.sampling.recorded
        if seq.sampling.logprobs is None or index >= len(rec):
            return None
        lp, alts = rec[index]
        return TokenLogprob(
            self.token_text(tok),
            self.token_bytes(tok),
            lp,
            [(self.token_text(t), self.token_bytes(t), v) for t, v in alts],
        )

    # -- models ------------------------------------------------------------------------------
    def models(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = [
            {
                "id": self.model_name,
                "object": "model",
                "created": self.created,
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
                    "created": self.created,
                    "owned_by": "sentence-transformers",
                    "kind": "embedding",
                    "dimension": EMBEDDING_DIMENSION,
                }
            )
        return out

    def model(self, model_id: str) -> dict[str, object]:
        for entry in self.models():
            if entry["id"] == model_id:
                return entry
        raise InferenceError(
            404,
            "not_found",
            f"the model {model_id!r} does not exist",
            field="path.model",
            reason="model_not_found",
            code="model_not_found",
        )

    def _check_model(self, model: str | None, expected: str) -> None:
        if model not in (None, "", expected):
            raise InferenceError(
                404,
                "not_found",
                f"model {model!r} is not served here (try {expected!r})",
                field="body.model",
                reason="model_not_found",
                code="model_not_found",
            )

    # -- generation --------------------------------------------------------------------------
    def validate(self, p: CompletionParams) -> None:
        """Checks that need no admission: every transport gets the same 400s."""
        self._check_model(p.model, self.model_name)
        if p.priority not in CLASSES:
            raise InvalidRequest(f"priority must be one of {list(CLASSES)}", "body.priority")
        if p.max_tokens < 1:
            raise InvalidRequest("max_tokens must be >= 1", "body.max_tokens")
        if not 0 < p.top_p <= 1:
            raise InvalidRequest("top_p must be in (0, 1]", "body.top_p")
        if p.temperature < 0:
            raise InvalidRequest("temperature must be >= 0", "body.temperature")
        if p.seed is not None and not SEED_MIN <= p.seed <= SEED_MAX:
            raise InvalidRequest(f"seed must be in [{SEED_MIN}, {SEED_MAX}] (64 bits)", "body.seed")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(p, name) <= 2.0:
                raise InvalidRequest(f"{name} must be in [-2, 2]", f"body.{name}")
        if len(p.stop) > MAX_STOP:
            raise InvalidRequest(f"at most {MAX_STOP} stop strings", "body.stop")
        if p.logprobs is not None and not 0 <= p.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}]", "body.logprobs")
        if p.prompt_ids is not None:
            ids, vocab = p.prompt_ids, self.vocab_size
            if not ids:
                raise InvalidRequest("a token prompt must hold at least one token", "body.prompt")
            if not 0 <= min(ids) <= max(ids) < vocab:
                i = next(i for i, t in enumerate(ids) if not 0 <= t < vocab)
                raise InvalidRequest(f"token {ids[i]} is not in [0, {vocab})", f"body.prompt.{i}")

    def chat_params(
        self, messages: list[dict[str, Any]], p: CompletionParams, max_tokens: int | None
    ) -> CompletionParams:
        """`p` with the conversation rendered as its prompt (the model's chat template), the
        template's end-of-turn as a stop string, and max_tokens as OpenAI's default: as much
        as the context leaves."""
        if not messages:
            raise InvalidRequest("messages must hold at least one message", "body.messages")
        try:
            p.prompt = render_chat(messages, self.chat_template, self.chat_special_tokens)
        except ChatTemplateError as exc:
            raise InvalidRequest(str(exc), "body.messages") from None
        p.prompt_ids = None
        p.extra_stop = self.chat_stop
        if max_tokens is None:
            lim = self.admission.limits
            room = lim.max_total_tokens - len(self.encode_prompt(p))
            p.max_tokens = max(1, min(lim.max_output_tokens, room))
        else:
            p.max_tokens = max_tokens
        return p

    def encode_prompt(self, p: CompletionParams) -> list[int]:
        return list(p.prompt_ids) if p.prompt_ids is not None else self.tokenizer.encode(p.prompt)

    def prepare(self, tenant: TenantConfig, p: CompletionParams) -> tuple[Sequence, Ticket]:
        """Validate and admit (raises on rejection); run the result with `stream()`."""
        self.validate(p)
        prompt = self.encode_prompt(p)
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
            sampling=SamplingParams(
                temperature=p.temperature,
                top_p=p.top_p,
                seed=p.seed,
                presence_penalty=p.presence_penalty,
                frequency_penalty=p.frequency_penalty,
                logprobs=p.logprobs,
            ),
            klass=p.priority,
            stop_at_eos=not p.ignore_eos,
            deadline=time.monotonic() + deadline_s if deadline_s else None,
        )
        if p.stop or p.extra_stop:
            self._stops[seq] = (*p.stop, *p.extra_stop)
        return seq, ticket

    def prepare_many(
        self, tenant: TenantConfig, params: list[CompletionParams]
    ) -> list[tuple[Sequence, Ticket]]:
        """Admit all or none (n choices, list prompts): a rejection releases those admitted."""
        for p in params:
            self.validate(p)
        out: list[tuple[Sequence, Ticket]] = []
        try:
            for p in params:
                out.append(self.prepare(tenant, p))
        except BaseException:
            for _, ticket in out:
                ticket.release()
            raise
        return out

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

    def _finish(self, seq: Sequence, reason: str, completion_tokens: int) -> Finish:
        return Finish(
            reason=reason,
            prompt_tokens=len(seq.prompt),
            completion_tokens=completion_tokens,
            timing={
                "queue_wait_ms": _ms(seq.arrival, seq.first_scheduled),
                "ttft_ms": _ms(seq.arrival, seq.first_token_at),
                "e2e_ms": _ms(seq.arrival, seq.finished_at or time.monotonic()),
            },
        )

    async def stream(self, seq: Sequence, ticket: Ticket) -> AsyncGenerator[Piece | Finish, None]:
        """Pieces then one Finish. A stop string ends the sequence at once (finish "stop").

        Without per-token events (`seq.emit_tokens` false) the output is processed the same way
        once the sequence has finished, and arrives as one Piece (with `logprobs`, one per token).
        """
        state = _ChoiceText(self, seq, self._stops.get(seq, ()))
        try:
            async for ev in self.engine.stream(seq):
                if ev.kind == "token":
                    if ev.token is None:
                        continue
                    piece = state.token(ev.token)
                    if piece is not None:
                        yield piece
                    if state.stopped:
                        self.engine.cancel(seq, "stop")
                        yield self._finish(seq, "stop", state.consumed)
                        return
                    continue
                reason = ev.finish_reason or "error"
                if not seq.output:
                    self._raise_for(reason)
                if not seq.emit_tokens and state.matcher is None and seq.sampling.logprobs is None:
                    # The common case: the whole text at once.
                    yield Piece(self.tokenizer.decode(seq.output), -1)
                    yield self._finish(seq, reason, len(seq.output))
                    return
                if not seq.emit_tokens:
                    pieces: list[Piece] = []
                    for tok in list(seq.output):
                        piece = state.token(tok)
                        if piece is not None:
                            pieces.append(piece)
                        if state.stopped:
                            reason = "stop"
                            break
                    if not state.stopped:
                        pieces.append(Piece(state.tail(), -1))
                        reason = "stop" if state.stopped else reason
                    if seq.sampling.logprobs is None:  # one piece: the whole text
                        pieces = [Piece("".join(x.text for x in pieces), -1)]
                    for piece in pieces:
                        yield piece
                    yield self._finish(seq, reason, state.consumed)
                    return
                if tail := state.tail():
                    yield Piece(tail, -1)
                if state.stopped:
                    reason = "stop"
                yield self._finish(seq, reason, len(seq.output))
        finally:
            # `async for` does not close the engine's generator when we stop early (client
            # gone, job cancelled): cancel explicitly so the engine frees the slot next step.
            if seq.finished_at is None and not seq.cancelled:
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
        self,
        tenant: TenantConfig,
        texts: list[str],
        model: str | None = None,
        dimensions: int | None = None,
    ) -> tuple[list[list[float]], int]:
        """Unit vectors; with `dimensions`, the first that many components, renormalised."""
        self._check_model(model, self.embed_model_name)
        if dimensions is not None and not 1 <= dimensions <= EMBEDDING_DIMENSION:
            raise InvalidRequest(
                f"dimensions must be in [1, {EMBEDDING_DIMENSION}] for {self.embed_model_name}",
                "body.dimensions",
            )
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
        if dimensions is not None and dimensions < EMBEDDING_DIMENSION:
            vectors = [_renormalised(v[:dimensions]) for v in vectors]
        return vectors, tokens

    # -- prompt log-probs (echo) ---------------------------------------------------------------
    async def prompt_logprobs(self, ids: list[int]) -> list[float | None]:
        """Each prompt token's log-prob given the tokens before it (None for the first)."""
        if len(ids) < 2:
            return [None] * len(ids)
        fut = self.engine.call(lambda runner: runner.score(ids[:1], [ids[1:]]))
        (rest,) = await asyncio.wrap_future(fut)
        return [None, *rest]

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
