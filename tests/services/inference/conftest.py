"""Shared fixtures for the inference tests: a tiny seeded model, few torch threads."""

from __future__ import annotations

import os

import pytest
import torch

# The test machine's cores are shared; one intra-op thread keeps the tests predictable.
torch.set_num_threads(int(os.environ.get("PG_TEST_TORCH_THREADS", "1")))

from services.inference.model.transformer import ModelConfig  # noqa: E402
from services.inference.model.weights import build_model  # noqa: E402

TINY = ModelConfig(d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=256)


@pytest.fixture(scope="session")
def tiny_model():
    return build_model(TINY, seed=1)
