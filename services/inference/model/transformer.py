"""A small pre-LayerNorm decoder-only transformer over bytes, in plain torch.

Two entry points share the same layers:
- `forward(tokens, lengths)`: the whole sequence at once, no cache (scoring, tests).
- `forward_step(step, cache)`: a continuous-batching step. Each row holds the NEW tokens of one
  sequence (a prefill chunk or one decode token); their K/V are written into the paged cache and
  attention reads the sequence's whole context back from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from services.inference.model.attention import attention
from services.inference.model.kv_cache import KVCache
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


@dataclass
class StepBatch:
    """Tensors for one batched step; built by the runner from the scheduler's decisions."""

    tokens: torch.Tensor  # [B, T] new tokens, right-padded
    positions: torch.Tensor  # [B, T] absolute positions of the new tokens (pad rows: 0)
    new_lens: torch.Tensor  # [B] valid new tokens per row
    ctx_lens: torch.Tensor  # [B] context length after this step (cached + new)
    tables: torch.Tensor  # [B, max_blocks] block tables, padded with 0


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

    def forward_cached(
        self,
        x: torch.Tensor,
        layer: int,
        cache: KVCache,
        write_slots: torch.Tensor,
        write_rows: torch.Tensor,
        read_slots: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        q, k, v = self._qkv(x)  # [B, T, H, D]
        k_pool, v_pool = cache.k[layer], cache.v[layer]  # [H, slots, D] views
        # Only real (non-pad) new tokens are written; pad rows would clobber other slots.
        # index_select/index_copy_ rather than advanced indexing: several times faster on CPU.
        heads = (self.n_heads, self.head_dim)
        new_k = k.reshape(-1, *heads).index_select(0, write_rows).transpose(0, 1)  # [H, N, D]
        new_v = v.reshape(-1, *heads).index_select(0, write_rows).transpose(0, 1)
        k_pool.index_copy_(1, write_slots, new_k.to(k_pool.dtype))
        v_pool.index_copy_(1, write_slots, new_v.to(v_pool.dtype))
        # Heads-first pool: the gather lands contiguous as [H, B, Lctx, D], and attention runs
        # with (H, B) as batch dims; no transpose copy of the whole context per layer.
        b, lctx = read_slots.shape
        flat = read_slots.reshape(-1)
        keys = k_pool.index_select(1, flat).view(self.n_heads, b, lctx, self.head_dim)
        values = v_pool.index_select(1, flat).view(self.n_heads, b, lctx, self.head_dim)
        qh = q.permute(2, 0, 1, 3)  # [H, B, T, D]
        attn = attention(qh, keys.to(q.dtype), values.to(q.dtype), mask.transpose(0, 1))  # [H, B, T, D]
        return self._finish(x, attn.permute(1, 2, 0, 3))


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
        """One continuous-batching step -> logits at each row's last new token, [B, V] float32."""
        b, t = step.tokens.shape
        dev = step.tokens.device
        x = self.tok_emb(step.tokens) + self.pos_emb(step.positions)
        # Where each real new token goes in the pool, and which flat (row, t) it comes from.
        real = torch.arange(t, device=dev)[None, :] < step.new_lens[:, None]  # [B, T]
        write_rows = real.reshape(-1).nonzero().squeeze(1)
        write_slots = cache.slots(step.tables, step.positions)[real]
        # Context read back for every row: positions 0..max_ctx-1, pad keys masked out.
        max_ctx = int(step.ctx_lens.max())
        k_pos = torch.arange(max_ctx, device=dev)[None, :].expand(b, max_ctx)
        k_valid = k_pos < step.ctx_lens[:, None]
        read_slots = cache.slots(step.tables, torch.where(k_valid, k_pos, torch.zeros_like(k_pos)))
        # Query (row b, new token i) at absolute position p sees keys j <= p that exist.
        mask = (k_pos[:, None, :] <= step.positions[:, :, None]) & k_valid[:, None, :]
        mask = mask[:, None]  # [B, 1, T, Lctx]
        # ModuleList yields plain Modules to a type checker; these are the Blocks built above.
        for layer, block in enumerate(cast("list[Block]", self.blocks)):
            x = block.forward_cached(x, layer, cache, write_slots, write_rows, read_slots, mask)
        last = (step.new_lens - 1).clamp(min=0)
        return self._logits(x[torch.arange(b, device=dev), last])
