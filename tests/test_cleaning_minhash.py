"""Near-duplicate detection at library level: words, MinHash signatures, LSH bands, clusters, on real text.

The quality figures of issue 23 are checked here on planted data (tests/planted_duplicates.py): two
sources with exact, near (1% of words changed) and far (30% changed) copies, each pair classed by
its exact shingle Jaccard similarity, at threshold 0.8, word 5-grams and 128 permutations.
"""
from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from corpus.cleaning.bands import Bands, bands_for
from corpus.cleaning.buckets import EXACT, by_shard, document_ids, group_pairs, key_rows, unit_and_position
from corpus.cleaning.clusters import clusters, duplicate_of
from corpus.cleaning.minhash import EMPTY, band_keys, candidate_pairs, signatures, similarity, verified_pairs
from corpus.cleaning.words import ngrams, normalised, words
from corpus.mirror import text as sample_text
from planted_duplicates import planted_sources

ROOT = Path(__file__).resolve().parent.parent
THRESHOLD, NGRAM, PERMUTATIONS = 0.8, 5, 128


@pytest.fixture(scope="module")
def chapters() -> list[str]:
    return [c.text for c in sample_text.kjv_chapters()[:40]]


def digest(matrix: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(matrix, dtype="<u4").tobytes()).hexdigest()


# --- words: the one normalisation -------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Hello World", ["hello", "world"]),
    ("don't stop", ["dont", "stop"]),                      # punctuation is deleted, not a separator
    ("U.S.A. (1776)", ["usa", "1776"]),
    ("well-known stop—now", ["well", "known", "stop", "now"]),  # dashes separate words
    ("«Bonjour», ¿qué?", ["bonjour", "qué"]),               # Unicode punctuation counts too
    ("a\t\n  b\u3000c", ["a", "b", "c"]),                   # any whitespace splits
    ("x + y = $5", ["x", "+", "y", "=", "$5"]),             # symbols are not punctuation
    ("... !!! ---", []),
])
def test_words_lowercase_drop_punctuation_and_split_on_whitespace(text, expected):
    assert words(text) == expected


def test_normalised_text_is_its_words_joined_by_single_spaces():
    assert normalised("  In the Beginning,\n\nGOD created... ") == "in the beginning god created"


def test_ngrams_of_a_short_text_are_the_text_once_and_of_no_words_nothing():
    assert list(ngrams(["a", "b", "c", "d", "e", "f"], 5)) == ["a b c d e", "b c d e f"]
    assert list(ngrams(["a", "b"], 5)) == ["a b"]
    assert list(ngrams([], 5)) == []


# --- signatures --------------------------------------------------------------------------------

def test_a_signature_is_the_same_in_any_batch_size_and_order(chapters):
    together = signatures(chapters, PERMUTATIONS, NGRAM)
    assert together.shape == (len(chapters), PERMUTATIONS) and together.dtype == np.uint32
    one_by_one = np.vstack([signatures([t], PERMUTATIONS, NGRAM) for t in chapters])
    order = list(range(len(chapters)))
    random.Random(1).shuffle(order)
    shuffled = signatures([chapters[i] for i in order], PERMUTATIONS, NGRAM)
    assert np.array_equal(together, one_by_one)
    assert np.array_equal(together[order], shuffled)


def test_a_signature_is_the_same_in_another_process(chapters):
    child = ("import sys, hashlib, numpy as np\n"
             "from corpus.cleaning.minhash import signatures\n"
             "from corpus.mirror import text\n"
             "texts = [c.text for c in text.kjv_chapters()[:40]][::-1]\n"
             "sigs = signatures(texts, 128, 5)[::-1]\n"
             "print(hashlib.sha256(np.ascontiguousarray(sigs, dtype='<u4').tobytes()).hexdigest())\n")
    # another hash seed for Python's str hashes, and rensa allowed more than one thread
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345", "RAYON_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", child], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == digest(signatures(chapters, PERMUTATIONS, NGRAM))


def test_signatures_are_pinned_so_a_changed_library_is_noticed():
    # A new rensa or xxhash that changes these values makes every stored signature stale: if this
    # fails, bump what minhash.SCHEME records along with the expected digest.
    sigs = signatures(["In the beginning God created the heaven and the earth.", "Ça va? Très bien — merci, François."])
    assert digest(sigs) == "f55adf11db6bf6f92c80ff06107616e9b12095cb51a840323e7bfa47d44fd315"


def test_a_text_without_words_has_an_empty_signature_and_a_short_one_a_real_one():
    sigs = signatures(["", " ... ", "just three words"], 16, 5)
    assert (sigs[0] == EMPTY).all() and (sigs[1] == EMPTY).all()
    assert not (sigs[2] == EMPTY).any()


