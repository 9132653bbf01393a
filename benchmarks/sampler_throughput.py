"""Mixture-sampler serving speed from memory-mapped shards, against a naive in-memory sampler.

    .venv/bin/python benchmarks/sampler_throughput.py                 # ~100M tokens (200 MB) of shards
    .venv/bin/python benchmarks/sampler_throughput.py --tokens 50M --seconds 1 --repeats 5

A corpus with the 13 sources of manifests/openelm.yaml, each holding tokens in
proportion to its share, is written to a temporary folder as real shards
(``corpus.store.writer.write_shard``). Token ids are random (3..31999) and chunk lengths are
drawn from 256..2600: serving speed does not depend on what the ids mean. The shards
were just written, so they are in the page cache: this measures the sampler, not the disk.

Measured in this one process (one torch thread), --repeats rounds of --seconds each, the
kinds interleaved within a round so all meet the same background load; medians printed:
- ``MixtureSampler.batches`` in pack mode and in corenet mode (L = 2048, batch 8);
- iterating the ``MixtureSampler`` itself, one sample dict at a time (what a DataLoader worker does);
- the naive baseline: documents held as Python lists, a source drawn with
  ``random.choices`` by the same shares, a random document from it, tokens appended to a
  list until L + 1, then ``torch.tensor``. It holds only --naive-tokens tokens in memory.

Tokens are counted as loss targets served (L per packed sequence; the non-padded
targets in corenet mode), per wall-clock second and per CPU second of this process (the
second is steadier on a shared machine). Also printed: the time to resume deep into the stream.
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
from itertools import islice
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corpus.manifest import load_manifest, parse_token_count  # noqa: E402
from corpus.mixing.sampler import MixtureSampler  # noqa: E402
from corpus.store.files import atomic_write_json  # noqa: E402
from corpus.store.writer import write_shard

ROOT = Path(__file__).resolve().parents[1]


def build_synthetic_corpus(out: Path, total_tokens: int, seed: int = 0) -> dict[str, int]:
    manifest = load_manifest(ROOT / "manifests" / "openelm.yaml")
    rng = np.random.default_rng(seed)
    written = {}
    for source, share in manifest.target_shares().items():
        want = max(int(total_tokens * share), 20_000)
        lengths = rng.integers(256, 2601, size=want // 1400 + 2)
        lengths = lengths[:max(2, int(np.searchsorted(np.cumsum(lengths), want)) + 1)]
        tokens = rng.integers(3, 32000, size=int(lengths.sum()), dtype=np.uint16)
        starts = np.concatenate([[0], np.cumsum(lengths)])
        tokens[starts[:-1]] = 1          # BOS
        tokens[starts[1:] - 1] = 2       # EOS
        pieces = np.array_split(np.arange(len(lengths)), max(1, len(lengths) // 2_000))
        for u, idx in enumerate(pieces):
            chunks = [tokens[starts[i]:starts[i + 1]] for i in idx]
            write_shard(out / "shards" / source / f"unit-{u:05d}", chunks, {"source": source, "synthetic": True})
        written[source] = int(lengths.sum())
    # vocab_size as a build records it: the sampler checks every served window against it
    atomic_write_json(out / "corpus.json", {"manifest": manifest.model_dump(mode="json"),
                                            "tokenizer": {"bos_id": 1, "eos_id": 2, "vocab_size": 32000},
                                            "synthetic": True})
    return written


def rate(batches, seconds: float) -> tuple[float, float]:
    """Loss targets per wall second and per CPU second drawn from an iterator of batches for ``seconds``."""
    served, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        for batch in islice(batches, 16):
            served += int((batch["labels"] != -100).sum())
    return served / (time.perf_counter() - wall), served / (time.process_time() - cpu)


def grouped(samples, size: int):
    """Per-sample dicts, counted in groups so the timing loop looks like the batched one."""
    while True:
        labels = [next(samples)["labels"] for _ in range(size)]
        yield {"labels": torch.stack(labels)}


def naive_batches(corpus: Path, shares: dict[str, float], budget: int, length: int, batch: int, seed: int = 0):
    from corpus.store.layout import source_shards
    documents = {}
    per_source = max(budget // len(shares), 1)
    for name in shares:
        docs, held = [], 0
        for shard in source_shards(corpus, name):
            for i in range(len(shard)):
                if held >= per_source:
                    break
                doc = shard.chunk(i).tolist()
                docs.append(doc)
                held += len(doc)
        documents[name] = docs
    names, weights = list(shares), list(shares.values())
    rng = random.Random(seed)
    while True:
        rows = []
        for _ in range(batch):
            window = []
            while len(window) < length + 1:
                source = rng.choices(names, weights)[0]
                window.extend(rng.choice(documents[source]))
            rows.append(torch.tensor(window[:length + 1]))
        batch_tensor = torch.stack(rows)
        yield {"input_ids": batch_tensor[:, :-1], "labels": batch_tensor[:, 1:]}


KINDS = (("pack_batches", "MixtureSampler.batches, pack"),
         ("corenet_batches", "MixtureSampler.batches, corenet"),
         ("pack_samples", "MixtureSampler per-sample iteration, pack"),
         ("naive", "naive: Python lists, random document"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="100M", help="synthetic corpus size in tokens (2 bytes each)")
    p.add_argument("--naive-tokens", default="5M", help="tokens the naive baseline holds as Python lists")
    p.add_argument("--seconds", type=float, default=1.5, help="wall time per measurement")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each round measures every kind once, in turn")
    p.add_argument("--sequence-length", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    L, B = args.sequence_length, args.batch_size
    torch.set_num_threads(1)  # one process, one thread: the sampler's own cost

    with tempfile.TemporaryDirectory(prefix="sampler-bench-") as tmp:
        corpus = Path(tmp)
        t0 = time.perf_counter()
        written = build_synthetic_corpus(corpus, parse_token_count(args.tokens))
        build_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        pack = MixtureSampler(corpus, sequence_length=L, batch_size=B)
        open_s = time.perf_counter() - t0
        shares = {n: v["target"] for n, v in pack.shares().items()}
        t0 = time.perf_counter()
        naive = naive_batches(corpus, shares, parse_token_count(args.naive_tokens), L, B)
        next(naive)
        naive_load_s = time.perf_counter() - t0
        streams = {"pack_batches": pack.batches(),
                   "corenet_batches": MixtureSampler(corpus, sequence_length=L, mode="corenet", batch_size=B).batches(),
                   "pack_samples": grouped(iter(MixtureSampler(corpus, sequence_length=L)), B),
                   "naive": naive}
        runs = {k: [] for k, _ in KINDS}
        for _ in range(args.repeats):
            for kind, _ in KINDS:  # interleaved, so every kind meets the same background load
                runs[kind].append(rate(streams[kind], args.seconds))

        # Resume deep into the stream: the state after everything the pack run served, then the first batch.
        state = pack.state_dict()
        t0 = time.perf_counter()
        resumed = MixtureSampler(corpus, sequence_length=L, batch_size=B)
        resumed.load_state_dict(state)
        next(resumed.batches())
        resume_s = time.perf_counter() - t0
        achieved = pack.shares()

    wall = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    cpu = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
    report = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0], "python": platform.python_version(), "torch": torch.__version__,
        "corpus_tokens": sum(written.values()), "corpus_build_s": round(build_s, 2),
        "sequence_length": L, "batch_size": B, "seconds": args.seconds, "repeats": args.repeats,
        "tokens_per_wall_s": {k: round(v) for k, v in wall.items()},
        "tokens_per_cpu_s": {k: round(v) for k, v in cpu.items()},
        "vs_naive_wall": {k: round(wall[k] / wall["naive"], 1) for k in wall if k != "naive"},
        "vs_naive_cpu": {k: round(cpu[k] / cpu["naive"], 1) for k in cpu if k != "naive"},
        "open_s": round(open_s, 3), "resume_after_sequences": state["mixture"]["sequences"],
        "resume_s": round(resume_s, 3), "naive_load_s": round(naive_load_s, 2),
        "max_share_error_pack": max(abs(v["achieved"] - v["target"]) for v in achieved.values()),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"synthetic corpus: {report['corpus_tokens'] / 1e6:.1f}M tokens in 13 sources (built in {build_s:.1f} s); "
          f"L={L}, batch {B}; median of {args.repeats} x {args.seconds:g} s; load average {report['load_average']:.1f} "
          f"on {report['cpus']} CPUs")
    print(f"  {'':<44} {'tokens/s (wall)':>16} {'tokens/CPU-s':>14} {'vs naive (wall, CPU)':>22}")
    for kind, label in KINDS:
        ratio = "" if kind == "naive" else f"{report['vs_naive_wall'][kind]:>9.1f}x {report['vs_naive_cpu'][kind]:>8.1f}x"
        print(f"  {label:<44} {wall[kind] / 1e6:>15.2f}M {cpu[kind] / 1e6:>13.2f}M {ratio:>22}")
    print(f"  open sampler {open_s:.3f} s; resume after {report['resume_after_sequences']:,} sequences and serve a "
          f"batch {resume_s:.3f} s; largest |achieved - target| share {report['max_share_error_pack']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
