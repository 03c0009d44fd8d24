"""The shipped default model (pg-small, scripts/train_default_model.py) loads by default at the
default shape, is trained (it predicts English text far better than chance), and sampling
settings change what it writes."""

from __future__ import annotations

import math

import torch

from services.inference.app import SHIPPED_DIR, load_served_model
from services.inference.model.sampling import SamplingParams, sample
from services.inference.settings import InferenceSettings

TEXT = "Return a new list containing the items of the given iterable, sorted in ascending order."


def _nats_per_token(model, tok, text: str) -> float:
    ids = tok.encode(text)
    with torch.inference_mode():
        logits = model(torch.tensor([ids]))[0, :-1]
    return float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])))


def _generate(model, tok, prompt: str, params: SamplingParams, n: int = 30) -> str:
    ids = tok.encode(prompt)
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(n):
            nxt = sample(model(torch.tensor([ids + out]))[:, -1], [params])[0]
            if nxt in tok.eos_ids:
                break
            out.append(nxt)
    return tok.decode(out)


def test_default_settings_serve_the_shipped_trained_model() -> None:
    files = {p.name: p.stat().st_size for p in SHIPPED_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert files["model.safetensors"] < 8_000_000
    model, tok, name = load_served_model(InferenceSettings(embeddings=False), "cpu", torch.float32)
    assert name == "pg-small" and tok.chat_template
    # the byte model is still there with --no-pretrained (and at any other shape)
    _, byte_tok, name0 = load_served_model(
        InferenceSettings(embeddings=False, pretrained=False), "cpu", torch.float32
    )
    assert name0 == "pg-byte-tiny" and byte_tok.vocab_size == 259
    loss = _nats_per_token(model, tok, TEXT)
    # chance is log(vocab) = 7.6 nats/token; the trained model knows docstring English
    assert loss < math.log(tok.vocab_size) - 3


def test_temperature_and_top_p_change_the_text() -> None:
    model, tok, _ = load_served_model(InferenceSettings(embeddings=False), "cpu", torch.float32)
    prompt = "Return the"
    greedy = _generate(model, tok, prompt, SamplingParams())
    assert greedy == _generate(model, tok, prompt, SamplingParams())  # deterministic
    # top_p this small keeps only the most likely token: sampling becomes greedy
    assert _generate(model, tok, prompt, SamplingParams(temperature=1.0, top_p=1e-6, seed=3)) == greedy
    hot = {_generate(model, tok, prompt, SamplingParams(temperature=1.0, seed=s)) for s in range(3)}
    assert len(hot) == 3 and greedy not in hot
