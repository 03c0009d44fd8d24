"""KV cache as a pool of fixed-size blocks (vLLM-style paging, gathered rather than fused),
with automatic prefix caching.

Memory is one preallocated tensor per K and V: [n_layers, H, num_blocks * block_size, D]. A
sequence owns a list of block ids (its block table); token position p lives in slot
`table[p // block_size] * block_size + p % block_size`. The budget is therefore a number of
tokens fixed at start-up, and no load can make it grow: a sequence that cannot get a block
waits or is preempted by the scheduler (policy lives there, not here).

Prefix caching (`prefix_caching=True`, as vLLM's automatic prefix caching): a FULL block is
named by a hash of (its parent block's hash, the token ids in it), so equal hashes mean equal
whole prefixes. Once a sequence has computed a full block, the block is registered under its
hash. A new sequence whose leading full blocks are registered takes them instead of computing
them (`allocate`): they are reference-counted, and never written again (a sequence writes only
positions at or past `num_computed`, and hits are whole blocks before it), so no copy-on-write
is ever needed. At least one prompt token is always left to compute, since sampling needs the
logits at the last one: when every full block would hit, the last one is computed again.
A block whose last reference goes keeps its contents and hash in an LRU pool of evictable
blocks: it still counts as free (the budget is unchanged) and is reused by the next hit, or
evicted, least recently released first, when a block is needed and the plain free list is
empty. The chain starts from a salt (the engine passes the tenant by default), so one tenant's
prompts never hit another's blocks: a hit is faster, and would tell who sent what.

Invariant: every block is in exactly one of `_free` (no hash, ref 0), `_evictable` (hash,
ref 0) or in use (ref = number of block tables holding it, >= 1).
"""

from __future__ import annotations

import collections
import hashlib
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from services.inference.sequence import Sequence


class KVCacheFull(Exception):
    """Raised when a block is requested and none is free."""


@dataclass
class PrefixCacheStats:
    """Counters since start (the engine turns their increments into Prometheus counters)."""

    queried_tokens: int = 0  # prompt tokens looked up at admission
    hit_tokens: int = 0  # of those, found in cache (their prefill is skipped)
    evicted_blocks: int = 0


def block_hash(parent: bytes, tokens: list[int]) -> bytes:
    """Name of a full block: 128-bit BLAKE2b of the parent's name and the block's token ids.

    A cryptographic hash, not Python's hash(): a collision would hand one prompt another
    prompt's KV, and hash() of ints is trivially collidable by a client who picks token ids.
    """
    return hashlib.blake2b(parent + array("q", tokens).tobytes(), digest_size=16).digest()


