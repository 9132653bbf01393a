"""Live-pipeline throughput: what `elm-train --stream` gets from the pipeline, against a build and built shards.

    .venv/bin/python benchmarks/stream_throughput.py [--mb 50] [--repeats 3] [--workers 2]

Two comparisons in one run, on the same input and the same worker count:

(a) a trainer-like consumer: a loop that pulls (B, L) batches from a ``MixtureSampler``, doing no
    model work, fed by the live pipeline (the train split's sampler of ``pipelines.live_corpus.LiveCorpus``,
    whole units held out, as ``elm-train --stream`` opens it) against the same loop on the shards a build of
    the same input wrote. Both serve the same number of tokens, about 80% of one pass of the
    stream's train split, so the live loop never wraps into a second pass. The live time
    includes the stream's start (planning, the first units tokenizing), as a trainer meets it.
(b) the pipeline alone: every chunk of the source's stream (no split) drained by a loop that only
    counts them, against ``pipelines.build.build`` writing the same units to shards; tokens/s
    per worker (wall clock / workers). Target: pipeline >= 0.9x build.

Input: build_throughput.py's synthetic mirror (``--text fresh``): Python standard-library
sources, the King James Bible, Python's reference topics, then installed packages' sources,
as one JSON-lines file of ``--mb`` MB, cut into work units of 4 MB, one source. Not the
offline sample mirror: it is too small for the timing not to be start-up.

Each timed build, pipeline or live consumer gets fresh Ray workers (Ray restarted outside the
timing, then a small warm-up build on other text), as build_throughput.py does. The four kinds
take turns, in reverse order every other round; medians over ``--repeats`` rounds. The live
loop stops with units still in flight; Ray's restart before the next run ends them, and Ray
may log "Failed to push error to driver" for them.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_throughput import UNIT_BYTES, clear, fresh_workers, real_documents, write_manifest  # noqa: E402

KINDS = (("build", "build, shards to local disk"),
         ("pipeline", "live pipeline, chunks drained"),
         ("live", "trainer-like loop on live streams"),
         ("shards", "trainer-like loop on built shards"))


def timed_build(manifest: Path, out: Path, workers: int) -> tuple[int, float]:
    from pipelines.build import build
    clear(out)
    result = build(manifest, out, workers=workers, progress=False, unit_bytes=UNIT_BYTES)
    assert result.status == "complete", result.failed
    tokens = result.corpus["totals"]["tokens"]
    clear(out)
    return tokens, result.seconds


def stream_tokens(manifest: Path, workers: int, split: str | None = None) -> int:
    """Tokens of one pass of the one source's stream of ``split`` (None: every unit), read in shard order through
    one feed started 2 units per worker ahead, on the Ray this process has."""
    from corpus.manifest import load_manifest
    from corpus.mixing.sampler import DEFAULT_VAL_FRACTION
    from pipelines.stream import FedUnits, open_feed, stream_key, stream_units
    m = load_manifest(manifest)
    key = stream_key("text", split or "all")
    units = stream_units(m, "text", False, UNIT_BYTES, split=split, val_fraction=DEFAULT_VAL_FRACTION)
    feed, _ = open_feed(m, {key: units}, {key: 2 * workers})
    return sum(len(c) for chunks in FedUnits(feed, key)(0, 0) for c in chunks)


def drained_pipeline(manifest: Path, workers: int) -> tuple[int, float]:
    """Every chunk of the one source, in shard order, counted and dropped."""
    start = time.perf_counter()
    tokens = stream_tokens(manifest, workers)
    return tokens, time.perf_counter() - start


def live_sampler(manifest: Path, workers: int, length: int, batch: int):
    """The sampler `elm-train --stream` opens for rank 0 of 1 (pipelines/live_corpus.py), at this benchmark's unit
    size: the train split's units through one feed, started 2 units per worker ahead. The feed lives until Ray
    restarts."""
    import torch

    from corpus.mixing.corpus_source import Sampling
    from model.train.distributed import Cluster
    from pipelines.live_corpus import LiveCorpus
    corpus = LiveCorpus.open(str(manifest), workers=workers, unit_bytes=UNIT_BYTES)
    alone = Cluster(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    return corpus.sampler("train", alone, Sampling(length, batch_size=batch))


def consume(make_sampler, tokens_wanted: int) -> tuple[int, float]:
    """Open the sampler and pull batches until ``tokens_wanted`` input tokens have been served; no model work."""
    start, served = time.perf_counter(), 0
    batches = make_sampler().batches()
    while served < tokens_wanted:
        served += next(batches)["input_ids"].numel()
    return served, time.perf_counter() - start


def train_split_tokens(manifest: Path, workers: int) -> int:
    """Tokens in the train split of the live stream (all units but the held-out ones), counted once, untimed."""
    return stream_tokens(manifest, workers, "train")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=50, help="size of the synthetic input text")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="Ray workers for the build and the pipeline alike")
    ap.add_argument("--sequence-length", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    from pipelines.runner import require_token_auth
    require_token_auth()  # Ray reads RAY_AUTH_MODE when imported
    import ray
    import torch
    torch.set_num_threads(1)  # the consumer is one process, one thread, as sampler_throughput.py measures it
    W, L, B = args.workers, args.sequence_length, args.batch_size

    work = Path(args.workdir or tempfile.mkdtemp(prefix="stream-throughput-"))
    shutil.rmtree(work, ignore_errors=True)
    (work / "input").mkdir(parents=True)
    docs = real_documents(int(args.mb * 1e6))
    data = work / "input" / "book.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    manifest = write_manifest(work / "bench.yaml", data, "bench")
    warm = write_manifest(work / "warm.yaml", work / "warm.jsonl", "warm")
    warm_text = [" ".join(f"warm-up word{i}x{k}" for k in range(200)) for i in range(40)]  # not the timed text
    (work / "warm.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in warm_text))

    # untimed: the shards the trainer-like loop reads, and the size of the stream's train split
    fresh_workers(warm, work / "out-warm")
    from pipelines.build import build
    built = work / "out-shards"
    assert build(manifest, built, workers=W, progress=False, unit_bytes=UNIT_BYTES).status == "complete"
    train_tokens = train_split_tokens(manifest, W)
    want = int(0.8 * train_tokens) // (L * B) * (L * B)
    from corpus.manifest import load_manifest
    from pipelines.plan import plan_source, source_files
    m = load_manifest(manifest)
    n_units = len(plan_source(m.source("text"), source_files(m, m.source("text"), False, None), UNIT_BYTES))
    print(f"input (synthetic mirror, build_throughput.py --text fresh): {data.stat().st_size / 1e6:.1f} MB, "
          f"{len(docs):,} documents, {n_units} units of {UNIT_BYTES >> 20} MB; {W} workers; {os.cpu_count()} CPUs; "
          f"torch {torch.__version__}")
    print(f"trainer-like loop: L={L}, batch {B}, {want:,} tokens per run "
          f"(80% of the {train_tokens:,} tokens of the stream's train split)")
    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)

    from corpus.mixing.sampler import MixtureSampler
    shards = functools.partial(MixtureSampler, built, L, batch_size=B)
    run = {"build": lambda: timed_build(manifest, work / "out-build", W),
           "pipeline": lambda: drained_pipeline(manifest, W),
           "live": lambda: consume(lambda: live_sampler(manifest, W, L, B), want),
           "shards": lambda: consume(shards, want)}
    rates: dict[str, list[float]] = {k: [] for k, _ in KINDS}
    counts: dict[str, set[int]] = {k: set() for k, _ in KINDS}
    for r in range(args.repeats):
        order = [k for k, _ in KINDS][::(1 if r % 2 == 0 else -1)]
        for key in order:
            if key != "shards":
                fresh_workers(warm, work / "out-warm")
            tokens, seconds = run[key]()
            counts[key].add(tokens)
            rates[key].append(tokens / seconds)
            print(f"  run {r + 1} {key:<9} {tokens:>12,} tokens {seconds:7.2f} s "
                  f"{tokens / seconds / 1e6:7.3f} M tokens/s  (load {os.getloadavg()[0]:.1f})", flush=True)
    ray.shutdown()
    assert counts["build"] == counts["pipeline"], counts  # the pipeline yields exactly what the build writes
    med = {k: statistics.median(v) for k, v in rates.items()}

    print(f"\nmedian tokens/s (wall clock), {args.repeats} rounds")
    print(f"  {'':<36} {'tokens/s':>10} {'per worker':>11}   rounds")
    for key, label in KINDS:
        per = f"{med[key] / W / 1e6:10.3f}M" if key in ("build", "pipeline") else f"{'':>11}"
        print(f"  {label:<36} {med[key] / 1e6:9.3f}M {per}   " + ", ".join(f"{v / 1e6:.3f}M" for v in rates[key]))
    consumer = med["live"] / med["shards"]
    pipeline = med["pipeline"] / med["build"]
    print("\nratios of medians, wall clock (target)")
    print(f"  {'trainer-like loop, live / built shards':<44} {consumer:6.3f}x  (none: the shards are the ceiling)")
    print(f"  {'trainer-like loop, live / pipeline drained':<44} {med['live'] / med['pipeline']:6.3f}x  (none)")
    ok = pipeline >= 0.9
    print(f"  {'pipeline / build, tokens/s per worker':<44} {pipeline:6.3f}x  (>= 0.9x) {'ok' if ok else 'MISSED'}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
