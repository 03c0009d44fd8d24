"""Next-token selection: greedy, temperature, top-p; one torch.Generator per request.

Each request owns its generator (seeded from the request's seed), so the tokens it samples do
not depend on which other requests share its batch or in which order rows are laid out.
Presence/frequency penalties (OpenAI's definition) subtract from the logits of tokens already
generated; with `logprobs` set, each sampled token's log-prob under the model (raw logits) and
the top-k alternatives are appended to `recorded`, before the token's event is emitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # record the sampled token's log-prob and this many alternatives
    generator: torch.Generator | None = field(default=None, repr=False)
    counts: dict[int, int] = field(default_factory=dict, repr=False)  # generated token -> times
    recorded: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list, repr=False)

    @property
    def penalised(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)

    def __post_init__(self) -> None:
        if self.temperature > 0 and self.generator is None:
            gen = torch.Generator(device="cpu")
            if self.seed is None:
                gen.seed()
            else:
                gen.manual_seed(self.seed)
            self.generator = gen


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches top_p; others -> -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    # A token is dropped when the tokens ranked above it already reach top_p; the top token
    # always survives (mass_before = 0).
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _penalise(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    if not p.counts:
        return row
    ids = torch.tensor(list(p.counts), dtype=torch.long)
    freq = torch.tensor(list(p.counts.values()), dtype=row.dtype)
    row = row.clone()
    row[ids] -= p.frequency_penalty * freq + p.presence_penalty
    return row


def sample(logits: torch.Tensor, params: list[SamplingParams]) -> list[int]:
    """logits [B, V] float32 -> one token id per row."""
    greedy = logits.argmax(dim=-1).tolist()
    out: list[int] = []
    cpu_logits = None
    for row, p in enumerate(params):
        if p.temperature <= 0 and not p.penalised and p.logprobs is None:
            out.append(greedy[row])
            continue
        if cpu_logits is None:
            cpu_logits = logits.float().cpu()
        raw = cpu_logits[row]
        adjusted = _penalise(raw, p) if p.penalised else raw
        if p.temperature <= 0:
            tok = int(adjusted.argmax())
        else:
            scaled = top_p_filter(adjusted / p.temperature, p.top_p)
            probs = torch.softmax(scaled, dim=-1)
            tok = int(torch.multinomial(probs, 1, generator=p.generator))
        if p.penalised:
            p.counts[tok] = p.counts.get(tok, 0) + 1
        if p.logprobs is not None:
            logp = torch.log_softmax(raw, dim=-1)
            top = torch.topk(logp, min(p.logprobs, logp.numel())) if p.logprobs > 0 else None
            alts = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top else []
            p.recorded.append((float(logp[tok]), alts))
        out.append(tok)
    return out
