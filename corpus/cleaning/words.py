"""Text as the cleaning steps compare it: lowercased, punctuation removed, split on whitespace.

Deduplication (exact hashes, MinHash shingles) and decontamination (n-grams shared with task
items) must see a document and a task item the same way, so both take their words from here.
Punctuation is deleted, not turned into a space ("don't" is one word, "dont"), as lm-eval's
decontamination normalises; every Unicode punctuation character counts, not only ASCII. Dashes
are the exception: they separate words ("well-known" and "stop—now" are two words each).
"""
from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from functools import cache

import numpy as np
import xxhash

_PUNCTUATION_PLANES = 0x20000  # the Basic and Supplementary Multilingual Planes
_FOLD = np.uint64(0x9E3779B97F4A7C15)  # odd, and the golden ratio's bits: consecutive words spread apart

# Words per n-gram that decontamination looks for, as GPT-3 and lm-eval's decontamination did (docs/cleaning.md).
NGRAM = 13


@cache
def _punctuation() -> dict[int, str | None]:
    """str.translate's table for every punctuation code point (one C pass over a text), made on first use. Only
    the first two planes are scanned: Unicode has no punctuation above them (the others hold ideographs, tags and
    private use), and scanning all 1.1M code points took a quarter of a second in every worker process."""
    table: dict[int, str | None] = {}
    for c in range(_PUNCTUATION_PLANES):
        category = unicodedata.category(chr(c))
        if category.startswith("P"):
            table[c] = " " if category == "Pd" else None
    return table


def words(text: str) -> list[str]:
    """The text's words: lowercased, every punctuation character removed, split on any whitespace."""
    return text.lower().translate(_punctuation()).split()


def normalised(text: str) -> str:
    """The text reduced to its words joined by single spaces: what exact deduplication compares."""
    return " ".join(words(text))


def ngram_hashes(tokens: list[str], n: int, short_whole: bool = False) -> np.ndarray:
    """A 64-bit hash of each run of ``n`` consecutive words, in order (uint64).

    Each word is hashed once (xxh3_64 of its UTF-8 bytes); an n-gram's hash folds its words' hashes in order
    (h = h * K + w, wrapping) and mixes the result (splitmix64's finaliser), all in numpy: hashing every n-gram's
    joined string instead made Python touch each word n times, and was most of the time of a signature or a
    contamination scan. A text of fewer than ``n`` words has no n-gram; with ``short_whole`` it gives one hash of
    all its words (if any), as :func:`ngrams` gives the text itself.
    """
    if len(tokens) < n and not (short_whole and tokens):
        return np.zeros(0, np.uint64)
    hashed = np.fromiter(map(xxhash.xxh3_64_intdigest, tokens), np.uint64, len(tokens))
    n = min(n, len(tokens))
    count = len(tokens) - n + 1
    with np.errstate(over="ignore"):
        acc = hashed[:count].copy()
        for k in range(1, n):
            acc *= _FOLD
            acc += hashed[k:k + count]
        acc ^= acc >> np.uint64(30)
        acc *= np.uint64(0xBF58476D1CE4E5B9)
        acc ^= acc >> np.uint64(27)
        acc *= np.uint64(0x94D049BB133111EB)
        acc ^= acc >> np.uint64(31)
    return acc


def ngrams(tokens: list[str], n: int) -> Iterator[str]:
    """Each run of ``n`` consecutive words, joined by a space; a text shorter than ``n`` gives itself once (if any)."""
    if len(tokens) < n:
        if tokens:
            yield " ".join(tokens)
        return
    for i in range(len(tokens) - n + 1):
        yield " ".join(tokens[i:i + n])
