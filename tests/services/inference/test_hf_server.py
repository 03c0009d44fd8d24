"""The server started with --model DIR (a tiny local Llama checkpoint) answers completions and
chat completions with the checkpoint's tokenizer and chat template; greedy text equals what
`transformers` generates from the same token ids."""

from __future__ import annotations

import openai
import pytest
import torch

pytest.importorskip("transformers")

from tests.services.inference.conftest import LiveServer
from tests.services.inference.hf_fixtures import build_checkpoint, load_reference


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("ck") / "tiny-llama", "llama")


@pytest.fixture(scope="module")
def server(ckpt):
    s = LiveServer(model=ckpt)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="dev-alice-key", max_retries=0, timeout=120) as c:
        yield c


def _reference(ckpt, ids: list[int], n: int, eos: list[int] | None) -> list[int]:
    ref = load_reference(ckpt)
    ref.generation_config.eos_token_id = eos
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    new = out[0, len(ids) :].tolist()
    return [t for t in new if not eos or t not in eos]


def test_models_lists_the_checkpoint(client) -> None:
    ids = [m.id for m in client.models.list().data]
    assert "tiny-llama" in ids
    assert client.models.retrieve("tiny-llama").id == "tiny-llama"


def test_completion_equals_transformers_greedy(client, ckpt) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ckpt))
    prompt = "The quick brown fox"
    r = client.completions.create(
        model="tiny-llama", prompt=prompt, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    ids = tok(prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert r.usage is not None and r.usage.prompt_tokens == len(ids)
    want = tok.decode(_reference(ckpt, ids, 8, None), skip_special_tokens=True)
    assert r.choices[0].text == want
    # streaming gives the same text
    stream = client.completions.create(
        model="tiny-llama",
        prompt=prompt,
        max_tokens=8,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    pieces = [c.choices[0].text for c in stream if c.choices]
    assert "".join(pieces) == want  # (a random model's bytes need not be valid UTF-8)


def test_chat_uses_the_checkpoint_template(client, ckpt) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ckpt))
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say café."},
    ]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
    r = client.chat.completions.create(
        model="tiny-llama", messages=messages, max_completion_tokens=10, temperature=0
    )
    assert r.usage is not None and r.usage.prompt_tokens == len(ids)
    eos = [tok.convert_tokens_to_ids("</s>"), tok.convert_tokens_to_ids("<|im_end|>")]
    want = _reference(ckpt, ids, 10, eos)
    assert r.choices[0].message.content == tok.decode(want, skip_special_tokens=True)
    assert r.choices[0].finish_reason in ("stop", "length")
