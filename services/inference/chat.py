"""Chat prompts: OpenAI messages -> one prompt string, through a Jinja chat template.

`render_chat` renders the way `transformers` renders a checkpoint's `chat_template` (from its
tokenizer_config.json): an ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks,
`raise_exception` for the template's own checks, `add_generation_prompt=True`, and the
special tokens (bos_token, eos_token, ...) as variables. A model without a template of its own
(the built-in byte model) uses DEFAULT_TEMPLATE, ChatML: its turns end with `<|im_end|>`, which
is then also a stop string (`DEFAULT_STOP`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
DEFAULT_STOP = ("<|im_end|>",)


class ChatTemplateError(ValueError):
    """The template refused the conversation (raise_exception) or could not be rendered."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    template: str | None = None,
    special_tokens: Mapping[str, str] | None = None,
    *,
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """The prompt text for `messages` ([{"role", "content"}, ...]); raises ChatTemplateError."""
    try:
        compiled = _compile(template or DEFAULT_TEMPLATE)
        return compiled.render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            **dict(special_tokens or {}),
            **extra,
        )
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc
