"""Next-token selection: greedy, temperature, top-p; one torch.Generator per request.

Each request owns its generator (seeded from the request's seed), so the tokens it samples do
not depend on which other requests share its batch or in which order rows are laid out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    generator: torch.Generator | None = field(default=None, repr=False)

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


def sample(logits: torch.Tensor, params: list[SamplingParams]) -> list[int]:
    """logits [B, V] float32 -> one token id per row."""
    greedy = logits.argmax(dim=-1).tolist()
    out: list[int] = []
    cpu_logits = None
    for row, p in enumerate(params):
        if p.temperature <= 0:
            out.append(greedy[row])
            continue
        if cpu_logits is None:
            cpu_logits = logits.float().cpu()
        scaled = top_p_filter(cpu_logits[row] / p.temperature, p.top_p)
        probs = torch.softmax(scaled, dim=-1)
        out.append(int(torch.multinomial(probs, 1, generator=p.generator)))
    return out
