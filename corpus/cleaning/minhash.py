"""MinHash signatures of texts, and the LSH bands that turn signatures into candidate pairs.

A document's shingles are the word n-grams of ``words(text)`` (:mod:`corpus.cleaning.words`), each
hashed by ``words.ngram_hashes`` (the words' xxh3_64 hashes folded in numpy); rensa's R-MinHash sketches that set into ``permutations`` 32-bit values. rensa
was chosen by measurement (``benchmarks/dedup_throughput.py``, docs/benchmarks.md): it sketches a
document in microseconds, so a signature costs little more than cutting the text into shingles.
rensa may spread a large batch over a Rayon thread pool: set RAYON_NUM_THREADS=1 where a task is
given one CPU (the values are the same either way).

A signature depends on the document's shingle set and nothing else: the seed is fixed, and rensa's
full-set R-MinHash gives the same values for the same set whatever the order, the repeats, the batch
or the process. It does depend on rensa's algorithm, so rensa is pinned and :data:`SCHEME` names
what made a signature: stored signatures that carry another scheme must be computed again.

Two documents whose shingle sets have Jaccard similarity s agree on each signature value with
probability s. Cut into b bands of r values, they share at least one band (and become a candidate
pair) with probability 1 - (1 - s^r)^b: :func:`corpus.cleaning.bands.bands_for` picks b and r so that curve rises just
below the threshold, :func:`band_keys` gives each band one 64-bit key, and :func:`verified_pairs`
keeps the candidates whose signatures agree on at least ``threshold`` of their values.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Hashable, TypeVar

import numpy as np
import rensa
import xxhash

from corpus.cleaning.bands import Bands
from corpus.cleaning.buckets import group_pairs, key_rows
from corpus.cleaning.words import ngram_hashes, words

SEED = 1_000_003  # any fixed number: every worker must use the same one, and changing it changes every signature
SCHEME = (f"rensa R-MinHash v{rensa.RMinHash.ALGORITHM_VERSION}, word n-grams folded from xxh3_64 word hashes, "
          f"seed {SEED}")
EMPTY = np.uint32(0xFFFF_FFFF)  # every value of a text without words: no shingle lowered it

Key = TypeVar("Key", bound=Hashable)


def shingle_hashes(text: str, ngram: int = 5) -> np.ndarray:
    """The hash of each word ``ngram``-gram of the text (``words.ngram_hashes``), in order (repeats kept: the sketch
    ignores them); a text shorter than ``ngram`` words is one shingle."""
    return ngram_hashes(words(text), ngram, short_whole=True)


def signatures(texts: Iterable[str], permutations: int = 128, ngram: int = 5) -> np.ndarray:
    """One row of ``permutations`` uint32 values per text; a text without words gets a row of :data:`EMPTY`."""
    if permutations < 1 or ngram < 1:
        raise ValueError(f"permutations and ngram must be positive, got {permutations} and {ngram}")
    hashes = [shingle_hashes(t, ngram) for t in texts]
    if not hashes:
        return np.empty((0, permutations), np.uint32)
    offsets = np.zeros(len(hashes) + 1, np.uint64)
    np.cumsum([len(h) for h in hashes], out=offsets[1:])
    # one call for the batch: rensa reads the flat buffer directly, with no Python object per shingle
    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(np.concatenate(hashes), offsets, permutations, SEED)
    return np.array(matrix.to_rows(), np.uint32).reshape(len(hashes), permutations)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The estimated Jaccard similarity of two documents: the fraction of their signature values that agree."""
    return float(np.count_nonzero(a == b)) / len(a)


def band_keys(signatures: np.ndarray, bands: Bands) -> np.ndarray:
    """A uint64 key per band of each signature: shape (documents, bands.count), or (bands.count,) for one.

    The key is xxh3_64 of the band's values as little-endian bytes, seeded with the band's index, so
    the same values in two bands give unrelated keys. Documents that share a key in a band are
    candidates; shard the work by (band, key % shards), each shard seeing whole buckets.
    """
    sigs = np.asarray(signatures, dtype="<u4")
    if sigs.shape[-1] != bands.count * bands.rows:
        raise ValueError(f"signatures of {sigs.shape[-1]} values cannot be cut into {bands.count}x{bands.rows} bands")
    rows = np.ascontiguousarray(sigs.reshape(-1, bands.count, bands.rows))
    keys = np.array([[xxhash.xxh3_64_intdigest(row[i].tobytes(), seed=i) for i in range(bands.count)]
                     for row in rows], np.uint64).reshape(-1, bands.count)
    return keys[0] if sigs.ndim == 1 else keys


def candidate_pairs(keys: Sequence[Key], signatures: np.ndarray, bands: Bands) -> set[tuple[Key, Key]]:
    """Pairs ``(smaller key, larger key)`` of documents that share a band, found in memory.

    What one shard of the build's search does for the buckets it holds (:mod:`corpus.cleaning.buckets`), here for
    all of them at once. Texts without words are left out: they have no shingles to compare (and are exact
    duplicates of each other).
    """
    order = sorted(range(len(keys)), key=keys.__getitem__)
    rank = np.empty(len(keys), np.int64)
    rank[order] = np.arange(len(keys))  # ids that sort as the keys do: a bucket's first member is its smallest key
    signatures = np.asarray(signatures).reshape(len(keys), bands.count * bands.rows)
    worded = ~(signatures == EMPTY).all(axis=1)
    rows = key_rows(rank[worded], bands=band_keys(signatures[worded], bands).reshape(-1, bands.count))
    return {(keys[order[a]], keys[order[b]]) for a, b in group_pairs(rows).tolist()}


def agreeing(a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """For rows of signatures ``a`` and ``b``, whether each pair agrees on at least ``threshold`` of its values
    (:func:`similarity`, row by row)."""
    return np.count_nonzero(a == b, axis=1) / a.shape[1] >= threshold


def verified_pairs(pairs: Iterable[tuple[Key, Key]], signature_of: Mapping[Key, np.ndarray],
                   threshold: float) -> list[tuple[Key, Key]]:
    """The pairs whose signatures agree on at least ``threshold`` of their values, sorted.

    Sharing one band is weak evidence (r values of the signature); every candidate is checked on
    the full signature before the clusters join it, or the S-curve's tail below the threshold and
    chains of such pairs would remove documents that are not near duplicates.
    """
    pairs = sorted(pairs)
    if not pairs:
        return []
    ok = agreeing(np.array([signature_of[a] for a, _ in pairs]), np.array([signature_of[b] for _, b in pairs]),
                  threshold)
    return [p for p, keep in zip(pairs, ok.tolist()) if keep]
