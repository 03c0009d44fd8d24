"""Planted near-duplicate pages: a seeded corpus with known truth, written without the engine.

Families: a base page and variants with a few word edits (substitutions, insertions,
deletions) — the true near-duplicates, pairwise within a family. Hard negatives: pages of
the same site that share a boilerplate block (navigation, footer) but whose article text
differs. Everything else is unrelated. Words come from a Zipf-like vocabulary, so common
words repeat across pages as in real text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Page:
    url: str
    text: str
    family: int | None  # pages with the same family are near-duplicates of each other


def _vocab(rng: random.Random, size: int = 5000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(size)]


def _article(rng: random.Random, vocab: list[str], n: int) -> list[str]:
    # Zipf-ish: index ~ exp(uniform) so a few words are frequent and most are rare.
    return [
        vocab[min(len(vocab) - 1, int(rng.paretovariate(1.1)) - 1)]
        if rng.random() < 0.4
        else rng.choice(vocab)
        for _ in range(n)
    ]


def _edit(rng: random.Random, words: list[str], vocab: list[str], rate: float) -> list[str]:
    out = list(words)
    for _ in range(max(1, int(len(words) * rate))):
        i = rng.randrange(len(out))
        op = rng.random()
        if op < 0.5:
            out[i] = rng.choice(vocab)
        elif op < 0.75:
            out.insert(i, rng.choice(vocab))
        elif len(out) > 10:
            del out[i]
    return out


def corpus(
    seed: int = 1,
    families: int = 60,
    variants: int = 3,
    unrelated: int = 200,
    sites: int = 20,
    edit_rate: float = 0.03,
    words: tuple[int, int] = (150, 600),
    boiler_words: int = 60,
) -> list[Page]:
    """`boiler_words`: the length of each site's shared header/footer block (0: none); a page
    of n article words then shares boiler_words / (boiler_words + n) of its text."""
    rng = random.Random(seed)
    vocab = _vocab(rng)
    boiler = [_article(rng, vocab, boiler_words) for _ in range(sites)]
    pages: list[Page] = []
    n = 0

    def url(site: int) -> str:
        nonlocal n
        n += 1
        return f"http://h{site:04d}.sim.test/p/{n}"

    for fam in range(families):
        site = rng.randrange(sites)
        base = _article(rng, vocab, rng.randint(*words))
        pages.append(Page(url(site), " ".join(boiler[site] + base), fam))
        for _ in range(variants):
            pages.append(Page(url(site), " ".join(boiler[site] + _edit(rng, base, vocab, edit_rate)), fam))
    for _ in range(unrelated):  # same boilerplate as the families' sites, other articles
        site = rng.randrange(sites)
        pages.append(
            Page(url(site), " ".join(boiler[site] + _article(rng, vocab, rng.randint(*words))), None)
        )
    rng.shuffle(pages)
    return pages


def true_pairs(pages: list[Page]) -> set[frozenset[str]]:
    by_family: dict[int, list[str]] = {}
    for p in pages:
        if p.family is not None:
            by_family.setdefault(p.family, []).append(p.url)
    return {
        frozenset((a, b)) for urls in by_family.values() for i, a in enumerate(urls) for b in urls[i + 1 :]
    }
