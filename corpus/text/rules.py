"""CoreNet's text rules: NFC, split on single spaces into 2048-word chunks, two length filters.

A chunk is dropped when, after lowercasing, deleting ASCII punctuation and collapsing
whitespace, it has fewer than ``min_chars`` characters (``too_few_chars``), or when it
encodes to fewer than ``min_tokens`` tokens with BOS and EOS (``too_few_tokens``).
Splitting on single spaces keeps newlines inside words, so joining a chunk's words
with one space gives back exactly the text they came from.
"""
from __future__ import annotations

import string
import unicodedata
from collections.abc import Sequence

import numpy as np

from corpus.manifest import TextRules

TOO_FEW_CHARS = "too_few_chars"
TOO_FEW_TOKENS = "too_few_tokens"

_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str, form: str = "NFC") -> str:
    return unicodedata.normalize("NFC", text) if form == "NFC" else text


def split_words(text: str, words_per_chunk: int) -> list[str]:
    """Chunks of at most ``words_per_chunk`` space-separated words; always at least one chunk."""
    if text.count(" ") < words_per_chunk:  # counting is far cheaper than splitting a short document
        return [text]
    # cut the UTF-8 bytes at every words_per_chunk-th space (0x20 never occurs inside a multi-byte
    # character), which spares making a string object per word
    raw = text.encode("utf-8", "surrogatepass")
    spaces = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == 0x20)
    cuts = spaces[words_per_chunk - 1::words_per_chunk].tolist()
    starts, ends = [0] + [c + 1 for c in cuts], cuts + [len(raw)]
    return [raw[a:b].decode("utf-8", "surrogatepass") for a, b in zip(starts, ends)]


def content_chars(chunk: str) -> int:
    """Characters left after lowercasing, deleting ASCII punctuation and collapsing whitespace."""
    words = chunk.lower().translate(_DELETE_PUNCTUATION).split()
    return sum(map(len, words)) + max(len(words) - 1, 0)


class CoreNetRules:
    """The text rules of one manifest, as three small decisions the pipeline applies in order."""

    def __init__(self, rules: TextRules):
        self.rules = rules

    def normalize(self, text: str) -> str:
        return normalize(text, self.rules.normalize)

    def split(self, text: str) -> list[str]:
        return split_words(text, self.rules.split_words)

    def has_enough_chars(self, chunk: str) -> bool:
        need = self.rules.min_chars
        # the count of a prefix never exceeds the count of the whole, so a passing head decides a long chunk
        head = chunk[:4 * need + 64]
        if content_chars(head) >= need:
            return True
        return len(head) < len(chunk) and content_chars(chunk) >= need

    def has_enough_tokens(self, ids: Sequence[int]) -> bool:
        return len(ids) >= self.rules.min_tokens
