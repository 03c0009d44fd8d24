"""A generation request as the scheduler sees it: tokens, progress, KV blocks, timestamps.

State machine: WAITING -> RUNNING -> FINISHED, and RUNNING -> WAITING on preemption (its KV
blocks are freed and its tokens, prompt plus what it already generated, are recomputed later).
`num_computed` counts tokens whose K/V are in the cache; a running sequence needs
`len(tokens) - num_computed` more (a prefill chunk, or 1 when decoding) before it can sample.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.inference.model.sampling import SamplingParams

CLASSES = ("interactive", "batch")  # priority order


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class SeqEvent:
    kind: str  # "token" | "finish"
    token: int | None = None
    finish_reason: str | None = None
    seq: Sequence | None = None


@dataclass(eq=False)
class Sequence:
    seq_id: str
    tenant: str
    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    klass: str = "interactive"
    stop_at_eos: bool = True
    deadline: float | None = None  # monotonic; a request still waiting past it is dropped
    # monotonic; the server's own bound on waiting for a first step (Limits.queue_timeout):
    # still waiting past it, the request is dropped with 503 queue_timeout, not served late
    queue_deadline: float | None = None
    on_event: Callable[[SeqEvent], Any] | None = field(default=None, repr=False)

    output: list[int] = field(default_factory=list)
    num_computed: int = 0
    block_table: list[int] = field(default_factory=list)
    # Prefix caching (kv_cache.py): the chain's salt (the engine sets the tenant, so tenants
    # never share blocks), the hashes of the full blocks of `tokens` computed so far (tokens only
    # grow, so they stay valid across preemptions), how many leading table blocks are named,
    # and how many prompt tokens the last admission found cached.
    cache_salt: str = ""
    hash_root: bytes = field(default=b"", repr=False)
    block_hashes: list[bytes] = field(default_factory=list, repr=False)
    num_registered: int = 0
    cached_tokens: int = 0
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: str | None = None
    cancelled: bool = False  # set from any thread; the engine acts on it at its next step
    # Per-token events only for consumers that stream; the others get the finish event alone,
    # which spares the event loop one wake-up and one queue hop per generated token.
    emit_tokens: bool = True
    preemptions: int = 0
    queued_step: int = 0  # scheduler step at which it last entered the waiting queue
    # Tokens of work (pending prompt + output still to generate) it brought into the waiting
    # queue; constant while it waits, so the queue keeps its total exactly (fairness.py).
    queued_work: int = 0

    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    # Engine step numbers: timing-free evidence for the scheduling tests.
    arrival_step: int = 0
    finish_step: int | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    def token_slice(self, start: int, n: int) -> list[int]:
        """tokens[start:start + n] without building the whole token list (a decode step reads
        one token of each running sequence)."""
        lp = len(self.prompt)
        if start + n <= lp:
            return self.prompt[start : start + n]
        if start >= lp:
            return self.output[start - lp : start - lp + n]
        return self.prompt[start:] + self.output[: start + n - lp]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def pending(self) -> int:
        """Tokens to compute before the next sample."""
        return self.num_tokens - self.num_computed

    @property
    def max_total_tokens(self) -> int:
        return len(self.prompt) + self.max_tokens

    def emit(self, event: SeqEvent) -> None:
        if self.on_event is not None:
            event.seq = self
            self.on_event(event)
