"""A small pre-LayerNorm decoder-only transformer over bytes, in plain torch.

Two entry points share the same layers:
- `forward(tokens, lengths)`: the whole sequence at once, no cache (scoring, tests).
- `forward_step(step, cache)`: a continuous-batching step. The NEW tokens of every sequence (a
  prefill chunk or one decode token each) are packed into one run; their K/V are written into
  the paged cache and attention reads each sequence's context back from it (model/paged.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from services.inference.model.attention import attention
from services.inference.model.kv_cache import KVCache
from services.inference.model.paged import StepBatch, paged_attention
from services.inference.model.tokenizer import VOCAB_SIZE


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = VOCAB_SIZE
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    max_seq_len: int = 1024

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_kv_heads(self) -> int:
        """Heads the KV cache holds (no grouped-query attention here)."""
        return self.n_heads

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(self.n_heads * self.head_dim, dim=-1)
        shape = (b, t, self.n_heads, self.head_dim)
        return q.view(shape), k.view(shape), v.view(shape)  # [B, T, H, D]

    def _finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """attn: [B, T, H, D] -> residual + MLP."""
        b, t = attn.shape[:2]
        x = x + self.proj(attn.reshape(b, t, -1))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        attn = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)
        return self._finish(x, attn.transpose(1, 2))

    def forward_cached(self, x: torch.Tensor, layer: int, cache: KVCache, step: StepBatch) -> torch.Tensor:
        """x [1, N, d]: the step's packed new tokens (model/paged.py)."""
        q, k, v = self._qkv(x)  # [1, N, H, D]
        attn = paged_attention(q[0], k[0], v[0], cache.k[layer], cache.v[layer], step)
        return self._finish(x, attn[None])


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        # LM head tied to the token embedding; logits in float32 for sampling and log-probs.
        return F.linear(self.ln_f(h), self.tok_emb.weight).float()

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, T] right-padded, lengths [B] -> logits [B, T, V] (float32)."""
        t = tokens.shape[1]
        if t > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {t} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        pos = torch.arange(t, device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(pos)[None]
        mask = (pos[None, :] <= pos[:, None])[None, None]  # [1, 1, T, T] causal
        if lengths is not None:
            mask = mask & (pos[None, :] < lengths[:, None])[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        return self._logits(x)

    def forward_step(self, step: StepBatch, cache: KVCache) -> torch.Tensor:
        """One continuous-batching step (packed tokens, model/paged.py) -> logits at
        `step.logit_index`, [R, V] float32."""
        x = (self.tok_emb(step.tokens) + self.pos_emb(step.positions))[None]  # [1, N, d]
        # ModuleList yields plain Modules to a type checker; these are the Blocks built above.
        for layer, block in enumerate(cast("list[Block]", self.blocks)):
            x = block.forward_cached(x, layer, cache, step)
        return self._logits(x[0].index_select(0, step.logit_index))
