"""Text as the cleaning steps compare it: lowercased, punctuation removed, split on whitespace.

Deduplication (exact hashes, MinHash shingles) and decontamination (n-grams shared with task
items) must see a document and a task item the same way, so both take their words from here.
Punctuation is deleted, not turned into a space ("don't" is one word, "dont"), as lm-eval's
decontamination normalises; every Unicode punctuation character counts, not only ASCII. Dashes
are the exception: they separate words ("well-known" and "stop—now" are two words each).
"""
from __future__ import annotations

import sys
import unicodedata
from collections.abc import Iterator
from functools import cache

# Words per n-gram that decontamination looks for, as GPT-3 and lm-eval's decontamination did (docs/cleaning.md).
NGRAM = 13


@cache
def _punctuation() -> dict[int, str | None]:
    """str.translate's table for every punctuation code point (one C pass over a text); made on first use,
    since scanning all of Unicode takes a quarter of a second."""
    table: dict[int, str | None] = {}
    for c in range(sys.maxunicode + 1):
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


def ngrams(tokens: list[str], n: int) -> Iterator[str]:
    """Each run of ``n`` consecutive words, joined by a space; a text shorter than ``n`` gives itself once (if any)."""
    if len(tokens) < n:
        if tokens:
            yield " ".join(tokens)
        return
    for i in range(len(tokens) - n + 1):
        yield " ".join(tokens[i:i + n])
