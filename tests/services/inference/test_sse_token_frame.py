"""A streamed token's event, rendered without dicts or json.dumps, is byte for byte the event
the general path (`_event(run._chunk([choice]))`) renders, whatever the text."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from services.inference.api import _chat_token, _completion_token, _event, _Run


def _run(chat: bool, include_usage: bool, model: str) -> _Run:
    run = _Run.__new__(_Run)  # only what the envelope reads
    run.chat, run.include_usage, run.model = chat, include_usage, model
    run.id, run.created = ("chatcmpl-" if chat else "cmpl-") + "0123456789abcdef01234567", 1764612345
    return run


TEXTS = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["", " the", '"', "\\", "\n", "é", "🙂"]
)


@settings(max_examples=300, deadline=None)
@given(
    text=TEXTS,
    index=st.integers(0, 15),
    token_id=st.integers(-1, 2**31 - 1),
    include_usage=st.booleans(),
    model=st.sampled_from(["pg-small", 'a "quoted" model', "modèle"]),
)
def test_the_token_frame_renders_what_the_general_path_renders(
    text, index, token_id, include_usage, model
) -> None:
    comp = _run(False, include_usage, model)
    head, tail = comp._token_frame()
    choice = {
        "index": index,
        "text": text,
        "token_id": token_id if token_id >= 0 else None,
        "logprobs": None,
        "finish_reason": None,
    }
    assert head + _completion_token(index, text, token_id) + tail == _event(comp._chunk([choice]))
    chat = _run(True, include_usage, model)
    head, tail = chat._token_frame()
    choice = {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
    fast = head + _chat_token(index, text) + tail
    assert fast == _event(chat._chunk([choice]))
    assert json.loads(fast.decode()[len("data: ") :])["choices"][0]["delta"]["content"] == text
