"""Weights: seeded deterministic initialisation, or a safetensors file.

The same seed gives bit-identical weights on every machine (a CPU generator, then moved), so
tests, the benchmark and the server all talk about the same model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from services.inference.model.transformer import ModelConfig, Transformer


class WeightsError(Exception):
    """A weights file is missing, unreadable, or does not fit the configured model."""


def init_weights(model: Transformer, seed: int) -> None:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    # GPT-2 style: N(0, 0.02), residual projections scaled down by depth so activations stay
    # O(1) through the stack; embeddings larger so the (tied) logits are not all near zero.
    resid_std = 0.02 / math.sqrt(2 * model.cfg.n_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif "ln" in name:
                p.fill_(1.0)
            else:
                std = 0.02
                if name.endswith(("proj.weight", "fc2.weight")):
                    std = resid_std
                elif name == "tok_emb.weight":
                    std = 1.0 / math.sqrt(model.cfg.d_model) * 2.0
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def build_model(
    cfg: ModelConfig,
    *,
    seed: int = 0,
    weights: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Transformer:
    model = Transformer(cfg)
    if weights is None:
        init_weights(model, seed)
    else:
        load_weights(model, weights)
    return model.to(device=device, dtype=dtype).eval()


def save_weights(model: Transformer, path: str | Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"config": json.dumps(model.cfg.to_dict())})


def load_weights(model: Transformer, path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a corrupt header
        raise WeightsError(f"cannot read weights {path}: {exc}") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise WeightsError(f"{path}: missing tensors {missing[:5]}, unexpected {extra[:5]}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise WeightsError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, model expects {tuple(expected[name].shape)}"
            )
    model.load_state_dict(tensors)
