"""`json.dumps(obj, indent=2)`, the same text, several times faster.

With any `indent`, the standard library encodes in pure Python, one generator step per token:
for a 20k-file scan the report cost about as much as the whole warm re-scan. The C encoder
only writes one line, but it takes any separators; so a container holding only scalars is
encoded by the C encoder with ",\\n" plus the indentation of its depth as the item separator,
and only its brackets are placed by hand. Containers holding containers (the few levels
above the per-file dicts) are walked here. Strings come out escaped as ASCII (ensure_ascii),
so no raw newline can appear inside one and the separators are unambiguous.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

_SCALARS = frozenset((str, int, float, bool, type(None)))
_flat_encoders: dict[int, Callable[[Any], str]] = {}
_scalar = json.JSONEncoder().encode
_string = json.encoder.encode_basestring_ascii


def _flat_encoder(depth: int) -> Callable[[Any], str]:
    """The C encoder made once per depth (JSONEncoder.encode would build one per call)."""
    encode = _flat_encoders.get(depth)
    if encode is None:
        make = getattr(json.encoder, "c_make_encoder", None)  # undeclared in typeshed
        if make is None:  # pragma: no cover - CPython always has the C accelerator
            encoder = json.JSONEncoder(separators=(",\n" + "  " * (depth + 1), ": "))
            encode = encoder.encode
        else:
            iterencode = make(
                None,  # no circularity check: a flat container holds no container
                json.JSONEncoder().default,
                json.encoder.encode_basestring_ascii,
                None,
                ": ",
                ",\n" + "  " * (depth + 1),
                False,
                False,
                True,
            )

            def encode(obj: Any) -> str:
                return "".join(iterencode(obj, 0))

        _flat_encoders[depth] = encode
    return encode


def _encode(obj: Any, depth: int) -> str:
    kind = type(obj)
    if kind is str:
        return _string(obj)
    if kind is int:
        return int.__repr__(obj)
    if kind is dict:
        if not obj:
            return "{}"
        parts = []
        for key, value in obj.items():
            if type(key) is not str:  # json converts int/float/bool/None keys; let it
                return _stdlib(obj, depth)
            # The common scalars inline: a call per value costs more than encoding it.
            vkind = type(value)
            if vkind is str:
                text = _string(value)
            elif vkind is int:
                text = int.__repr__(value)
            else:
                text = _encode(value, depth + 1)
            parts.append(f"{_string(key)}: {text}")
        return _wrap("{" + (",\n" + "  " * (depth + 1)).join(parts) + "}", depth)
    if kind is list or kind is tuple:
        if not obj:
            return "[]"
        for value in obj:
            if type(value) not in _SCALARS:
                break
        else:
            return _wrap(_flat_encoder(depth)(list(obj)), depth)
        if all(type(v) is dict and v and _flat_dict(v) for v in obj):
            return _records(obj, depth)
        inner = ",\n" + "  " * (depth + 1)
        return _wrap("[" + inner.join([_encode(v, depth + 1) for v in obj]) + "]", depth)
    if kind in _SCALARS:
        return _scalar(obj)
    return _stdlib(obj, depth)  # subclasses and unknown types: the standard library decides


def _flat_dict(obj: dict[Any, Any]) -> bool:
    return all(type(k) is str and type(v) in _SCALARS for k, v in obj.items())


def _records(obj: list[Any] | tuple[Any, ...], depth: int) -> str:
    """A list of non-empty flat dicts (a report's file entries) in one C encoder call.

    Encoded with the separator of the dicts' items, the text differs from the wanted one only
    around the dicts' braces: "{" opens the list's text and follows every "},\n<indent>",
    which occurs nowhere else (a raw newline is never inside a string, and the item after
    a dict's "," is a key, which starts with a quote), and "}" ends it.
    """
    outer, brace, item = "  " * depth, "  " * (depth + 1), "  " * (depth + 2)
    text = _flat_encoder(depth + 1)(list(obj))
    body = text[2:-2].replace(f"}},\n{item}{{", f"\n{brace}}},\n{brace}{{\n{item}")
    return f"[\n{brace}{{\n{item}{body}\n{brace}}}\n{outer}]"


def _wrap(text: str, depth: int) -> str:
    """Put the opening and closing brackets of one-line `text` on their own lines."""
    return f"{text[0]}\n{'  ' * (depth + 1)}{text[1:-1]}\n{'  ' * depth}{text[-1]}"


def _stdlib(obj: Any, depth: int) -> str:
    return json.dumps(obj, indent=2).replace("\n", "\n" + "  " * depth)


def encode_at(obj: Any, depth: int) -> str:
    """The text `json.dumps(..., indent=2)` gives `obj` where it sits `depth` levels deep
    (its first line unindented, the following ones indented for that depth): what a writer
    that streams a large container item by item puts between the separators."""
    return _encode(obj, depth)


def dumps_indent2(obj: Any) -> str:
    """Exactly `json.dumps(obj, indent=2)` for JSON-shaped data (dicts, lists, scalars)."""
    return _encode(obj, 0)
