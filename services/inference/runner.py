"""Model runner: turns the scheduler's chunks into tensors, runs one step, samples.

Mechanism only: it reads sequences (tokens, progress, block tables) and returns the sampled
token for each row that finished its pending tokens; the scheduler owns every state change.
It runs on the engine thread, never on the event loop.
"""

from __future__ import annotations

from itertools import chain

import torch

from services.inference.model.hf import PagedLM
from services.inference.model.kv_cache import KVCache
from services.inference.model.paged import AttnGroup, StepBatch, plan_groups
from services.inference.model.sampling import sample
from services.inference.model.transformer import Transformer
from services.inference.sequence import Sequence

# Token id written into padding positions (scoring's padded batch): never attended to; 0 exists
# in every vocabulary (the byte model's PAD, 258, does not).
PAD_ID = 0

# Working set of one attention group (gathered K/V and scores), bytes: about a core's L2 cache
# less what the weights and activations keep there (model/paged.py:plan_groups).
GROUP_BYTES = 768 * 1024


class ModelRunner:
    def __init__(self, model: Transformer | PagedLM, cache: KVCache) -> None:
        self.model = model
        self.cache = cache
        self.device = next(model.parameters()).device
        cfg = model.cfg
        self.n_kv_heads = cfg.n_kv_heads
        self.q_per_kv = cfg.n_heads // cfg.n_kv_heads
        # Bytes per key of a group: its K and V gathered in float32; per query x key: a score.
        self.group_bytes = GROUP_BYTES
        self.per_key = 2 * cfg.n_kv_heads * cfg.head_dim * 4
        self.per_score = cfg.n_heads * 4

    def build(self, chunks: list[tuple[Sequence, int]], logits_for: list[int] | None = None) -> StepBatch:
        """The step's tensors from flat Python lists, each by a few whole-batch torch calls (no
        tensor operation per row): tokens packed row after row, their positions and KV slots,
        and the attention groups. `logits_for`: rows whose last token's logits are wanted
        (default: every row)."""
        b = len(chunks)
        starts = [seq.num_computed for seq, _ in chunks]
        lens = [n for _, n in chunks]
        ctx = [s + n for s, n in zip(starts, lens, strict=True)]
        flat_tokens = list(
            chain.from_iterable(seq.token_slice(s, n) for (seq, n), s in zip(chunks, starts, strict=True))
        )
        table_lens = [len(seq.block_table) for seq, _ in chunks]
        flat_tables = list(chain.from_iterable(seq.block_table for seq, _ in chunks))
        total, bs = len(flat_tokens), self.cache.block_size
        lens_t = torch.tensor(lens, dtype=torch.long)
        starts_t = torch.tensor(starts, dtype=torch.long)
        ctx_t = starts_t + lens_t
        ends = torch.cumsum(lens_t, 0)
        offsets = ends - lens_t  # packed index of each row's first new token
        row_of = torch.repeat_interleave(torch.arange(b), lens_t, output_size=total)
        positions = torch.arange(total) + (starts_t - offsets).index_select(0, row_of)
        table_lens_t = torch.tensor(table_lens, dtype=torch.long)
        tables = torch.zeros((b, max(table_lens)), dtype=torch.long)
        tables[torch.arange(tables.shape[1])[None, :] < table_lens_t[:, None]] = torch.tensor(
            flat_tables, dtype=torch.long
        )
        write_slots = tables[row_of, positions // bs] * bs + positions % bs
        logit_index = ends - 1
        if logits_for is not None:
            logit_index = logit_index[torch.tensor(logits_for, dtype=torch.long)]
        decode = [i for i, n in enumerate(lens) if n == 1]
        prefill = [i for i, n in enumerate(lens) if n > 1]
        plan = plan_groups([ctx[i] for i in decode], [1] * len(decode), *self._budget)
        groups = self._decode_groups([[decode[i] for i in g] for g in plan], ctx, ctx_t, offsets, tables)
        for members in plan_groups([ctx[i] for i in prefill], [lens[i] for i in prefill], *self._budget):
            rows = [prefill[i] for i in members]
            width, longest = max(lens[i] for i in rows), max(ctx[i] for i in rows)
            groups.append(self._group(rows, width, longest, lens_t, starts_t, ctx_t, offsets, tables))
        dev = self.device
        if dev.type != "cpu":
            for g in groups:
                g.q_index, g.out_dst = g.q_index.to(dev), g.out_dst.to(dev)
                g.read_slots, g.bias = g.read_slots.to(dev), g.bias.to(dev)
                g.out_src = None if g.out_src is None else g.out_src.to(dev)
        return StepBatch(
            torch.tensor(flat_tokens, dtype=torch.long).to(dev),
            positions.to(dev),
            write_slots.to(dev),
            logit_index.to(dev),
            groups,
        )

    @property
    def _budget(self) -> tuple[int, int, int]:
        return self.group_bytes, self.per_key, self.per_score

    def _decode_groups(
        self,
        plan: list[list[int]],
        ctx: list[int],
        ctx_t: torch.Tensor,
        offsets: torch.Tensor,
        tables: torch.Tensor,
    ) -> list[AttnGroup]:
        """Every decode group's indices and mask at once (one query per row, so the causal mask
        is just "key inside the context"): whole-step torch calls, then split per group."""
        if not plan:
            return []
        rows = [r for g in plan for r in g]
        longest = [max(ctx[r] for r in g) for g in plan]
        padded = torch.tensor([n for g, n in zip(plan, longest, strict=True) for _ in g], dtype=torch.long)
        sizes = [len(g) * n for g, n in zip(plan, longest, strict=True)]
        total, bs = sum(sizes), self.cache.block_size
        r = torch.tensor(rows, dtype=torch.long)
        row_of = torch.repeat_interleave(r, padded, output_size=total)  # each (row, key position)
        first = torch.repeat_interleave(torch.cumsum(padded, 0) - padded, padded, output_size=total)
        j = torch.arange(total) - first  # key position within its row
        cx = ctx_t.index_select(0, row_of)
        # Past the row's context: its last slot (a real one, masked out).
        jj = torch.minimum(j, cx - 1)
        read = tables[row_of, jj // bs] * bs + jj % bs
        bias = torch.zeros(total).masked_fill_(j >= cx, float("-inf"))
        q_index = offsets.index_select(0, r)
        out = []
        hkv, per_kv = self.n_kv_heads, self.q_per_kv
        for g, n, rd, bi, qi in zip(
            plan,
            longest,
            read.split(sizes),
            bias.split(sizes),
            q_index.split([len(g) for g in plan]),
            strict=True,
        ):
            b = bi.view(1, len(g), 1, n).expand(hkv, len(g), per_kv, n).reshape(hkv * len(g), per_kv, n)
            out.append(AttnGroup(len(g), 1, n, qi, None, qi, rd, b))
        return out

    def _group(
        self,
        rows: list[int],
        width: int,
        longest: int,
        lens_t: torch.Tensor,
        starts_t: torch.Tensor,
        ctx_t: torch.Tensor,
        offsets: torch.Tensor,
        tables: torch.Tensor,
    ) -> AttnGroup:
        """One attention group's indices and mask, whole-group torch calls."""
        r = torch.tensor(rows, dtype=torch.long)
        n_r, off, cx = lens_t[r], offsets[r], ctx_t[r]
        bs = self.cache.block_size
        t = torch.arange(width)
        if width == 1:
            q_index, out_src, out_dst = off, None, off
        else:
            # Pad queries repeat the row's last real token (any real token would do: dropped).
            q_index = (off[:, None] + torch.minimum(t[None, :], n_r[:, None] - 1)).reshape(-1)
            real = (t[None, :] < n_r[:, None]).reshape(-1)
            out_src = real.nonzero().squeeze(1)
            out_dst = q_index[out_src]
        # Key position j of a row reads its own slot; past the row's context, its last slot
        # (a real one, masked out).
        j = torch.arange(longest)
        jj = torch.minimum(j[None, :], cx[:, None] - 1)
        read = tables[r].gather(1, jj // bs) * bs + jj % bs
        q_pos = starts_t[r][:, None] + t[None, :]  # [rows, width]
        allowed = (j[None, None, :] <= q_pos[:, :, None]) & (j[None, None, :] < cx[:, None, None])
        bias = torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))
        # [rows, width, ctx] -> [Hkv * rows, width * q_per_kv, ctx], the layout paged_attention
        # gives the scores (each KV head's rows, then each query head of the KV head per token).
        bias = bias.repeat_interleave(self.q_per_kv, dim=1).repeat(self.n_kv_heads, 1, 1)
        return AttnGroup(len(rows), width, longest, q_index, out_src, out_dst, read.reshape(-1), bias)

    @torch.inference_mode()
    def execute(self, chunks: list[tuple[Sequence, int]]) -> list[int | None]:
        """Run one step; per chunk, the sampled next token, or None if still prefilling.

        Every row's new tokens go through the model in one packed forward call (no padding in
        the linear layers); attention reads each row's real context in length-bucketed groups.
        Logits are computed only for the rows that sample.
        """
        rows = [i for i, (seq, n) in enumerate(chunks) if seq.num_computed + n == seq.num_tokens]
        logits = self.model.forward_step(self.build(chunks, rows), self.cache)
        out: list[int | None] = [None] * len(chunks)
        if rows:
            picked = sample(logits, [chunks[i][0].sampling for i in rows])
            for i, tok in zip(rows, picked, strict=True):
                out[i] = tok
        return out

    @torch.inference_mode()
    def score(self, prompt: list[int], candidates: list[list[int]]) -> list[list[float]]:
        """Per-token log-probs of each candidate continuation given the prompt (float32)."""
        seqs = [prompt + c for c in candidates]
        t = max(len(s) for s in seqs)
        lengths = torch.tensor([len(s) for s in seqs])
        tokens = torch.full((len(seqs), t), PAD_ID, dtype=torch.long)
        tokens[torch.arange(t)[None, :] < lengths[:, None]] = torch.tensor(list(chain.from_iterable(seqs)))
        logits = self.model(tokens.to(self.device), lengths.to(self.device))
        logp = torch.log_softmax(logits, dim=-1).cpu()  # log space throughout, float32
        out = []
        for i, cand in enumerate(candidates):
            # The token at position p is predicted by the logits at p - 1.
            pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(cand))
            out.append(logp[i, pos, torch.tensor(cand, dtype=torch.long)].tolist())
        return out
