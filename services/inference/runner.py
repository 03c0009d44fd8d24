"""Model runner: turns the scheduler's chunks into tensors, runs one step, samples.

Mechanism only: it reads sequences (tokens, progress, block tables) and returns the sampled
token for each row that finished its pending tokens; the scheduler owns every state change.
It runs on the engine thread, never on the event loop.
"""

from __future__ import annotations

import torch

from services.inference.model.hf import PagedLM
from services.inference.model.kv_cache import KVCache
from services.inference.model.sampling import sample
from services.inference.model.transformer import StepBatch, Transformer
from services.inference.sequence import Sequence

# Token id written into padding positions: never attended to, never written to the cache; 0
# exists in every vocabulary (the byte model's PAD, 258, does not).
PAD_ID = 0

# Padded work one extra forward call is worth, in (row x context) units: below this, one call.
SPLIT_MIN_SAVING = 4096


def split_by_padding(rows: list[int], chunks: list[tuple[Sequence, int]]) -> list[list[int]]:
    """Split rows (same phase) in two by context length when that saves enough padding.

    A group's attention is padded to its longest context (and its longest chunk), so one group
    mixing a 20-token and a 300-token context does 15x the work for the short row. Sorting
    by context and cutting once at the cheapest point recovers most of it for one extra call.
    """
    if len(rows) < 4:
        return [rows] if rows else []

    def cost(seq: Sequence, n: int) -> int:
        return seq.num_computed + n

    order = sorted(rows, key=lambda i: cost(*chunks[i]))
    keys = [cost(*chunks[i]) for i in order]
    widths = [chunks[i][1] for i in order]
    # Area of a group = rows x longest context x longest chunk (chunks are 1 for decodes).
    prefix_w = list(widths)
    for j in range(1, len(order)):
        prefix_w[j] = max(prefix_w[j - 1], widths[j])
    suffix_w = list(widths)
    for j in range(len(order) - 2, -1, -1):
        suffix_w[j] = max(suffix_w[j + 1], widths[j])
    whole = len(order) * keys[-1] * suffix_w[0]
    best, cut = whole, 0
    for j in range(1, len(order)):
        area = j * keys[j - 1] * prefix_w[j - 1] + (len(order) - j) * keys[-1] * suffix_w[j]
        if area < best:
            best, cut = area, j
    if cut == 0 or whole - best < SPLIT_MIN_SAVING:
        return [rows]
    return [order[:cut], order[cut:]]


class ModelRunner:
    def __init__(self, model: Transformer | PagedLM, cache: KVCache) -> None:
        self.model = model
        self.cache = cache
        self.device = next(model.parameters()).device

    def build(self, chunks: list[tuple[Sequence, int]]) -> StepBatch:
        """The step's tensors, each made by one torch call from flat Python lists: no tensor
        operation per row (a 64-row decode step used to cost 256 small tensor ops)."""
        b = len(chunks)
        starts = [seq.num_computed for seq, _ in chunks]
        lens = [n for _, n in chunks]
        flat_tokens = [t for seq, n in chunks for t in seq.token_slice(seq.num_computed, n)]
        table_lens = [len(seq.block_table) for seq, _ in chunks]
        flat_tables = [blk for seq, _ in chunks for blk in seq.block_table]
        t, max_blocks = max(lens), max(table_lens)
        new_lens = torch.tensor(lens, dtype=torch.long)
        start_t = torch.tensor(starts, dtype=torch.long)
        real = torch.arange(t)[None, :] < new_lens[:, None]  # [B, T], row-major like flat_tokens
        tokens = torch.full((b, t), PAD_ID, dtype=torch.long)
        tokens[real] = torch.tensor(flat_tokens, dtype=torch.long)
        positions = torch.where(real, start_t[:, None] + torch.arange(t)[None, :], 0)
        tables = torch.zeros((b, max_blocks), dtype=torch.long)
        tables[torch.arange(max_blocks)[None, :] < torch.tensor(table_lens)[:, None]] = torch.tensor(
            flat_tables, dtype=torch.long
        )
        ctx_lens = start_t + new_lens
        dev = self.device
        return StepBatch(
            tokens.to(dev), positions.to(dev), new_lens.to(dev), ctx_lens.to(dev), tables.to(dev)
        )

    @torch.inference_mode()
    def execute(self, chunks: list[tuple[Sequence, int]]) -> list[int | None]:
        """Run one step; per chunk, the sampled next token, or None if still prefilling.

        Decode rows (1 token) and prefill rows (a chunk) go through the model as two groups:
        one padded batch would pad every decode row to the longest prefill chunk, computing
        e.g. 64 x 256 positions for 64 + 256 real tokens.
        """
        logits = torch.empty(
            (len(chunks), self.model.cfg.vocab_size), dtype=torch.float32, device=self.device
        )
        decode = [i for i, (_, n) in enumerate(chunks) if n == 1]
        prefill = [i for i, (_, n) in enumerate(chunks) if n > 1]
        for group in (*split_by_padding(decode, chunks), *split_by_padding(prefill, chunks)):
            logits[group] = self.model.forward_step(self.build([chunks[i] for i in group]), self.cache)
        rows = [i for i, (seq, n) in enumerate(chunks) if seq.num_computed + n == seq.num_tokens]
        out: list[int | None] = [None] * len(chunks)
        if rows:
            picked = sample(logits[rows], [chunks[i][0].sampling for i in rows])
            for i, tok in zip(rows, picked, strict=True):
                out[i] = tok
        return out

    @torch.inference_mode()
    def score(self, prompt: list[int], candidates: list[list[int]]) -> list[list[float]]:
        """Per-token log-probs of each candidate continuation given the prompt (float32)."""
        seqs = [prompt + c for c in candidates]
        t = max(len(s) for s in seqs)
        tokens = torch.full((len(seqs), t), PAD_ID, dtype=torch.long)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = torch.tensor(s)
        lengths = torch.tensor([len(s) for s in seqs])
        logits = self.model(tokens.to(self.device), lengths.to(self.device))
        logp = torch.log_softmax(logits, dim=-1).cpu()  # log space throughout, float32
        out = []
        for i, cand in enumerate(candidates):
            # The token at position p is predicted by the logits at p - 1.
            pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(cand))
            out.append(logp[i, pos, torch.tensor(cand, dtype=torch.long)].tolist())
        return out
