"""What a manifest's `decontaminate` block costs the build's token pass, per core.

    .venv/bin/python benchmarks/decontaminate_pass.py                  # ~1M tokens, 10,000 items, 3 rounds
    .venv/bin/python benchmarks/decontaminate_pass.py --items 50000

The same real text as benchmarks/contamination_scan.py (600 KJV chapters and 60 standard-library modules), as one
json-lines work unit, and an index of --items items of 25 words made the same way (one in a hundred a run of the
text itself, so some documents are dropped). In this one process, --rounds rounds of the token pass a unit's Ray
task does (pipelines/unit.py, CoreNet's rules, no extra filter), without and with the index; medians printed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from contamination_scan import text_and_items  # noqa: E402
from corpus.cleaning.contamination import CONTAMINATED, Decontamination  # noqa: E402
from corpus.manifest import Source, TextRules  # noqa: E402
from corpus.tasks.items import TaskItems  # noqa: E402
from corpus.text.rules import CoreNetRules  # noqa: E402
from corpus.tokenizer.tokenizer import Tokenizer  # noqa: E402
from pipelines.plan import plan_source  # noqa: E402
from pipelines.unit import UnitProcessor  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=10_000, help="task items in the index (default 10,000)")
    p.add_argument("--ngram", type=int, default=13)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    texts, items = text_and_items(args.items)
    started = time.perf_counter()
    decontaminate = Decontamination.of([TaskItems("bench", tuple(items), ("bench",))], args.ngram)
    print(f"index of {args.items:,} items: {len(decontaminate.index.hashes):,} n-grams in "
          f"{time.perf_counter() - started:.2f} s")
    with tempfile.TemporaryDirectory(prefix="decontaminate-bench-") as scratch:
        data = Path(scratch) / "bench.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        source = Source(name="bench", group="bench", upstream={"files": [str(data)]}, format="jsonl", tokens=1)
        [unit] = plan_source(source, [str(data)], unit_bytes=1 << 30)
        processor = UnitProcessor(CoreNetRules(TextRules()), Tokenizer(), [], "text")
        processor.run(unit)  # the first read warms the page cache and the tokenizer
        seconds: dict[str, list[float]] = {"plain": [], "decontaminate": []}
        outputs = {}
        for _ in range(args.rounds):
            for label, index in (("plain", None), ("decontaminate", decontaminate)):
                t0 = time.process_time()
                outputs[label] = processor.run(unit, decontaminate=index)
                seconds[label].append(time.process_time() - t0)
    plain, cleaned = outputs["plain"].counts, outputs["decontaminate"].counts
    read = plain.tokens + sum(plain.tokens_dropped.values())
    print(f"{plain.documents_read:,} documents, {read:,} tokens encoded; decontaminate drops "
          f"{cleaned.dropped[CONTAMINATED]:,} documents ({cleaned.tokens_dropped[CONTAMINATED]:,} tokens)")
    for label, times in seconds.items():
        median = statistics.median(times)
        print(f"  {label:<14} {median:6.2f} CPU-s  {read / median / 1e6:5.2f}M tokens/s on one core "
              f"(rounds {', '.join(f'{t:.2f}' for t in times)})")
    print(f"  ratio {statistics.median(seconds['decontaminate']) / statistics.median(seconds['plain']):.2f}x")


if __name__ == "__main__":
    main()
