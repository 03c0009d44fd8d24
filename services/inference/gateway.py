"""The operations both APIs expose (HTTP in api.py, gRPC in grpc_server.py), transport-free.

Each operation: validate -> input limits (`InputLimits`: bytes checked before tokenising,
then tokens) -> admission (ticket held while in flight) -> engine / embedder -> result. Errors
are InferenceError subclasses; each transport translates them once.

Tokenising (prompts, chat templates, embedding inputs) runs on a small pool of threads
(`tokenize()`), never on the event loop: a 2 MB text must not stall /healthz, streaming or
gRPC for everyone else. The pool is bounded: past `tokenize_max_pending` requests, 503.
Short prompts (`tokenize_inline_chars`, a few microseconds of work) are tokenised on the loop:
the hop to a pool thread and back costs more than that, and under load it is a queue that
every request, even one admission refuses at once, waits in behind the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar

from services.inference import metrics as m
from services.inference.admission import Admission, TenantConfig, Ticket
from services.inference.chat import DEFAULT_STOP as DEFAULT_CHAT_STOP
from services.inference.chat import ChatTemplateError, render_chat
from services.inference.embeddings import DIMENSION as EMBEDDING_DIMENSION
from services.inference.embeddings import EmbeddingBatcher
from services.inference.engine import EngineAPI
from services.inference.errors import InferenceError, InvalidRequest, Overloaded
from services.inference.model.sampling import SamplingParams
from services.inference.model.tokenizer import ByteTokenizer, Tokenizer
from services.inference.sequence import CLASSES, Sequence

MAX_SCORE_CANDIDATES = 32
EMBED_LOAD_WAIT_S = 30.0
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts
MAX_STOP = 4  # stop strings per request, as the OpenAI API allows
MAX_TOP_LOGPROBS = 20
_T = TypeVar("_T")


@dataclass(frozen=True)
class InputLimits:
    """Sizes checked before any work is done on an input (settings: --max-prompt-bytes, ...)."""

    max_prompt_bytes: int = 262144  # UTF-8 bytes of a prompt / of a chat's message contents
    max_embed_inputs: int = 2048  # texts per embeddings request
    max_embed_text_bytes: int = 65536  # UTF-8 bytes per embeddings text
    tokenize_threads: int = 2
    tokenize_max_pending: int = 256  # tokenisations queued or running; past it, 503
    # Prompts of at most this many characters together are tokenised on the event loop (7 us
    # for 11 characters, ~0.2 ms for 256 with pg-small's tokenizer): under load the pool's
    # queue and the GIL hand-offs to and from its threads cost far more than that.
    tokenize_inline_chars: int = 256


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


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
    prompt_field: str = "body.prompt"  # where the prompt came from, for errors (body.messages, ...)
    encoded: list[int] | None = None  # `prompt` tokenised by Gateway.tokenize (off the event loop)


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
        engine: EngineAPI,
        admission: Admission,
        *,
        model_name: str,
        embedder: Callable[[], EmbeddingBatcher | None] = lambda: None,
        embedder_loading: Callable[[], asyncio.Task | None] = lambda: None,
        embed_model_name: str = "all-MiniLM-L6-v2",
        tokenizer: Tokenizer | None = None,
        input_limits: InputLimits | None = None,
    ) -> None:
        self.engine = engine
        self.input_limits = input_limits or InputLimits()
        self._tokenize_pool = ThreadPoolExecutor(
            max_workers=self.input_limits.tokenize_threads, thread_name_prefix="tokenize"
        )
        self.tokenize_pending = 0
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

    async def chat_params(
        self, messages: list[dict[str, Any]], p: CompletionParams, max_tokens: int | None
    ) -> CompletionParams:
        """`p` with the conversation rendered as its prompt (the model's chat template) and
        tokenised (both off the event loop), the template's end-of-turn as a stop string, and
        max_tokens as OpenAI's default: as much as the context leaves."""
        if not messages:
            raise InvalidRequest("messages must hold at least one message", "body.messages")
        limit, total = self.input_limits.max_prompt_bytes, 0
        for i, msg in enumerate(messages):
            total += _utf8_len(str(msg.get("content") or "")) + _utf8_len(str(msg.get("name") or ""))
            if total > limit:
                raise InvalidRequest(
                    f"the messages hold more than {limit} bytes of text (max_prompt_bytes)",
                    f"body.messages.{i}.content",
                    reason="prompt_too_large",
                )

        def render_and_encode() -> tuple[str, list[int]]:
            prompt = render_chat(messages, self.chat_template, self.chat_special_tokens)
            return prompt, self.tokenizer.encode(prompt)

        try:
            p.prompt, p.encoded = await self._off_loop(render_and_encode)
        except ChatTemplateError as exc:
            raise InvalidRequest(str(exc), "body.messages") from None
        p.prompt_ids = None
        p.prompt_field = "body.messages"
        p.extra_stop = self.chat_stop
        if max_tokens is None:
            lim = self.admission.limits
            room = lim.max_total_tokens - len(self.encode_prompt(p))
            p.max_tokens = max(1, min(lim.max_output_tokens, room))
        else:
            p.max_tokens = max_tokens
        return p

    # -- tokenising, off the event loop -------------------------------------------------------
    async def _off_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(*args)` on a tokeniser thread; 503 when too many tokenisations are queued."""
        if self.tokenize_pending >= self.input_limits.tokenize_max_pending:
            raise Overloaded("too many requests are being tokenised", "tokenizer_busy", 1)
        self.tokenize_pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._tokenize_pool, fn, *args)
        finally:
            self.tokenize_pending -= 1

    def check_prompt_bytes(self, text: str, field: str) -> None:
        limit = self.input_limits.max_prompt_bytes
        if len(text) * 4 > limit and (n := _utf8_len(text)) > limit:  # 4 bytes per char at most
            raise InvalidRequest(
                f"the text is {n} bytes, the limit is {limit} (max_prompt_bytes)",
                field,
                reason="prompt_too_large",
            )

    async def tokenize(self, params: list[CompletionParams]) -> None:
        """Check each text prompt's size, then tokenise them all on a tokeniser thread (each
        distinct text once: n choices share a prompt); `prepare` then uses the result."""
        todo: dict[str, list[CompletionParams]] = {}
        for p in params:
            if p.prompt_ids is None and p.encoded is None:
                self.check_prompt_bytes(p.prompt, p.prompt_field)
                todo.setdefault(p.prompt, []).append(p)
        if not todo:
            return
        texts = list(todo)
        if sum(map(len, texts)) <= self.input_limits.tokenize_inline_chars:
            encoded = [self.tokenizer.encode(t) for t in texts]
        else:
            encoded = await self._off_loop(lambda: [self.tokenizer.encode(t) for t in texts])
        for text, ids in zip(texts, encoded, strict=True):
            for p in todo[text]:
                p.encoded = ids

    def encode_prompt(self, p: CompletionParams) -> list[int]:
        if p.prompt_ids is not None:
            return list(p.prompt_ids)
        if p.encoded is not None:
            return list(p.encoded)
        self.check_prompt_bytes(p.prompt, p.prompt_field)  # a caller that skipped tokenize()
        return self.tokenizer.encode(p.prompt)

    def check_prompt_tokens(self, tenant: TenantConfig, n: int, field: str) -> None:
        limit = self.admission.limits.max_prompt_tokens
        if n > limit:
            m.REJECTIONS.labels(tenant.name, "prompt_too_long").inc()
            raise InvalidRequest(
                f"the prompt is {n} tokens, the limit is {limit} (max_prompt_tokens)",
                field,
                status=413,
                reason="prompt_too_long",
            )

    def prepare(self, tenant: TenantConfig, p: CompletionParams) -> tuple[Sequence, Ticket]:
        """Validate and admit (raises on rejection); run the result with `stream()`. Call
        `tokenize([p])` first, or the prompt is tokenised here, on the caller's thread."""
        self.validate(p)
        prompt = self.encode_prompt(p)
        self.check_prompt_tokens(tenant, len(prompt), p.prompt_field)
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
            queue_deadline=time.monotonic() + self.admission.limits.queue_timeout(p.priority),
        )
        ticket.bind(seq)  # admission counts it while it waits, then learns its real wait
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
        self.validate(p)
        await self.tokenize([p])
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
                    if reason == "queue_timeout":
                        raise Overloaded(
                            "the request waited past the queue timeout for its first step"
                            f" ({self.admission.limits.queue_timeout(seq.klass):g}s for {seq.klass})",
                            reason,
                            self.admission.queue_timeout_retry_after(ticket),
                        )
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
        *,
        single: bool = False,
    ) -> tuple[list[list[float]], int]:
        """Unit vectors; with `dimensions`, the first that many components, renormalised.

        Limits: `max_embed_inputs` texts of `max_embed_text_bytes` each (400 naming the input);
        tokens are counted off the event loop and charged to the tenant's token bucket (400
        request_too_large past its burst, 429 while it refills). `single`: the input was one
        string (errors name `input`, not `input.0`)."""
        self._check_model(model, self.embed_model_name)
        if dimensions is not None and not 1 <= dimensions <= EMBEDDING_DIMENSION:
            raise InvalidRequest(
                f"dimensions must be in [1, {EMBEDDING_DIMENSION}] for {self.embed_model_name}",
                "body.dimensions",
            )
        lim = self.input_limits
        if len(texts) > lim.max_embed_inputs:
            raise InvalidRequest(
                f"input holds {len(texts)} texts, the limit is {lim.max_embed_inputs} (embed_max_inputs)",
                "body.input",
                reason="too_many_inputs",
            )
        for i, text in enumerate(texts):
            if len(text) * 4 > lim.max_embed_text_bytes and (n := _utf8_len(text)) > lim.max_embed_text_bytes:
                raise InvalidRequest(
                    f"the text is {n} bytes, the limit is {lim.max_embed_text_bytes} (embed_max_text_bytes)",
                    "body.input" if single else f"body.input.{i}",
                    reason="input_too_large",
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
        counts = await self._off_loop(batcher.model.count_many, texts)
        tokens = sum(counts)
        if tokens > tenant.burst_tokens:
            m.REJECTIONS.labels(tenant.name, "request_too_large").inc()
            raise InvalidRequest(
                f"this request is {tokens} tokens, more than tenant {tenant.name}'s token burst of"
                f" {tenant.burst_tokens:g}: it can never be admitted; send fewer texts per request",
                "body.input",
                reason="request_too_large",
            )
        ticket = self.admission.admit(
            tenant, klass="interactive", prompt_tokens=tokens, max_tokens=0, queued=False, sized=False
        )
        try:
            vectors = await batcher.embed(texts, tenant.name, counts, tenant.weight)
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
        fut = self.engine.score(ids[:1], [ids[1:]])
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
        self.check_prompt_bytes(prompt, "body.prompt")
        for i, cand in enumerate(candidates):
            self.check_prompt_bytes(cand, f"body.candidates.{i}")
        p_ids, c_ids = await self._off_loop(
            lambda: (
                self.tokenizer.encode(prompt),
                [self.tokenizer.encode(x, add_bos=False) for x in candidates],
            )
        )
        self.check_prompt_tokens(tenant, len(p_ids), "body.prompt")
        for i, c in enumerate(c_ids):
            if not c:
                raise InvalidRequest("a candidate must not be empty", f"body.candidates.{i}")
        longest = max(len(c) for c in c_ids)
        ticket = self.admission.admit(
            tenant, klass="interactive", prompt_tokens=len(p_ids), max_tokens=longest, queued=False
        )
        try:
            fut = self.engine.score(p_ids, c_ids)
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
