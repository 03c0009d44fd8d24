"""Byte-level tokenizer: ids 0-255 are bytes, then a few special tokens.

Decoding is incremental so a stream never splits a multi-byte UTF-8 character across two
chunks; bytes that are not valid UTF-8 become U+FFFD, as a client would see them anyway.
"""

from __future__ import annotations

import codecs

BOS = 256
EOS = 257
PAD = 258
VOCAB_SIZE = 259


class ByteTokenizer:
    vocab_size = VOCAB_SIZE

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [BOS, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def count(self, text: str, *, add_bos: bool = True) -> int:
        return len(text.encode("utf-8")) + (1 if add_bos else 0)


class StreamDecoder:
    """Turns token ids into text pieces, holding back incomplete UTF-8 sequences."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        if token_id >= 256:
            return ""
        return self._decoder.decode(bytes([token_id]))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
