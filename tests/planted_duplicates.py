"""Two sources of real text with planted duplicates and their ground truth, for deduplication tests.

Source 0 holds distinct originals (King James Bible chapters of 300 words or more, from the sample
mirror's text). Source 1 holds its own distinct originals and, after them, copies of originals of
source 0: exact copies, near copies (about 1% of the words replaced: shingle Jaccard about 0.9) and
far copies (about 30% replaced: Jaccard about 0.1). A few copies of each kind are planted inside
source 0 as well, after their originals, so within-source duplicates are covered too.

A document is identified by ``(source, position)``; every copy sits after its original, so the
original has the smaller key and is the one a deduplication keeps. Each plant records the exact
Jaccard similarity of the two word 5-gram shingle sets, computed directly: a test classifies a pair
by that figure, not by the kind it was planted as. Tests and benchmarks import this module.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from corpus.cleaning.words import ngrams, words
from corpus.mirror import text as sample_text

NEAR_FRACTION = 0.01
FAR_FRACTION = 0.30


@dataclass(frozen=True)
class Plant:
    """A planted copy: its key, its original's key, how it was made, and the pair's exact shingle Jaccard."""
    copy: tuple[int, int]
    original: tuple[int, int]
    kind: str  # "exact", "near" or "far"
    jaccard: float


def shingles(text: str, n: int = 5) -> set[str]:
    return set(ngrams(words(text), n))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def changed(text: str, fraction: float, rng: random.Random, vocabulary: list[str]) -> str:
    """``text`` with ``fraction`` of its words (at least one) replaced by other words of ``vocabulary``."""
    tokens = text.split()
    for i in rng.sample(range(len(tokens)), max(1, round(fraction * len(tokens)))):
        # a replacement equal to the word it replaces would change nothing
        while (word := rng.choice(vocabulary)).lower() == tokens[i].lower():
            pass
        tokens[i] = word
    return " ".join(tokens)


def distinct_originals(count: int, min_words: int = 300, seed: int = 0) -> list[str]:
    """``count`` Bible chapters of ``min_words`` or more that share few shingles with each other.

    The Bible repeats itself (Psalms 14 and 53, Ezra 2 and Nehemiah 7, the offerings of Numbers 7):
    a chapter sharing over 5% of its shingles with one already taken is passed over, so the only
    duplicates in the data are the planted ones.
    """
    chapters = [c.text for c in sample_text.kjv_chapters() if len(c.text.split()) >= min_words]
    random.Random(seed).shuffle(chapters)
    seen: set[str] = set()
    out = []
    for text in chapters:
        own = shingles(text)
        if len(own & seen) > 0.05 * len(own):
            continue
        seen |= own
        out.append(text)
        if len(out) == count:
            return out
    raise ValueError(f"only {len(out)} distinct chapters of {min_words}+ words, {count} asked for")


def planted_sources(exact: int = 20, near: int = 60, far: int = 60, own: int = 40, within: int = 4,
                    seed: int = 0) -> tuple[dict[tuple[int, int], str], list[Plant]]:
    """The documents by key ``(source, position)`` and the planted copies.

    ``exact``, ``near`` and ``far`` copies of distinct originals of source 0 (``within`` of each kind
    placed in source 0 itself, the rest in source 1); ``own`` distinct originals in source 1 alone.
    """
    rng = random.Random(seed)
    kinds = [("exact", 0.0)] * exact + [("near", NEAR_FRACTION)] * near + [("far", FAR_FRACTION)] * far
    originals = distinct_originals(len(kinds) + own, seed=seed)
    vocabulary = sorted({w for text in originals for w in text.split()})
    sources: list[list[str]] = [originals[:len(kinds)], originals[len(kinds):]]
    placed = []
    for i, (kind, fraction) in enumerate(kinds):
        copy = originals[i] if kind == "exact" else changed(originals[i], fraction, rng, vocabulary)
        # the first `within` copies of each kind stay in source 0, after every original there
        source = 0 if kinds[:i].count((kind, fraction)) < within else 1
        sources[source].append(copy)
        placed.append(((source, len(sources[source]) - 1), (0, i), kind, copy))
    documents = {(s, p): text for s, texts in enumerate(sources) for p, text in enumerate(texts)}
    plants = [Plant(key, original, kind, jaccard(shingles(copy), shingles(documents[original])))
              for key, original, kind, copy in placed]
    return documents, plants


# ---------------------------------------------------------------- as a corpus to build

SOURCES = ("first", "second")
FILES = 4  # per source, a unit each: pairs cross units as well as sources, and a kill lands between them


def write_planted(root: Path, scope: str = "corpus") -> tuple[Path, dict, list]:
    """The planted sources as ``<source>-<i>.jsonl`` files under ``root`` and a manifest deduplicating them."""
    documents, plants = planted_sources()
    for s, name in enumerate(SOURCES):
        texts = [documents[(s, p)] for p in range(sum(1 for k in documents if k[0] == s))]
        per_file = -(-len(texts) // FILES)
        for i in range(FILES):
            part = texts[i * per_file:(i + 1) * per_file]
            (root / f"{name}-{i}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    manifest = root / f"planted-{scope}.yaml"
    manifest.write_text(
        f"name: planted-{scope}\ntext: {{min_tokens: 16, min_chars: 50}}\nsources:\n" + "".join(
            f"  - name: {name}\n    group: g{s}\n    upstream: {{files: [\"{root}/{name}-*.jsonl\"]}}\n"
            f"    format: jsonl\n    tokens: 1M\n" for s, name in enumerate(SOURCES)) +
        f"dedup:\n  exact: true\n  near: {{threshold: 0.8, ngram: 5, permutations: 128}}\n  scope: {scope}\n")
    return manifest, documents, plants