def chain_root(salt: str) -> bytes:
    return hashlib.blake2b(salt.encode("utf-8", "surrogatepass"), digest_size=16).digest()


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
        prefix_caching: bool = False,
    ) -> None:
        if num_tokens < block_size:
            raise ValueError(f"KV budget {num_tokens} tokens is smaller than one block ({block_size})")
        self.block_size = block_size
        self.num_blocks = num_tokens // block_size
        self.prefix_caching = prefix_caching
        # Heads before slots: a gather of a batch's contexts is then already [H, B*L, D].
        shape = (n_layers, n_heads, self.num_blocks * block_size, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # Pop from the end: the most recently freed block is reused first (warm in cache).
        self._free: list[int] = list(range(self.num_blocks - 1, -1, -1))
        self._ref = [0] * self.num_blocks
        self._hash_of: dict[int, bytes] = {}  # registered block -> its hash
        self._block_of: dict[bytes, int] = {}  # hash -> registered block
        # Registered blocks with no reference, least recently released first (evicted first).
        self._evictable: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.stats = PrefixCacheStats()

    # -- accounting ---------------------------------------------------------------------------
    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def free_blocks(self) -> int:
        """Blocks a sequence can get: never used, or cached with no reference (evictable)."""
        return len(self._free) + len(self._evictable)

    @property
    def cached_blocks(self) -> int:
        """Registered blocks (in use or evictable): what a new prompt can hit."""
        return len(self._block_of)

    @property
    def used_tokens(self) -> int:
        """Tokens' worth of blocks held by sequences (what the budget is charged); evictable
        cached blocks are not held."""
        return (self.num_blocks - self.free_blocks) * self.block_size

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def ref_count(self, block: int) -> int:
        return self._ref[block]

    # -- allocation ---------------------------------------------------------------------------
    def can_grow(self, table: list[int], total_tokens: int) -> bool:
        return self.blocks_for(total_tokens) - len(table) <= self.free_blocks

    def grow(self, table: list[int], total_tokens: int) -> None:
        """Extend `table` in place to hold `total_tokens`; all-or-nothing."""
        need = self.blocks_for(total_tokens) - len(table)
        if need <= 0:
            return
        if need > self.free_blocks:
            raise KVCacheFull(f"need {need} blocks, {self.free_blocks} free")
        for _ in range(need):
            table.append(self._take())

    def _take(self) -> int:
        if self._free:
            block = self._free.pop()
        else:  # evict the least recently released cached block
            block, _ = self._evictable.popitem(last=False)
            del self._block_of[self._hash_of.pop(block)]
            self.stats.evicted_blocks += 1
        self._ref[block] = 1
        return block

    def free(self, table: list[int]) -> None:
        """Drop one reference to each block of `table` (and empty it). A block left with none
        goes back to the free list, or, when it holds a registered full block, to the evictable
        pool. Tail blocks first: a sequence's last blocks are evicted before its first ones,
        which other prompts are likelier to share."""
        for block in reversed(table):
            self._ref[block] -= 1
            if self._ref[block] < 0:
                raise AssertionError(f"block {block} freed more often than taken")
            if self._ref[block] == 0:
                if block in self._hash_of:
                    self._evictable[block] = None
                else:
                    self._free.append(block)
        table.clear()

    # -- prefix caching -------------------------------------------------------------------------
    def _hashes(self, seq: Sequence, upto_blocks: int) -> list[bytes]:
        """The sequence's full-block hashes, extended (never recomputed) to `upto_blocks`."""
        hashes = seq.block_hashes
        if not hashes and upto_blocks:
            seq.hash_root = chain_root(seq.cache_salt)
        if len(hashes) < upto_blocks:
            tokens = seq.tokens
            bs = self.block_size
            parent = hashes[-1] if hashes else seq.hash_root
            for i in range(len(hashes), upto_blocks):
                parent = block_hash(parent, tokens[i * bs : (i + 1) * bs])
                hashes.append(parent)
        return hashes

    def match(self, seq: Sequence) -> list[int]:
        """Registered blocks holding `seq`'s leading full blocks, leaving >= 1 token to compute."""
        if not self.prefix_caching:
            return []
        full = (seq.num_tokens - 1) // self.block_size
        hits = []
        for h in self._hashes(seq, full):
            block = self._block_of.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def blocks_to_admit(self, seq: Sequence) -> int:
        """Free blocks admitting `seq` (all its current tokens) would take: new ones, plus hits
        that sit in the evictable pool (they stop being free)."""
        hits = self.match(seq)
        evictable = sum(1 for b in hits if self._ref[b] == 0)
        return self.blocks_for(seq.num_tokens) - len(hits) + evictable

    def allocate(self, seq: Sequence) -> int:
        """Give an empty-tabled `seq` blocks for all its current tokens: cached prefix blocks
        first (its `num_computed` jumps past them), new ones for the rest. Returns the tokens
        found in cache. All-or-nothing."""
        if seq.block_table:
            raise AssertionError("allocate() is for a sequence that holds no blocks")
        hits = self.match(seq)
        if self.blocks_to_admit(seq) > self.free_blocks:
            raise KVCacheFull(f"need {self.blocks_to_admit(seq)} blocks, {self.free_blocks} free")
        for block in hits:
            if self._ref[block] == 0:
                del self._evictable[block]
            self._ref[block] += 1
        seq.block_table.extend(hits)
        cached = len(hits) * self.block_size
        seq.num_computed = cached
        seq.num_registered = len(hits)
        self.grow(seq.block_table, seq.num_tokens)
        if self.prefix_caching:
            self.stats.queried_tokens += seq.num_tokens
            self.stats.hit_tokens += cached
        seq.cached_tokens = cached
        return cached

    def register(self, seq: Sequence) -> None:
        """After a step: name the blocks `seq` has filled since the last call. A block whose
        hash is already registered (an identical prefix computed concurrently) stays
        unnamed and returns to the plain free list when released."""
        if not self.prefix_caching:
            return
        full = min(seq.num_computed // self.block_size, len(seq.block_table))
        if full <= seq.num_registered:
            return
        hashes = self._hashes(seq, full)
        for i in range(seq.num_registered, full):
            block = seq.block_table[i]
            if block not in self._hash_of and hashes[i] not in self._block_of:
                self._hash_of[block] = hashes[i]
                self._block_of[hashes[i]] = block
        seq.num_registered = full

    def release(self, seq: Sequence) -> None:
        """Free all of `seq`'s blocks (finish, cancel, preemption)."""
        self.free(seq.block_table)
        seq.num_registered = 0

    def check(self, tables: list[list[int]]) -> None:
        """Assert the invariant against the live block tables (tests)."""
        refs = collections.Counter(b for t in tables for b in t)
        for block in range(self.num_blocks):
            assert self._ref[block] == refs.get(block, 0), (block, self._ref[block], refs.get(block))
        assert len(self._free) + len(self._evictable) + len(refs) == self.num_blocks
        assert not set(self._free) & set(self._evictable)
        assert all(self._ref[b] == 0 and b in self._hash_of for b in self._evictable)
        assert all(self._block_of[h] == b for b, h in self._hash_of.items())
        assert len(self._block_of) == len(self._hash_of)

    # -- addressing ---------------------------------------------------------------------------
    def slots(self, tables: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Flat slot index for each position; tables [B, max_blocks], positions [B, L]."""
        block_idx = torch.div(positions, self.block_size, rounding_mode="floor")
        blocks = torch.gather(tables, 1, block_idx)
        return blocks * self.block_size + positions % self.block_size
