"""Tokenizers: the built-in byte tokenizer, and a checkpoint's own (`tokenizer.json`).

Both give the gateway the same interface: `vocab_size`, `bos_id`, `eos_ids`, `encode`,
`decode`, `count`, `is_special`, `token_bytes`, `token_text` (OpenAI's logprobs form),
`stream_decoder()`, `chat_template` and `special_tokens` (bos_token/eos_token for the template).

Streams never split a UTF-8 character across chunks. Bytes: an incremental UTF-8 decoder.
Checkpoint tokenizers (a token may be part of a character, a byte-fallback `<0xE2>`, or a
SentencePiece piece whose leading space depends on what precedes it): decode a short window
of ids ending at the new one and emit only the text past the window's stable prefix, holding
back while the text ends in U+FFFD (an incomplete character), as vLLM and transformers'
TextStreamer do.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

BOS = 256
EOS = 257
PAD = 258
VOCAB_SIZE = 259


def bytes_text(raw: bytes) -> str:
    """A token as OpenAI's logprobs show it: its text, or `bytes:\\xNN` when not UTF-8 alone."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class ByteTokenizer:
    vocab_size = VOCAB_SIZE
    bos_id: int | None = BOS
    eos_ids: frozenset[int] = frozenset({EOS})
    chat_template: str | None = None  # the gateway's built-in ChatML applies
    special_tokens: dict[str, str] = {"bos_token": "", "eos_token": ""}  # noqa: RUF012

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [BOS, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def count(self, text: str, *, add_bos: bool = True) -> int:
        return len(text.encode("utf-8")) + (1 if add_bos else 0)

    def is_special(self, tok: int) -> bool:
        """Tokens with no text (BOS, EOS, PAD): neither streamed nor given log-probs."""
        return tok >= 256

    def token_bytes(self, tok: int) -> list[int]:
        return [tok] if tok < 256 else []

    def token_text(self, tok: int) -> str:
        if tok >= 256:
            return {BOS: "<|bos|>", EOS: "<|eos|>", PAD: "<|pad|>"}.get(tok, f"<|{tok}|>")
        return bytes_text(bytes([tok]))

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder()


class StreamDecoder:
    """Turns byte token ids into text pieces, holding back incomplete UTF-8 sequences."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        if token_id >= 256:
            return ""
        return self._decoder.decode(bytes([token_id]))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


# -- checkpoint tokenizers (tokenizers package) ----------------------------------------------------
def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: the printable stand-in character -> its byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _token_str(value: Any) -> str | None:
    """tokenizer_config's bos_token/eos_token: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class TokenizerError(Exception):
    """A checkpoint's tokenizer files are missing or unreadable."""


class HFTokenizer:
    """A checkpoint's tokenizer.json (+ tokenizer_config.json, generation_config.json)."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        path = Path(path)
        tj = path / "tokenizer.json"
        if not tj.is_file():
            raise TokenizerError(f"{path}: no tokenizer.json")
        try:
            self.tk = Tokenizer.from_file(str(tj))
        except Exception as exc:  # tokenizers raises plain Exception on a bad file
            raise TokenizerError(f"{tj}: {exc}") from None
        conf = _read_json(path / "tokenizer_config.json")
        gen = _read_json(path / "generation_config.json")
        model_conf = _read_json(path / "config.json")
        self.vocab_size = self.tk.get_vocab_size(with_added_tokens=True)
        bos = _token_str(conf.get("bos_token"))
        eos = _token_str(conf.get("eos_token"))
        self.bos_id = self.tk.token_to_id(bos) if bos else None
        eos_ids: set[int] = set()
        eos_id = self.tk.token_to_id(eos) if eos else None
        if eos_id is not None:
            eos_ids.add(eos_id)
        for src in (gen, model_conf):
            val = src.get("eos_token_id")
            for v in val if isinstance(val, list) else [val]:
                if isinstance(v, int):
                    eos_ids.add(v)
        self.eos_ids = frozenset(eos_ids)
        # add_bos_token in tokenizer_config wins; otherwise the tokenizer.json post-processor decides.
        self._add_bos: bool | None = conf.get("add_bos_token") if "add_bos_token" in conf else None
        self._bos_text = bos or ""
        template = conf.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        if template is None and (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text(encoding="utf-8")
        self.chat_template: str | None = template if isinstance(template, str) else None
        self.special_tokens = {"bos_token": bos or "", "eos_token": eos or ""}
        for key in ("unk_token", "pad_token"):
            tok = _token_str(conf.get(key))
            if tok:
                self.special_tokens[key] = tok
        self._special = (
            frozenset(i for i, t in self.tk.get_added_tokens_decoder().items() if t.special)
            | self.eos_ids
            | ({self.bos_id} if self.bos_id is not None else set())
        )
        dec = self.tk.decoder
        self._byte_level = dec is not None and type(dec).__name__ == "ByteLevel"
        self._byte_decoder = _gpt2_byte_decoder() if self._byte_level else {}

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        if self._add_bos is None:
            # The post-processor adds what the model expects; a rendered chat template already
            # starts with the BOS text, and a second BOS would change the model's input.
            special = add_bos and not (self._bos_text and text.startswith(self._bos_text))
            return list(self.tk.encode(text, add_special_tokens=special).ids)
        ids = list(self.tk.encode(text, add_special_tokens=False).ids)
        if add_bos and self._add_bos and self.bos_id is not None and not (ids and ids[0] == self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: list[int]) -> str:
        return str(self.tk.decode(list(ids), skip_special_tokens=True))

    def count(self, text: str, *, add_bos: bool = True) -> int:
        return len(self.encode(text, add_bos=add_bos))

    def is_special(self, tok: int) -> bool:
        return tok in self._special

    def token_bytes(self, tok: int) -> list[int]:
        if self.is_special(tok):
            return []
        piece = self.tk.id_to_token(tok)
        if piece is None:
            return []
        if self._byte_level and all(c in self._byte_decoder for c in piece):
            return [self._byte_decoder[c] for c in piece]
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return [int(piece[3:5], 16)]
            except ValueError:
                pass
        return list(piece.replace("\u2581", " ").encode("utf-8"))

    def token_text(self, tok: int) -> str:
        if self.is_special(tok):
            return self.tk.id_to_token(tok) or f"<|{tok}|>"
        return bytes_text(bytes(self.token_bytes(tok)))

    def stream_decoder(self) -> HFStreamDecoder:
        return HFStreamDecoder(self)


class HFStreamDecoder:
    """Incremental detokenisation: emit the text the new ids add past a stable prefix."""

    def __init__(self, tokenizer: HFTokenizer) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start: text before it has been emitted and is final
        self.read = 0  # ids up to here have been emitted

    def feed(self, token_id: int) -> str:
        if self.tok.is_special(token_id):
            return ""
        self.ids.append(token_id)
        prefix_text = self.tok.decode(self.ids[self.prefix : self.read])
        new_text = self.tok.decode(self.ids[self.prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        prefix_text = self.tok.decode(self.ids[self.prefix : self.read])
        new_text = self.tok.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return new_text[len(prefix_text) :]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"{path}: {exc}") from None
    return data if isinstance(data, dict) else {}


Tokenizer = ByteTokenizer | HFTokenizer
