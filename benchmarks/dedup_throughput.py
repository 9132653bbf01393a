"""MinHash signatures per second per core: datatrove's own signature code against rensa, datasketch and numpy;
and, with --build, deduplication in the build against the plain build.

    RAYON_NUM_THREADS=1 .venv/bin/python benchmarks/dedup_throughput.py            # 1,268 documents, 5 rounds
    .venv/bin/python benchmarks/dedup_throughput.py --docs 400 --repeats 3 --json
    .venv/bin/python benchmarks/dedup_throughput.py --build 25 --repeats 3          # the build, 25 and 100 MB

``--build MB``: the same text (build_throughput.py's "fresh" text: real documents, none twice, mostly code)
with a quarter of its documents planted again with 1% of their words changed (near copies), built with
2 workers and 4 MB units by ``pipelines.build.build`` from a manifest without and with a ``dedup`` block
(exact, near at 0.8, 5-grams, 128 permutations). Every timed build gets fresh Ray workers (build_throughput's
``fresh_workers``); the two take turns, plain first in odd rounds; medians. Then the dedup build of MB and of
4 x MB: the peak RSS of the Ray workers that ran signature tasks and search tasks (each task reports its
process's peak), with the search cut into one shard per ``--docs-per-shard`` signed documents (default 2,000
here, so that the 4x input gets 4x the shards as a large corpus would at the build's 500,000): memory per
worker should not grow with the input.

``--search DOCS``: the search's grouping alone, in this process, on synthetic keys of DOCS documents in units of
2,000 (16 band keys each, a tenth of the documents sharing 12 of their bands with an earlier one, a fiftieth an
exact hash), cut into ``--shards``: the rows of ``corpus.cleaning.buckets`` (each unit's keys turned into rows
once, split by shard, each shard's rows sorted) against the search this replaced (each shard scanning every
unit's keys and grouping its share in Python dicts of tuples). CPU seconds of every step, and the largest peak
of traced memory of one step (a shard's, or a unit's split), measured in a second call of each step; both must
find the same pairs.

The documents are real English text of a few KB each: the 1,189 chapters of the King James Bible
and the 79 Python reference topics of the sample mirror (``corpus.mirror.text``), 3.6 KB on average,
in that order, cut to --docs. Every candidate turns a text into a 128-value signature, the whole way:

- ``datatrove`` (the baseline): ``MinhashDedupSignature.get_shingles`` then ``get_signature`` per
  document, as its ``run`` does; its own shingling (``simplify_text``, its English word tokenizer,
  5-grams, xxhash64) with 16 buckets x 8 hashes, so it makes 128 values like the others.
- the rest shingle with ``corpus.cleaning.words``: the word 5-grams of ``words(text)``, then
  - ``rensa R-MinHash, strings``: ``RMinHash.digest_matrix_from_token_sets`` (rensa hashes the strings itself);
  - ``rensa R-MinHash, xxh3``: the shingles hashed with ``xxhash.xxh3_64`` here, then
    ``RMinHash.digest_matrix_from_flat_token_hashes``;
  - ``rensa C-MinHash, strings``: ``CMinHash.digests64_from_token_sets``;
  - ``datasketch``: ``MinHash.bulk`` (its default SHA-1 hash, affine32 permutations), and the same
    with ``xxhash.xxh32`` as its hash function;
  - ``numpy, xxh3``: the xxh3_64 shingle hashes through 128 multiply-shift permutations, minimum per column;
  - ``corpus.cleaning.minhash.signatures``: the module the build uses (the choice): rensa R-MinHash over
    ``words.ngram_hashes`` (each word hashed once with xxh3_64, the 5-grams folded in numpy), from the texts
    (its accuracy too: the estimate from its own shingles against the exact Jaccard of the same 5-grams).
Bulk calls take --batch documents at a time. Measured in this one process: CPU seconds of the process
(all its threads; run with RAYON_NUM_THREADS=1 so rensa stays on one core) for all documents,
--repeats rounds with the candidates interleaved within a round; medians. Signatures per CPU second
is signatures per second per core. The column "from shingles" times the hashing and sketching alone,
on shingles prepared beforehand (datatrove: its ``get_shingles`` output), to show where the time goes.

Accuracy: --pairs originals from ``tests/planted_duplicates.py`` (Bible chapters of 300+ words), each
copied with 1%, 3%, 5%, 10%, 20%, 30% and 50% of its words replaced. Each candidate's estimate
(the fraction of equal signature values) is compared with the exact Jaccard similarity of the two
shingle sets (words() 5-grams). datatrove is given the same sets for this: its ``get_signature`` on
its hash of our shingles.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xxhash

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from pipelines.runner import require_token_auth  # noqa: E402

require_token_auth()  # before anything imports Ray, which reads its authentication settings on import
import datasketch  # noqa: E402
import rensa  # noqa: E402
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature  # noqa: E402

from corpus.cleaning import minhash  # noqa: E402
from corpus.cleaning.words import ngrams, words  # noqa: E402
from corpus.mirror import text as sample_text  # noqa: E402
from planted_duplicates import changed, distinct_originals, jaccard  # noqa: E402

PERMUTATIONS = 128
NGRAM = 5
SEED = 1
CHANGED = (0.01, 0.03, 0.05, 0.10, 0.20, 0.30, 0.50)


def shingle_strings(text: str) -> list[str]:
    return list(ngrams(words(text), NGRAM))


def xxh3(shingles: list[str]) -> np.ndarray:
    return np.fromiter(map(xxhash.xxh3_64_intdigest, shingles), np.uint64, len(shingles))


class Datatrove:
    def __init__(self, folder: str):
        self.step = MinhashDedupSignature(folder, config=MinhashConfig(num_buckets=16, hashes_per_bucket=8))

    def prepare(self, texts):
        return [self.step.get_shingles(t) for t in texts]

    def sketch(self, prepared):
        # run() skips a document without shingles; none of these is empty
        return np.array([np.concatenate(self.step.get_signature(s)) for s in prepared])

    def from_sets(self, sets):
        hashes = [np.array([self.step._hash_func(x) for x in s], np.uint64).reshape(-1, 1) for s in sets]
        return self.sketch(hashes)


class RensaStrings:
    def prepare(self, texts):
        return [shingle_strings(t) for t in texts]

    def sketch(self, prepared):
        return np.array(rensa.RMinHash.digest_matrix_from_token_sets(prepared, PERMUTATIONS, SEED).to_rows(),
                        np.uint32)

    def from_sets(self, sets):
        return self.sketch([sorted(s) for s in sets])


class RensaXxh3(RensaStrings):
    def sketch(self, prepared):
        hashes = [xxh3(s) for s in prepared]
        offsets = np.zeros(len(hashes) + 1, np.uint64)
        np.cumsum([len(h) for h in hashes], out=offsets[1:])
        matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(np.concatenate(hashes), offsets,
                                                                     PERMUTATIONS, SEED)
        return np.array(matrix.to_rows(), np.uint32)


class RensaC(RensaStrings):
    def sketch(self, prepared):
        return np.array(rensa.CMinHash.digests64_from_token_sets(prepared, PERMUTATIONS, SEED), np.uint64)


class Datasketch(RensaStrings):
    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def sketch(self, prepared):
        sketches = datasketch.MinHash.bulk([[s.encode() for s in doc] for doc in prepared],
                                           num_perm=PERMUTATIONS, seed=SEED, **self.kwargs)
        return np.array([m.hashvalues for m in sketches])


class NumpyXxh3(RensaStrings):
    """Multiply-shift permutations of 64-bit hashes: (a * h + b) mod 2^64, top 32 bits, a odd."""

    def __init__(self):
        rng = np.random.default_rng(SEED)
        self.a = rng.integers(0, 2 ** 63, PERMUTATIONS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2 ** 63, PERMUTATIONS, dtype=np.uint64)

    def sketch(self, prepared):
        out = np.empty((len(prepared), PERMUTATIONS), np.uint32)
        for i, doc in enumerate(prepared):
            h = xxh3(doc)[:, None]
            out[i] = ((h * self.a + self.b) >> np.uint64(32)).min(axis=0)
        return out


class Module(RensaStrings):
    whole_only = True  # it takes texts: there is no separate shingling step to leave out

    def prepare(self, texts):
        return list(texts)

    def sketch(self, prepared):
        return minhash.signatures(prepared, PERMUTATIONS, NGRAM)

    def from_sets(self, sets):
        return None  # the module takes texts, not sets

    def from_texts(self, texts):
        return minhash.signatures(texts, PERMUTATIONS, NGRAM)  # its own shingles: the same words() 5-grams


def candidates(folder: str) -> dict[str, object]:
    return {"datatrove MinhashDedupSignature": Datatrove(folder),
            "rensa R-MinHash, strings": RensaStrings(),
            "rensa R-MinHash, xxh3": RensaXxh3(),
            "rensa C-MinHash, strings": RensaC(),
            "datasketch MinHash.bulk, sha1": Datasketch(),
            "datasketch MinHash.bulk, xxh32": Datasketch(hashfunc=xxhash.xxh32_intdigest),
            "numpy multiply-shift, xxh3": NumpyXxh3(),
            "corpus.cleaning.minhash.signatures": Module()}


def cpu_seconds(fn, items, batch: int):
    start = time.process_time()
    for i in range(0, len(items), batch):
        fn(items[i:i + batch])
    return time.process_time() - start


def accuracy(kinds: dict, pairs: int) -> dict[str, dict[str, float]]:
    """Mean and largest |estimate - exact Jaccard| over the planted pairs, per candidate."""
    rng = random.Random(0)
    originals = distinct_originals(pairs)
    vocabulary = sorted({w for t in originals for w in t.split()})
    left, right, exact, texts = [], [], [], ([], [])
    for text in originals:
        for fraction in CHANGED:
            copy = changed(text, fraction, rng, vocabulary)
            a, b = set(shingle_strings(text)), set(shingle_strings(copy))
            left.append(a), right.append(b), exact.append(jaccard(a, b))
            texts[0].append(text), texts[1].append(copy)
    exact = np.array(exact)
    out = {}
    for name, kind in kinds.items():
        sig_a, sig_b = kind.from_sets(left), kind.from_sets(right)
        if sig_a is None:
            sig_a, sig_b = kind.from_texts(texts[0]), kind.from_texts(texts[1])
        error = (sig_a == sig_b).mean(axis=1) - exact
        out[name] = {"mean_abs_error": float(np.abs(error).mean()), "max_abs_error": float(np.abs(error).max()),
                     "mean_error": float(error.mean())}
    return out


def planted_text(mb: float) -> list[str]:
    """build_throughput's fresh text of ``mb`` MB, then a near copy (1% of words replaced) of every 4th document."""
    from build_throughput import real_documents
    docs = real_documents(int(mb * (1 << 20)))
    rng = random.Random(0)
    copies = []
    for doc in docs[::4]:
        tokens = doc.split(" ")
        for i in rng.sample(range(len(tokens)), max(1, len(tokens) // 100)):
            tokens[i] = f"w{rng.randrange(10 ** 6)}"
        copies.append(" ".join(tokens))
    return docs + copies


def _manifests(work: Path, data: Path, name: str) -> tuple[Path, Path]:
    from build_throughput import write_manifest
    plain = write_manifest(work / f"{name}.yaml", data, name)
    dedup = work / f"{name}-dedup.yaml"
    dedup.write_text(plain.read_text().replace(f"name: {name}\n", f"name: {name}-dedup\n") +
                     "dedup:\n  exact: true\n  near: {threshold: 0.8, ngram: 5, permutations: 128}\n")
    return plain, dedup


def build_overhead(mb: float, repeats: int, docs_per_shard: int) -> dict:
    import ray
    from build_throughput import UNIT_BYTES, clear, fresh_workers, write_manifest

    import pipelines.dedup
    from pipelines.build import build
    work = Path(tempfile.mkdtemp(prefix="dedup-build-"))
    sizes = {}
    for scale in (1, 4):
        data = work / f"text-x{scale}.jsonl"
        docs = planted_text(mb * scale)
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
        sizes[scale] = {"documents": len(docs), "mb": round(data.stat().st_size / 1e6, 1)}
    warm = write_manifest(work / "warm.yaml", work / "warm.jsonl", "warm")
    (work / "warm.jsonl").write_text("".join(json.dumps({"text": " ".join(f"warm{i}x{k}" for k in range(300))})
                                             + "\n" for i in range(40)))
    plain, dedup = _manifests(work, work / "text-x1.jsonl", "bench")
    times: dict[str, list[float]] = {"plain": [], "dedup": []}
    for r in range(repeats):
        for kind in (("plain", "dedup") if r % 2 == 0 else ("dedup", "plain")):
            out = work / f"out-{kind}"
            fresh_workers(warm, work / "out-warm")
            clear(out)
            result = build(plain if kind == "plain" else dedup, out, workers=2, progress=False, unit_bytes=UNIT_BYTES)
            assert result.status == "complete", result.failed
            times[kind].append(result.seconds)
    removed = json.loads((work / "out-dedup" / "dedup" / "result.json").read_text())["removed"]
    memory = {}
    pipelines.dedup.DOCS_PER_SHARD = docs_per_shard  # the driver decides the shards: the tasks need not see it
    for scale in (1, 4):
        _, manifest = _manifests(work, work / f"text-x{scale}.jsonl", f"mem{scale}")
        fresh_workers(warm, work / "out-warm")
        out = work / f"out-mem{scale}"
        clear(out)
        result = build(manifest, out, workers=2, progress=False, unit_bytes=UNIT_BYTES)
        assert result.status == "complete"
        memory[scale] = result.dedup
    ray.shutdown()
    plain_s, dedup_s = statistics.median(times["plain"]), statistics.median(times["dedup"])
    return {"inputs": sizes, "rounds": {k: [round(t, 2) for t in v] for k, v in times.items()},
            "plain_seconds": round(plain_s, 2), "dedup_seconds": round(dedup_s, 2),
            "dedup_vs_plain": round(dedup_s / plain_s, 2), "removed": removed, "memory": memory,
            "docs_per_shard": docs_per_shard}


def _synthetic_units(documents: int, per_unit: int = 2000, bands: int = 16, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2**63, (documents, bands), dtype=np.int64).astype(np.uint64)
    exact = rng.integers(0, 2**63, (documents, 2), dtype=np.int64).astype(np.uint64)
    near = rng.choice(np.arange(1, documents), documents // 10, replace=False)
    source = (rng.random(len(near)) * near).astype(np.int64)  # an earlier document
    keys[near, :12] = keys[source, :12]
    copies = rng.choice(np.arange(1, documents), documents // 50, replace=False)
    exact[copies] = exact[(rng.random(len(copies)) * copies).astype(np.int64)]
    return [{"positions": np.arange(min(per_unit, documents - start)), "exact": exact[start:start + per_unit],
             "band_keys": keys[start:start + per_unit]} for start in range(0, documents, per_unit)]


def _dict_search(units: list[dict], shard: int, shards: int) -> set:
    """The search before the rows: a shard scans every unit's keys, groups its share in dicts, pairs each bucket."""
    from itertools import combinations
    seen, pairs, buckets = {}, set(), {}
    for u, data in enumerate(units):
        positions, exact, keys = data["positions"].tolist(), data["exact"], data["band_keys"]
        for i in np.flatnonzero(exact[:, 0] % shards == shard).tolist():
            digest, key = (-1, int(exact[i, 0]), int(exact[i, 1])), (u, positions[i])
            if digest in seen:
                pairs.add((seen[digest], key))
            else:
                seen[digest] = key
        for i, band in zip(*np.nonzero(keys % np.uint64(shards) == shard)):
            buckets.setdefault((-1, int(band), int(keys[i, band])), []).append((u, positions[i]))
    for members in buckets.values():
        pairs.update(combinations(sorted(members), 2))
    return pairs


def search_grouping(documents: int, shards: int) -> dict:
    import resource
    import tracemalloc
    from corpus.cleaning.buckets import EXACT, by_shard, document_ids, group_pairs, key_rows, unit_and_position
    units = _synthetic_units(documents)
    found, seconds, peaks = {}, {}, {}

    def measured(name, step):
        """CPU seconds of ``step`` in one call, then its peak traced memory in a second (tracemalloc slows the
        allocation of every Python object, so it would weigh on the dicts far more than on the rows)."""
        start = resource.getrusage(resource.RUSAGE_SELF)
        result = step()
        end = resource.getrusage(resource.RUSAGE_SELF)
        seconds[name] = seconds.get(name, 0) + (end.ru_utime - start.ru_utime) + (end.ru_stime - start.ru_stime)
        tracemalloc.start()
        step()
        peaks[name] = max(peaks.get(name, 0), tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        return result

    old = set()
    for shard in range(shards):
        old |= measured("dicts", lambda: _dict_search(units, shard, shards))
    parts = [[] for _ in range(shards)]
    for u, data in enumerate(units):  # once per unit: its keys as rows, split by shard
        def split(u=u, data=data):
            return by_shard(key_rows(document_ids(u, data["positions"]), data["exact"], data["band_keys"]), shards)
        rows, offsets = measured("rows: split", split)
        for shard in range(shards):
            parts[shard].append(rows[offsets[shard]:offsets[shard + 1]])
    new = set()
    for shard in range(shards):
        def group(shard=shard):
            rows = np.concatenate(parts[shard])
            exact = rows["band"] == EXACT
            return np.concatenate([group_pairs(rows[exact], leaders=1), group_pairs(rows[~exact])])
        pairs = measured("rows: shards", group)
        units_, positions = unit_and_position(pairs.reshape(-1))
        new |= {(a, b) for a, b in zip(zip(units_[0::2].tolist(), positions[0::2].tolist()),
                                           zip(units_[1::2].tolist(), positions[1::2].tolist()))}
    assert new == old, f"the two searches found different pairs ({len(new)} against {len(old)})"
    rows_seconds = seconds["rows: split"] + seconds["rows: shards"]
    return {"documents": documents, "units": len(units), "shards": shards, "pairs": len(new),
            "cpu_seconds": {k: round(v, 2) for k, v in seconds.items()},
            "dicts_vs_rows": round(seconds["dicts"] / rows_seconds, 1),
            "peak_traced_mb": {k: round(v / 2**20, 1) for k, v in peaks.items()},
            "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=1268, help="documents (Bible chapters, then reference topics)")
    p.add_argument("--repeats", type=int, default=5, help="rounds; each times every candidate once, in turn")
    p.add_argument("--batch", type=int, default=256, help="documents per bulk call")
    p.add_argument("--pairs", type=int, default=60, help="originals for the accuracy pairs (x7 changed copies)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--build", type=float, metavar="MB", help="time the build with and without dedup on MB of text "
                   "(and memory at MB and 4 x MB) instead of the signature comparison")
    p.add_argument("--docs-per-shard", type=int, default=2000, help="with --build: signed documents per search shard")
    p.add_argument("--search", type=int, metavar="DOCS", help="time the search's grouping on DOCS synthetic documents")
    p.add_argument("--shards", type=int, default=4, help="with --search: shards")
    args = p.parse_args(argv)
    if args.search:
        report = search_grouping(args.search, args.shards)
        print(json.dumps(report, indent=2))
        return 0
    if args.build:
        load = os.getloadavg()[0]
        report = build_overhead(args.build, args.repeats, args.docs_per_shard)
        report.update(load_average_start=load, load_average_end=os.getloadavg()[0], cpus=os.cpu_count())
        print(json.dumps(report, indent=2))
        return 0

    texts = [c.text for c in sample_text.kjv_chapters() + sample_text.doc_topics()][:args.docs]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dedup-bench-") as tmp:
        kinds = candidates(tmp)
        for kind in kinds.values():  # first calls build tables and load tokenizers: not what is measured
            kind.sketch(kind.prepare(texts[:4]))
        prepared = {name: kind.prepare(texts) for name, kind in kinds.items()}
        whole = {name: [] for name in kinds}
        sketch = {name: [] for name in kinds}
        for _ in range(args.repeats):
            for name, kind in kinds.items():  # interleaved, so every candidate meets the same background load
                whole[name].append(cpu_seconds(lambda b, k=kind: k.sketch(k.prepare(b)), texts, args.batch))
                if not getattr(kind, "whole_only", False):
                    sketch[name].append(cpu_seconds(kind.sketch, prepared[name], args.batch))
        errors = accuracy(kinds, args.pairs)

    base = next(iter(kinds))
    rate = {n: len(texts) / statistics.median(v) for n, v in whole.items()}
    rate_sketch = {n: len(texts) / statistics.median(v) for n, v in sketch.items() if v}
    report = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "cpus": os.cpu_count(),
        "load_average_start": load, "load_average_end": os.getloadavg()[0],
        "rayon_threads": os.environ.get("RAYON_NUM_THREADS"), "python": platform.python_version(),
        "versions": {"rensa": _version("rensa"), "datasketch": _version("datasketch"),
                     "datatrove": _version("datatrove"), "xxhash": xxhash.VERSION, "numpy": np.__version__},
        "documents": len(texts), "mean_kb": round(sum(len(t.encode()) for t in texts) / len(texts) / 1024, 2),
        "permutations": PERMUTATIONS, "ngram": NGRAM, "repeats": args.repeats, "batch": args.batch,
        "signatures_per_cpu_s": {n: round(v) for n, v in rate.items()},
        "rounds": {n: [round(len(texts) / s) for s in v] for n, v in whole.items()},
        "vs_datatrove": {n: round(v / rate[base], 1) for n, v in rate.items()},
        "from_shingles_per_cpu_s": {n: round(v) for n, v in rate_sketch.items()},
        "accuracy_pairs": args.pairs * len(CHANGED), "jaccard_error": errors,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{len(texts)} documents, {report['mean_kb']} KB on average; {PERMUTATIONS} permutations, word "
          f"{NGRAM}-grams; median of {args.repeats} rounds, batches of {args.batch}; RAYON_NUM_THREADS="
          f"{report['rayon_threads']}; load average {load:.1f} at start, {report['load_average_end']:.1f} at end, "
          f"on {report['cpus']} CPUs")
    print(f"  {'':<36} {'signatures/CPU-s':>17} {'vs datatrove':>13} {'from shingles':>14} "
          f"{'|error| mean':>13} {'|error| max':>12}")
    for name in kinds:
        e = errors.get(name)
        part = f"{rate_sketch[name]:>14,.0f}" if name in rate_sketch else f"{'-':>14}"
        acc = f"{e['mean_abs_error']:>13.4f} {e['max_abs_error']:>12.4f}"
        print(f"  {name:<36} {rate[name]:>17,.0f} {rate[name] / rate[base]:>12.1f}x {part} {acc}")
    print(f"  accuracy: {report['accuracy_pairs']} pairs, {args.pairs} chapters x words changed "
          f"{', '.join(f'{f:.0%}' for f in CHANGED)}")
    return 0


def _version(name: str) -> str:
    from importlib.metadata import version
    return version(name)


if __name__ == "__main__":
    sys.exit(main())
