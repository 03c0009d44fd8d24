"""Page text normalisation and features shared by the exact and near-duplicate detectors."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_WORD = re.compile(r"\w+", re.UNICODE)


def normalise(text: str) -> str:
    """NFKC, case-folded, punctuation dropped, whitespace collapsed: what a reader would call
    "the same text" regardless of markup whitespace, letter case or quote style."""
    return " ".join(words(text))


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def text_sha256(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def shingles(tokens: list[str], n: int) -> set[str]:
    """Word n-grams; a text shorter than n words is one shingle (so it still has a signature)."""
    if len(tokens) < n:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}