def test_the_estimate_follows_the_shingle_overlap(chapters):
    sigs = signatures([chapters[0], chapters[0].upper(), chapters[1]])
    assert similarity(sigs[0], sigs[1]) == 1.0   # the same words, however written
    assert similarity(sigs[0], sigs[2]) < 0.1


# --- bands -------------------------------------------------------------------------------------

@pytest.mark.parametrize("threshold, permutations, count, rows", [
    (0.8, 128, 16, 8),
    (0.8, 112, 14, 8),     # datatrove's default 14 buckets x 8 hashes, found from its threshold
    (0.8, 256, 32, 8),
    (0.9, 128, 8, 16),
    (0.5, 128, 32, 4),
    (1.0, 128, 1, 128),
])
def test_bands_split_the_permutations_so_the_curve_rises_just_below_the_threshold(threshold, permutations,
                                                                                   count, rows):
    bands = bands_for(threshold, permutations)
    assert bands == Bands(count, rows) and bands.count * bands.rows == permutations
    assert bands.midpoint() <= threshold
    assert bands.probability(threshold) >= 0.5


@pytest.mark.parametrize("permutations", [128, 256])
def test_a_power_of_two_permutations_has_bands_for_every_threshold(permutations):
    for threshold in [t / 20 for t in range(1, 21)]:
        bands = bands_for(threshold, permutations)
        assert bands.count * bands.rows == permutations and bands.midpoint() <= threshold


@pytest.mark.parametrize("threshold, permutations, setting", [
    (0.8, 127, "permutations"),    # prime: only 1 x 127 (rises at 0.99) or 127 x 1 (at 0.01)
    (0.8, 0, "permutations"),
    (0.0, 128, "threshold"),
    (1.5, 128, "threshold"),
    (-0.2, 128, "threshold"),
])
def test_bands_refuse_settings_that_cannot_work_naming_the_setting(threshold, permutations, setting):
    with pytest.raises(ValueError, match=f"^{setting}"):
        bands_for(threshold, permutations)


def test_band_keys_are_one_per_band_and_differ_between_bands_of_equal_values():
    bands = Bands(4, 2)
    sig = np.array([7, 7, 7, 7, 7, 7, 1, 2], np.uint32)
    keys = band_keys(sig, bands)
    assert keys.shape == (4,) and keys.dtype == np.uint64
    assert len(set(keys[:3].tolist())) == 3      # the same values in bands 0, 1, 2: unrelated keys
    both = band_keys(np.vstack([sig, sig[::-1]]), bands)
    assert both.shape == (2, 4) and np.array_equal(both[0], keys)
    with pytest.raises(ValueError):
        band_keys(sig[:6], bands)


def test_documents_sharing_a_band_are_candidates_and_texts_without_words_never_are(chapters):
    sigs = signatures([chapters[0], chapters[1], chapters[0], "", "..."], PERMUTATIONS, NGRAM)
    keys = [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1), (1, 0, 2)]
    bands = bands_for(THRESHOLD, PERMUTATIONS)
    assert candidate_pairs(keys, sigs, bands) == {((0, 0, 0), (1, 0, 0))}
    assert candidate_pairs([], signatures([], PERMUTATIONS), bands) == set()


# --- buckets: pairs from sorted rows ------------------------------------------------------------

def _brute_pairs(rows: np.ndarray, leaders: int) -> set[tuple[int, int]]:
    """Every pair of a group with one of its first ``leaders`` members, by looping over the rows themselves."""
    groups: dict[tuple, list[int]] = {}
    for r in rows.tolist():
        groups.setdefault(r[:4], []).append(r[4])
    out = set()
    for members in groups.values():
        members = sorted(set(members))
        out.update((a, b) for i, a in enumerate(members[:leaders]) for b in members[i + 1:])
    return out


