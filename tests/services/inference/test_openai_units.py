"""The pieces behind the OpenAI API, without a server: stop matching, chat templates (against
transformers' own rendering), penalties and log-probs in sampling, the error shape."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from services.inference.chat import DEFAULT_TEMPLATE, ChatTemplateError, render_chat
from services.inference.errors import InvalidRequest, RateLimited, Unauthenticated
from services.inference.gateway import StopMatcher
from services.inference.model.sampling import SamplingParams, sample


# -- stop strings --------------------------------------------------------------------------------
def _cut(text: str, stops: list[str]) -> tuple[str, bool]:
    """Generation stops where a stop string first completes (checked after every character)."""
    for end in range(1, len(text) + 1):
        starts = [end - len(s) for s in stops if s and text[:end].endswith(s)]
        if starts:
            return text[: min(starts)], True
    return text, False


@settings(max_examples=1000, deadline=None)
@given(
    text=st.text(alphabet="abc", max_size=30),
    stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=4), min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 30), max_size=10),
)
def test_stop_matcher_equals_cutting_the_whole_text(text: str, stops: list[str], cuts: list[int]) -> None:
    """However the text is split into pieces, the released text is the same: what precedes the
    stop string that completes first (pieces of several characters: a token's text)."""
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    m = StopMatcher(stops)
    out, hit = [], False
    for piece in pieces:
        released, hit = m.feed(piece)
        out.append(released)
        if hit:
            break
    if not hit:
        out.append(m.flush())
    assert ("".join(out), hit) == _cut(text, stops)


def test_stop_matcher_holds_only_a_possible_prefix() -> None:
    m = StopMatcher(["</end>"])
    assert m.feed("hello </") == ("hello ", False)
    assert m.feed("b") == ("</b", False)  # not the stop after all: released
    assert m.feed("</en") == ("", False)
    assert m.feed("d> tail") == ("", True)
    # Two stops in one piece: the one that completes first wins, even if the other starts earlier.
    assert StopMatcher(["acb", "c"]).feed("xacb") == ("xa", True)
    assert StopMatcher(["ab", "b"]).feed("xab") == ("x", True)  # both end there: cut the longest


# -- chat templates ------------------------------------------------------------------------------
TEMPLATES = {
    "chatml": DEFAULT_TEMPLATE,
    "llama3": (
        "{{ bos_token }}{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
        " + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    # Block tags on their own lines: trim_blocks and lstrip_blocks decide the whitespace.
    "zephyr": (
        "{% for message in messages %}\n"
        "    {% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\\n' + message['content'] + eos_token }}\n"
        "    {% elif message['role'] == 'system' %}\n"
        "{{ '<|system|>\\n' + message['content'] + eos_token }}\n"
        "    {% else %}\n"
        "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n"
        "    {% endif %}\n"
        "    {% if loop.last and add_generation_prompt %}\n"
        "{{ '<|assistant|>' }}\n"
        "    {% endif %}\n"
        "{% endfor %}"
    ),
    "strict": (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ bos_token }}{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
        "{{ '[' + message['role'] + '] ' + message['content'] }}"
        "{{ '' if message['role'] == 'user' else eos_token }}"
        "{% endfor %}"
    ),
}
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  What is 2+2? "},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Und 東京? 😀"},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ],
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
def test_render_chat_equals_transformers(hf_tokenizer, name: str, conv: int) -> None:
    from jinja2 import TemplateError

    messages, template = CONVERSATIONS[conv], TEMPLATES[name]
    special = {"bos_token": "<s>", "eos_token": "</s>"}
    try:
        want = hf_tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
    except TemplateError as exc:  # the template refused it: so must we, with its message
        with pytest.raises(ChatTemplateError, match=str(exc)):
            render_chat(messages, template, special)
        return
    assert render_chat(messages, template, special) == want


def test_default_template_is_chatml() -> None:
    assert (
        render_chat([{"role": "user", "content": "hi"}])
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


# -- sampling: penalties and log-probs -----------------------------------------------------------
def test_presence_and_frequency_penalties_follow_openai() -> None:
    """logit[t] -= frequency_penalty * count[t] + presence_penalty * (count[t] > 0)."""
    logits = torch.tensor([[3.0, 2.0, 0.0]])
    p = SamplingParams(presence_penalty=1.5)
    # 3 > 2: token 0; then 3 - 1.5 < 2: token 1; then 1.5 > 2 - 1.5: token 0 (presence is once).
    assert [sample(logits, [p])[0] for _ in range(4)] == [0, 1, 0, 0]
    assert p.counts == {0: 3, 1: 1}
    f = SamplingParams(frequency_penalty=0.4)
    # 3 - 0.4k > 2 for k = 0, 1, 2; at k = 3 token 1 wins: 0, 0, 0, 1.
    assert [sample(logits, [f])[0] for _ in range(4)] == [0, 0, 0, 1]
    plain = SamplingParams()
    assert [sample(logits, [plain])[0] for _ in range(4)] == [0, 0, 0, 0] and plain.counts == {}


def test_logprobs_are_the_raw_distribution_and_its_top_k() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    p = SamplingParams(logprobs=2, frequency_penalty=1.5)
    assert [sample(logits, [p])[0] for _ in range(2)] == [1, 2]  # the second pick is penalised
    logp = torch.log_softmax(logits[0], dim=-1)
    (lp0, top0), (lp1, top1) = p.recorded
    assert lp0 == pytest.approx(float(logp[1])) and [t for t, _ in top0] == [1, 2]
    assert [v for _, v in top0] == pytest.approx([float(logp[1]), float(logp[2])])
    # ... but log-probs are read from the model's own (unpenalised) distribution.
    assert top1 == top0 and lp1 == pytest.approx(float(logp[2]))


def test_seeded_sampling_is_reproducible_for_every_64_bit_seed() -> None:
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    for seed in (0, 1, 2**63 - 1, 2**64 - 1, -(2**63)):
        a = [sample(logits, [SamplingParams(temperature=1.0, seed=seed)])[0] for _ in range(2)]
        b = [sample(logits, [SamplingParams(temperature=1.0, seed=seed)])[0] for _ in range(2)]
        assert a == b


# -- errors --------------------------------------------------------------------------------------
def test_errors_in_openai_shape() -> None:
    bad = InvalidRequest("max_tokens must be >= 1", "body.max_tokens").openai_error()["error"]
    assert bad == {
        "message": "max_tokens must be >= 1",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": "invalid",
        "field": "body.max_tokens",
    }
    auth = Unauthenticated().openai_error()["error"]
    assert (auth["type"], auth["code"], auth["param"]) == ("invalid_request_error", "invalid_api_key", None)
    limited = RateLimited("slow down", "rate_tokens", 3)
    assert limited.openai_error()["error"]["type"] == "tokens"
    assert limited.openai_error()["error"]["code"] == "rate_limit_exceeded"
    assert limited.headers() == {"Retry-After": "3"}
