"""How fast `elm-corpus contamination` scans a corpus, per core, and where the time goes.

    .venv/bin/python benchmarks/contamination_scan.py                   # ~1M tokens, 10,000 items, 3 rounds
    .venv/bin/python benchmarks/contamination_scan.py --items 50000 --rounds 5

One shard of real text (600 KJV chapters and 60 standard-library modules, encoded with the default tokenizer,
one chunk per document) is written to a temporary folder, and an index is made of --items items of 25 words: one in a
hundred a run of the text itself (found by the scan), the others words drawn at random from it. Then, in this one process, --rounds rounds of the scan a unit's Ray task
does (corpus/cleaning/contamination.py), split into its steps: decoding the chunks, the words and their n-grams
hashed, the look-up in the index. Medians printed, as tokens per second of the whole scan and seconds per step.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corpus.cleaning.contamination import NgramIndex, ngram_hashes, unit_documents  # noqa: E402
from corpus.mirror.text import kjv_chapters, stdlib_sources  # noqa: E402
from corpus.store.shards import Shard  # noqa: E402
from corpus.store.writer import write_shard  # noqa: E402
from corpus.tokenizer.tokenizer import Tokenizer  # noqa: E402


def text_and_items(count: int) -> tuple[list[str], list[tuple[str]]]:
    """The benchmark's text (600 KJV chapters, 60 standard-library modules) and ``count`` task items of 25 words:
    one in a hundred a run of the text itself, the rest random words of it. decontaminate_pass.py uses the same."""
    texts = [c.text for c in kjv_chapters()[:600]] + [m.text for m in stdlib_sources()[:60]]
    rng = random.Random(0)
    vocabulary = " ".join(texts[:50]).split()
    words = " ".join(texts).split()
    copied = [rng.randrange(len(words) - 25) for _ in range(count // 100)]
    items = [(" ".join(words[i:i + 25]),) for i in copied]
    items += [(" ".join(rng.choice(vocabulary) for _ in range(25)),) for _ in range(count - len(items))]
    return texts, items


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=10_000, help="task items in the index (default 10,000)")
    p.add_argument("--ngram", type=int, default=13)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    tokenizer = Tokenizer()
    texts, items = text_and_items(args.items)
    started = time.perf_counter()
    index = NgramIndex.build(items, args.ngram)
    print(f"index of {args.items:,} items: {len(index.hashes):,} n-grams in {time.perf_counter() - started:.2f} s")
    with tempfile.TemporaryDirectory(prefix="contamination-bench-") as scratch:
        stem = Path(scratch) / "unit"
        write_shard(stem, tokenizer.encode(texts), {"source": "bench"})
        shard = Shard.open(stem)
        steps: dict[str, list[float]] = {"decode": [], "words, n-grams, hashes": [], "look-up": []}
        totals = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            documents = list(unit_documents(shard, None, tokenizer))
            t1 = time.perf_counter()
            hashes = [ngram_hashes(d, args.ngram) for d in documents]
            t2 = time.perf_counter()
            found = sum(index.items_with(h).size for h in hashes)
            t3 = time.perf_counter()
            for step, seconds in zip(steps, (t1 - t0, t2 - t1, t3 - t2)):
                steps[step].append(seconds)
            totals.append(t3 - t0)
        total = statistics.median(totals)
        print(f"{shard.num_tokens:,} tokens, {len(documents):,} documents, {sum(map(len, hashes)):,} n-grams, "
              f"{found:,} item hits")
        print(f"scan: {shard.num_tokens / total / 1e6:.2f}M tokens/s on one core (median of {args.rounds}: "
              f"{total:.2f} s; rounds {', '.join(f'{t:.2f}' for t in totals)})")
        for step, seconds in steps.items():
            median = statistics.median(seconds)
            print(f"  {step:<24} {median:6.2f} s  {100 * median / total:5.1f}%")


if __name__ == "__main__":
    main()