@pytest.mark.parametrize("leaders", [1, 3, 1000])
def test_group_pairs_are_the_pairs_with_a_leader_of_each_group_whatever_the_sharding(leaders):
    rng = np.random.default_rng(7)
    docs = document_ids(2, np.arange(400)) - rng.integers(0, 2, 400) * (1 << 32)  # two units: ids sort like keys
    exact = rng.integers(0, 30, (400, 2)).astype(np.uint64)        # few values: groups of up to ~30 documents
    bands = rng.integers(0, 12, (400, 4)).astype(np.uint64)
    rows = np.concatenate([key_rows(docs, exact, bands), key_rows(docs[:50], bands=bands[:50], scope=1)])
    rows = rng.permutation(np.concatenate([rows, rows[:100]]))    # order and repeated rows do not matter
    expected = _brute_pairs(rows, leaders)
    found = group_pairs(rows, leaders)
    assert found.dtype == np.int64 and (found[:, 0] < found[:, 1]).all()
    assert set(map(tuple, found.tolist())) == expected and len(found) == len(expected)
    for shards in (1, 2, 5):
        ordered, offsets = by_shard(rows, shards)
        parts = [group_pairs(ordered[offsets[i]:offsets[i + 1]], leaders) for i in range(shards)]
        assert set(map(tuple, np.concatenate(parts).tolist())) == expected
    assert set(rows["band"].tolist()) == {EXACT, 0, 1, 2, 3}
    assert unit_and_position(document_ids(5, [0, 9]))[0].tolist() == [5, 5]
    assert unit_and_position(document_ids(5, [0, 9]))[1].tolist() == [0, 9]


def test_a_bucket_larger_than_its_leaders_gives_pairs_linear_in_its_size():
    rows = key_rows(np.arange(10_000), bands=np.zeros((10_000, 1), np.uint64))  # one bucket of 10,000
    pairs = group_pairs(rows, leaders=32)
    assert len(pairs) == sum(10_000 - 1 - r for r in range(32))  # not 10,000 x 9,999 / 2
    assert pairs[:, 0].max() == 31
    assert group_pairs(key_rows(np.arange(5), bands=np.arange(5, dtype=np.uint64)[:, None])).shape == (0, 2)
    assert group_pairs(key_rows(np.arange(1), bands=np.zeros((1, 1), np.uint64))).shape == (0, 2)


# --- clusters ----------------------------------------------------------------------------------

def test_each_cluster_keeps_its_smallest_key_and_maps_the_rest_to_it():
    a, b, c, d, e = (0, 3, 9), (0, 4, 0), (1, 0, 0), (1, 0, 5), (2, 1, 1)
    pairs = [(c, d), (d, b), (e, a), (a, c)]          # a chain: all five are one cluster
    assert duplicate_of(pairs) == {b: a, c: a, d: a, e: a}
    assert clusters(pairs + [((3, 0, 0), (3, 0, 1))]) == [[a, b, c, d, e], [(3, 0, 0), (3, 0, 1)]]


def test_clusters_do_not_depend_on_the_order_or_direction_of_the_pairs():
    rng = random.Random(0)
    keys = [(rng.randrange(3), rng.randrange(50), rng.randrange(1000)) for _ in range(300)]
    pairs = [(rng.choice(keys), rng.choice(keys)) for _ in range(250)]
    expected_map, expected_clusters = duplicate_of(pairs), clusters(pairs)
    for _ in range(5):
        rng.shuffle(pairs)
        flipped = [(b, a) if rng.random() < 0.5 else (a, b) for a, b in pairs]
        assert duplicate_of(flipped) == expected_map
        assert clusters(flipped) == expected_clusters
    assert all(kept < removed for removed, kept in expected_map.items())


# --- quality on planted data ----------------------------------------------------------------------

def test_planted_duplicates_are_found_by_their_exact_jaccard_and_nothing_else_is_removed():
    documents, plants = planted_sources()
    keys = sorted(documents)
    sigs = signatures([documents[k] for k in keys], PERMUTATIONS, NGRAM)
    candidates = candidate_pairs(keys, sigs, bands_for(THRESHOLD, PERMUTATIONS))
    removed = duplicate_of(verified_pairs(candidates, dict(zip(keys, sigs)), THRESHOLD))

    def found(group):
        return sum(removed.get(p.copy) == p.original for p in group) / len(group)

    exact = [p for p in plants if p.kind == "exact"]
    near = [p for p in plants if p.jaccard >= THRESHOLD + 0.1 and p.kind != "exact"]
    far = [p for p in plants if p.jaccard <= THRESHOLD - 0.3]
    assert len(exact) >= 20 and len(near) >= 20 and len(far) >= 50
    assert {p.copy[0] for p in near} == {0, 1}    # within one source and across the two
    assert found(exact) == 1.0
    assert found(near) >= 0.95
    assert found(far) <= 0.02
    assert set(removed) <= {p.copy for p in plants}


def test_every_punctuation_mark_of_unicode_is_in_the_first_two_planes_the_table_scans():
    import sys
    import unicodedata

    from corpus.cleaning.words import _PUNCTUATION_PLANES, _punctuation
    beyond = [c for c in range(_PUNCTUATION_PLANES, sys.maxunicode + 1) if unicodedata.category(chr(c))[0] == "P"]
    assert not beyond and len(_punctuation()) > 800
