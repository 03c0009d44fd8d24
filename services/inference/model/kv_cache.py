"""KV cache as a pool of fixed-size blocks (vLLM-style paging, gathered rather than fused).

Memory is one preallocated tensor per K and V: [n_layers, H, num_blocks * block_size, D]. A
sequence owns a list of block ids (its block table); token position p lives in slot
`table[p // block_size] * block_size + p % block_size`. The budget is therefore a number of
tokens fixed at start-up, and no load can make it grow: a sequence that cannot get a block
waits or is preempted by the scheduler (policy lives there, not here).

Invariant: every block is either in `_free` or in exactly one sequence's table.
"""

from __future__ import annotations

import torch


class KVCacheFull(Exception):
    """Raised when a block is requested and none is free."""


class KVCache:
    def __init__(
        self,
        *,
        n_layers: int,
        n_heads: int,
        head_dim: int,
        num_tokens: int,
        block_size: int = 16,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if num_tokens < block_size:
            raise ValueError(f"KV budget {num_tokens} tokens is smaller than one block ({block_size})")
        self.block_size = block_size
        self.num_blocks = num_tokens // block_size
        # Heads before slots: a gather of a batch's contexts is then already [H, B*L, D].
        shape = (n_layers, n_heads, self.num_blocks * block_size, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # Pop from the end: the most recently freed block is reused first (warm in cache).
        self._free: list[int] = list(range(self.num_blocks - 1, -1, -1))

    # -- accounting ---------------------------------------------------------------------------
    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def used_tokens(self) -> int:
        """Tokens' worth of blocks handed out (what the budget is charged)."""
        return (self.num_blocks - len(self._free)) * self.block_size

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- allocation ---------------------------------------------------------------------------
    def can_grow(self, table: list[int], total_tokens: int) -> bool:
        return self.blocks_for(total_tokens) - len(table) <= len(self._free)

    def grow(self, table: list[int], total_tokens: int) -> None:
        """Extend `table` in place to hold `total_tokens`; all-or-nothing."""
        need = self.blocks_for(total_tokens) - len(table)
        if need <= 0:
            return
        if need > len(self._free):
            raise KVCacheFull(f"need {need} blocks, {len(self._free)} free")
        for _ in range(need):
            table.append(self._free.pop())

    def free(self, table: list[int]) -> None:
        self._free.extend(reversed(table))
        table.clear()

    # -- addressing ---------------------------------------------------------------------------
    def slots(self, tables: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Flat slot index for each position; tables [B, max_blocks], positions [B, L]."""
        block_idx = torch.div(positions, self.block_size, rounding_mode="floor")
        blocks = torch.gather(tables, 1, block_idx)
        return blocks * self.block_size + positions % self.block_size
