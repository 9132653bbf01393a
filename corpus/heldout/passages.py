"""The passages of the mirror's text pool that no document of a manifest's sample mirror holds any of.

A `--sample` build of a manifest reads, for every source, every record of every file the mirror lists for it
(`pipelines.plan.source_files`; the last unit of each file is open-ended, so nothing is skipped), normalises it to
NFC and cuts it into chunks on single spaces; filters, deduplication and decontamination only ever drop text. So
the text it can train on is found, word for word, in the NFC text of the mirror's documents (`training_texts`).

A passage of the pool (a King James Bible chapter, a standard-library module) is held out when it shares no word
13-gram (`corpus.cleaning.words`: lowercased, punctuation removed, the measure of `elm-corpus contamination`) with
any of those documents. Any stretch of a held-out passage of 15 words or more is then in no training document:
were it a substring of one, its words but the first and last (which a substring may cut) would be a run of that
document's words, and their first 13 a shared 13-gram. The documents of every source are taken, not only the
sources a task imitates, so the passages are held out of any corpus built from a subset of the manifest's sources.
"""
from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from corpus.cleaning.words import NGRAM, ngram_hashes, words
from corpus.manifest import Manifest
from corpus.mirror.mirror import ensure_mirror, iter_documents
from corpus.mirror.text import Passage


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def training_texts(manifest: Manifest, mirror_root: str | Path | None = None) -> Iterator[str]:
    """The NFC text of every document of every source of the manifest's sample mirror (written first if missing):
    the records a `--sample` build reads, less those it quarantines."""
    root = ensure_mirror(manifest, mirror_root)
    for source in manifest.sources:
        for _, text in iter_documents(root, source.name):
            if text:
                yield nfc(text)


def ngram_set(texts: Iterable[str], n: int = NGRAM) -> np.ndarray:
    """The sorted distinct hashes of every word n-gram of the texts."""
    hashes = [ngram_hashes(words(t), n) for t in set(texts)]  # the mirror repeats documents across sources
    return np.unique(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64)


def shares_ngram(text: str, known: np.ndarray, n: int = NGRAM) -> bool:
    """Whether any word n-gram of the text is in ``known`` (sorted); a text of fewer than n words counts as sharing,
    since it has nothing to check."""
    mine = ngram_hashes(words(text), n)
    if not len(mine):
        return True
    if not len(known):
        return False
    at = np.searchsorted(known, mine).clip(max=len(known) - 1)
    return bool((known[at] == mine).any())


def held_out(passages: Sequence[Passage], training: np.ndarray, n: int = NGRAM) -> tuple[Passage, ...]:
    """The passages (as NFC text, in order) that share no word n-gram with the training n-grams (`ngram_set`)."""
    kept = (Passage(p.title, nfc(p.text), p.origin) for p in passages)
    return tuple(p for p in kept if not shares_ngram(p.text, training, n))
