"""Build throughput on ~50 MB of real text: the build with 1 and 2 workers against bare
sentencepiece encoding of the same chunks and datatrove's LocalPipelineExecutor doing the same steps.

    .venv/bin/python benchmarks/build_throughput.py [--mb 50] [--repeats 3] [--text fresh|repeated] [--s3]

A third baseline, bare encoding split over 2 processes, shows how much the machine itself
can gain from a second process at the time of the run (on a shared machine, often little).
A fourth, the build's own segment-cache encoder (:class:`corpus.tokenizer.segments.SegmentEncoder`)
alone in one process from an empty cache, shows what the encoder gains over ``sp.encode``.

Text, as JSON lines, no document twice (``--text fresh``, the default): Python
standard-library sources, the King James Bible and Python's reference topics (12.8 MB),
then the Python sources of the packages installed in this environment, sorted by path,
until the size is reached; mostly code. ``--text repeated`` repeats the first three in
order instead (the text of earlier runs): the segment cache then meets every segment
again after 12.8 MB, which deduplicated corpora do not do, so it flatters the build.

Our build reads one file cut into work units; datatrove reads the same lines split over 8
files (its reader gives each task whole files). Each of our timed builds gets fresh Ray
workers (Ray restarted, outside the timing, then a small warm-up build on other text), so
no encoder cache survives from an earlier run; datatrove starts fresh processes per run.
Medians over ``--repeats``.

``--s3`` measures instead the build to an object store against the build to local disk: 2
workers each, the same text, one to a folder and one to ``s3://`` on moto's S3 server, which
this process starts on a free local port (``ThreadedMotoServer``; the ``AWS_*`` variables that
point s3fs at it are set here before Ray starts, and the build sends them to its tasks). The
server runs on the same CPUs as the build, which a real store does not. The two take turns;
each timed build gets fresh Ray workers, warmed up by a small build to the same kind of place.

datatrove's pipeline: JsonlReader -> NFC + 2048-word split -> the min-characters filter ->
DocumentTokenizer (the exported tokenizer.json, BOS and EOS added, no shuffling; its
tokenizer threads left as datatrove sets them, so it may use more than one per worker). It has
no min-tokens filter: that would need a second encoding, so it is left out in its favour.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from corpus.manifest import TextRules  # noqa: E402
from corpus.text.rules import CoreNetRules  # noqa: E402
from corpus.tokenizer.tokenizer import Tokenizer  # noqa: E402

RULES = CoreNetRules(TextRules())
UNIT_BYTES = 4 << 20
DATATROVE_FILES = 8


def _installed_sources():
    """Python sources of the installed packages (this environment's site-packages), sorted by path."""
    import sysconfig
    root = Path(sysconfig.get_paths()["purelib"])
    for path in sorted(root.rglob("*.py"), key=lambda q: q.relative_to(root).as_posix()):
        if path.stat().st_size > 1 << 20:
            continue
        try:
            yield path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def real_documents(target_bytes: int, text: str = "fresh") -> list[str]:
    from corpus.mirror.text import doc_topics, kjv_chapters, stdlib_sources
    pool = [p.text for p in stdlib_sources()] + [p.text for p in kjv_chapters()] + [p.text for p in doc_topics()]
    if text == "repeated":
        source = (pool[i % len(pool)] for i in range(10 ** 9))
    else:
        from itertools import chain
        source = chain(pool, _installed_sources())
    docs, size, seen = [], 0, set()
    for doc in source:
        if size >= target_bytes:
            return docs
        if text == "fresh" and (not doc.strip() or doc in seen):
            continue
        seen.add(doc)
        docs.append(doc)
        size += len(doc.encode("utf-8"))
    raise SystemExit(f"only {size / 1e6:.1f} MB of distinct text here; ask for less with --mb")


def write_inputs(work: Path, docs: list[str]) -> tuple[Path, Path]:
    lines = [json.dumps({"text": t}) + "\n" for t in docs]
    one = work / "input" / "book.jsonl"
    one.parent.mkdir(parents=True)
    one.write_text("".join(lines))
    many = work / "dt-input"
    many.mkdir()
    per = -(-len(lines) // DATATROVE_FILES)
    for k in range(DATATROVE_FILES):
        (many / f"part-{k:02d}.jsonl").write_text("".join(lines[k * per:(k + 1) * per]))
    return one, many


def write_manifest(path: Path, data: Path, name: str) -> Path:
    path.write_text(f"name: {name}\nsources:\n  - name: text\n    group: redpajama\n"
                    f"    upstream: {{files: [\"{data}\"]}}\n    format: jsonl\n    tokens: 1M\n")
    return path


def chunks_for_bare_encoding(docs: list[str]) -> list[str]:
    """The chunks the build encodes: NFC, split, and past the min-characters rule."""
    return [c for d in docs for c in RULES.split(RULES.normalize(d)) if RULES.has_enough_chars(c)]


def timed_batches(encode, chunks: list[str]) -> tuple[int, float, float]:
    """``encode`` over the chunks in batches of about 1 MB of text, like the build's: tokens, wall and CPU s."""
    tokens, batch, size = 0, [], 0
    start, cpu = time.perf_counter(), time.process_time()
    for c in chunks:
        batch.append(c)
        size += len(c)
        if size >= 1 << 20:
            tokens += sum(map(len, encode(batch)))
            batch, size = [], 0
    if batch:
        tokens += sum(map(len, encode(batch)))
    return tokens, time.perf_counter() - start, time.process_time() - cpu


def bare_encoding(tokenizer: Tokenizer, chunks: list[str]) -> tuple[int, float, float]:
    """sp.encode in one process, one thread."""
    return timed_batches(lambda batch: tokenizer.sp.encode(batch, add_bos=True, add_eos=True, num_threads=1), chunks)


def segment_encoding(tokenizer: Tokenizer, chunks: list[str]) -> tuple[int, float, float, float]:
    """The build's encoder alone, from an empty cache; last: share of segments missed."""
    from corpus.tokenizer.segments import SegmentEncoder
    enc = SegmentEncoder(tokenizer.model_bytes, tokenizer.bos_id, tokenizer.eos_id)
    return (*timed_batches(enc.encode, chunks), enc.misses / max(1, enc.lookups))


def differing_chunks(tokenizer: Tokenizer, chunks: list[str]) -> int:
    """Chunks whose ids from the segment-cache encoder differ from ``sp.encode``'s (should be none)."""
    from corpus.tokenizer.segments import SegmentEncoder
    enc = SegmentEncoder(tokenizer.model_bytes, tokenizer.bos_id, tokenizer.eos_id)
    differ = 0
    for i in range(0, len(chunks), 64):
        group = chunks[i:i + 64]
        want = tokenizer.sp.encode(group, add_bos=True, add_eos=True, num_threads=1)
        differ += sum(got.tolist() != ids for got, ids in zip(enc.encode(group), want))
    return differ


def _encode_share(model_bytes: bytes, chunks: list[str], barrier, results) -> None:
    tokenizer = Tokenizer("default", model_bytes=model_bytes)
    barrier.wait()  # loading is done: the clock starts for every process at once
    results.put(bare_encoding(tokenizer, chunks)[0])


def bare_encoding_parallel(tokenizer: Tokenizer, chunks: list[str], processes: int = 2) -> tuple[int, float, float]:
    """The machine's own parallel headroom: bare encoding of the same chunks split over processes."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [ctx.Process(target=_encode_share, args=(tokenizer.model_bytes, chunks[i::processes], barrier, results))
             for i in range(processes)]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    tokens = sum(results.get() for _ in procs)
    seconds = time.perf_counter() - start
    for p in procs:
        p.join()
    return tokens, seconds, float("nan")


def clear(out: str | Path) -> None:
    """Remove a corpus left by an earlier run: a folder, or every object under an ``s3://`` prefix."""
    from corpus.store import location
    root = location.at(out)
    if isinstance(root, Path):
        shutil.rmtree(root, ignore_errors=True)
    elif root.fs.exists(root.path):
        root.fs.rm(root.path, recursive=True)


def fresh_workers(warm: Path, out: str | Path) -> None:
    """Restart Ray as the CLI starts it and run a small build on other text: workers up, caches empty.

    ``out`` on a store warms the workers that a build to a store gets (Ray starts other workers for
    tasks that carry the store's settings), and their clients of the store.
    """
    import ray

    from pipelines.build import build
    from pipelines.runner import start_ray
    ray.shutdown()
    start_ray(2, None)  # the local Ray the CLI starts (2 CPUs, workers at niceness 0)
    clear(out)
    assert build(warm, out, workers=2, progress=False, unit_bytes=32 << 10).status == "complete"


def our_build(manifest: Path, out: str | Path, workers: int) -> tuple[int, float, float]:
    """Tokens written, wall seconds of build() and the CPU seconds its workers spent on units."""
    from corpus.store.layout import CorpusDir
    from pipelines.build import build
    clear(out)
    result = build(manifest, out, workers=workers, progress=False, unit_bytes=UNIT_BYTES)
    assert result.status == "complete", result.failed
    cpu = sum(entry["cpu_seconds"] for entry in CorpusDir(out).ledger_entries().values())
    return result.corpus["totals"]["tokens"], result.seconds, cpu


# ---------------------------------------------------------------- to an S3 server, against local disk

S3_BUCKET = "bench-corpora"


def start_s3_server():
    """moto's S3 server on a free local port, in this process, with a bucket; the ``AWS_*`` variables of this
    process point s3fs at it (and the build hands them to its Ray tasks)."""
    import logging
    import socket

    import fsspec
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_CONFIG_FILE=os.devnull,
                      AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(S3_BUCKET)
    return server


def store_comparison(manifest: Path, warm: Path, work: Path, repeats: int) -> int:
    """The build with 2 workers to local disk and to the S3 server, taking turns; the ratio S3 / local."""
    import ray
    server = start_s3_server()
    places = {"local": work / "out-local", "s3": f"s3://{S3_BUCKET}/out-s3"}
    warm_out = {"local": work / "out-warm", "s3": f"s3://{S3_BUCKET}/out-warm"}
    runs: dict[str, list[float]] = {k: [] for k in places}
    per_cpu: dict[str, list[float]] = {k: [] for k in places}
    counts: dict[str, int] = {}
    print(f"S3 server: moto {_version('moto')} at {os.environ['AWS_ENDPOINT_URL']}; s3fs {_version('s3fs')}")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    try:
        for r in range(repeats):
            for key in (("local", "s3") if r % 2 == 0 else ("s3", "local")):
                fresh_workers(warm, warm_out[key])
                tokens, seconds, cpu = our_build(manifest, places[key], 2)
                counts[key] = tokens
                runs[key].append(tokens / seconds)
                per_cpu[key].append(tokens / cpu)
                print(f"  run {r + 1} {key:<6} {tokens:>12,} tokens {seconds:7.2f} s "
                      f"{tokens / seconds / 1e6:6.3f} M tokens/s  (load {os.getloadavg()[0]:.1f})", flush=True)
                clear(places[key])
    finally:
        ray.shutdown()
        server.stop()
    assert counts["local"] == counts["s3"], counts
    med = {k: statistics.median(v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(v) for k, v in per_cpu.items()}
    print("\nmedian tokens/s (wall clock; per CPU-second of the build's workers)")
    labels = {"local": "build, 2 workers, to local disk", "s3": "build, 2 workers, to the S3 server"}
    for k in places:
        print(f"  {labels[k]:<36} {med[k] / 1e6:6.3f} M  {med_cpu[k] / 1e6:6.3f} M per CPU-s  ({counts[k]:,} tokens)")
    ratio = med["s3"] / med["local"]
    print(f"\nratio, wall clock (target)\n  build to S3 / build to local disk   {ratio:5.2f}x  (>= 0.8x) "
          f"{'ok' if ratio >= 0.8 else 'MISSED'}")
    print(f"  (per CPU-second of the workers: {med_cpu['s3'] / med_cpu['local']:.2f}x)")
    return 0 if ratio >= 0.8 else 1


def _version(package: str) -> str:
    from importlib.metadata import version
    return version(package)


# ---------------------------------------------------------------- datatrove, same steps

def _datatrove_split_step():
    from datatrove.data import Document
    from datatrove.pipeline.base import PipelineStep

    class SplitWords(PipelineStep):
        name = "NFC + 2048-word chunks"

        def run(self, data, rank: int = 0, world_size: int = 1):
            for doc in data:
                for i, chunk in enumerate(RULES.split(RULES.normalize(doc.text))):
                    yield Document(text=chunk, id=f"{doc.id}/{i}")
    return SplitWords()


def _enough_chars(doc) -> bool:
    return RULES.has_enough_chars(doc.text)


def datatrove_build(inputs: Path, tokenizer_json: Path, out: Path) -> tuple[int, float]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import LambdaFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from loguru import logger
    from tokenizers.processors import TemplateProcessing
    logger.remove()  # datatrove's per-task stats would bury the table
    logger.add(sys.stderr, level="WARNING")
    shutil.rmtree(out, ignore_errors=True)
    tokenize = DocumentTokenizer(output_folder=str(out / "tokens"), tokenizer_name_or_path=str(tokenizer_json),
                                 shuffle_documents=False, save_final_metadata=False)
    tokenize.post_processor = TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    executor = LocalPipelineExecutor(
        pipeline=[JsonlReader(str(inputs)), _datatrove_split_step(), LambdaFilter(_enough_chars), tokenize],
        tasks=DATATROVE_FILES, workers=2, logging_dir=str(out / "logs"), skip_completed=False)
    # its tasks log every step to stderr (also kept in out/logs): point the inherited stderr at a file meanwhile
    sys.stderr.flush()
    saved = os.dup(2)
    with open(out.parent / "datatrove-stderr.log", "ab") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            start = time.perf_counter()
            executor.run()
            seconds = time.perf_counter() - start
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    tokens = sum(p.stat().st_size for p in (out / "tokens").rglob("*.ds")) // 2
    return tokens, seconds, float("nan")  # its pool's CPU time is not visible from here


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--text", choices=("fresh", "repeated"), default="fresh")
    ap.add_argument("--check-ids", action="store_true",
                    help="also compare the segment-cache encoder's ids with sp.encode's on every chunk")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip-datatrove", action="store_true")
    ap.add_argument("--s3", action="store_true",
                    help="only the build with 2 workers to local disk against the same build to an S3 server "
                         "(moto's, started here)")
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="build-throughput-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    docs = real_documents(int(args.mb * 1e6), args.text)
    one_file, many_files = write_inputs(work, docs)
    manifest = write_manifest(work / "bench.yaml", one_file, "bench")
    warm = write_manifest(work / "warm.yaml", work / "warm.jsonl", "warm")
    warm_text = [" ".join(f"warm-up word{i}x{k}" for k in range(200)) for i in range(40)]  # not the timed text
    (work / "warm.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in warm_text))
    if args.s3:
        print(f"input ({args.text}): {one_file.stat().st_size / 1e6:.1f} MB, {len(docs):,} documents; "
              f"units of {UNIT_BYTES >> 20} MB; {os.cpu_count()} CPUs")
        code = store_comparison(manifest, warm, work, args.repeats)
        shutil.rmtree(work, ignore_errors=True)
        return code
    tokenizer = Tokenizer()
    tokenizer_json = tokenizer.export(work / "tokenizer") / "tokenizer.json"
    chunks = chunks_for_bare_encoding(docs)
    print(f"input ({args.text}): {one_file.stat().st_size / 1e6:.1f} MB, {len(docs):,} documents, "
          f"{len(chunks):,} chunks past the min-characters rule; units of {UNIT_BYTES >> 20} MB; "
          f"{os.cpu_count()} CPUs")

    if args.check_ids:
        print(f"chunks whose ids differ from sp.encode's: {differing_chunks(tokenizer, chunks):,} "
              f"of {len(chunks):,}", flush=True)

    import ray
    t = time.perf_counter()
    fresh_workers(warm, work / "out-warm")
    print(f"ray.init(num_cpus=2) + warm-up build: {time.perf_counter() - t:.1f} s (before each build, not counted)")

    runs: dict[str, list[float]] = {"bare": [], "seg": [], "bare2": [], "w1": [], "w2": [], "datatrove": []}
    per_cpu: dict[str, list[float]] = {"bare": [], "seg": [], "w1": [], "w2": []}
    counts: dict[str, int] = {}
    missed: list[float] = []
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    for r in range(args.repeats):
        for key, fn in (("bare", lambda: bare_encoding(tokenizer, chunks)),
                        ("seg", lambda: segment_encoding(tokenizer, chunks)),
                        ("bare2", lambda: bare_encoding_parallel(tokenizer, chunks)),
                        ("w1", lambda: our_build(manifest, work / "out-w1", 1)),
                        ("w2", lambda: our_build(manifest, work / "out-w2", 2)),
                        ("datatrove", lambda: datatrove_build(many_files, tokenizer_json, work / "out-dt"))):
            if key == "datatrove" and args.skip_datatrove:
                continue
            if key in ("w1", "w2") and r + (key == "w2") > 0:
                fresh_workers(warm, work / "out-warm")
            tokens, seconds, cpu, *extra = fn()
            missed += extra
            counts[key] = tokens
            runs[key].append(tokens / seconds)
            if key in per_cpu:
                per_cpu[key].append(tokens / cpu)
            print(f"  run {r + 1} {key:<10} {tokens:>12,} tokens {seconds:7.2f} s {tokens / seconds / 1e6:6.3f} M tokens/s"
                  f"  (load {os.getloadavg()[0]:.1f})", flush=True)
    ray.shutdown()
    med = {k: statistics.median(v) for k, v in runs.items() if v}
    med_cpu = {k: statistics.median(v) for k, v in per_cpu.items() if v}

    print("\nmedian tokens/s (wall clock; per CPU-second of the encoding process or the build's workers)")
    labels = {"bare": "bare sp.encode, 1 process", "seg": "segment-cache encoder alone, 1 process",
              "bare2": "bare sp.encode, 2 processes",
              "w1": "build, 1 worker", "w2": "build, 2 workers",
              "datatrove": "datatrove LocalPipelineExecutor, 2 workers"}
    for k, v in med.items():
        cpu_note = f"  {med_cpu[k] / 1e6:6.3f} M per CPU-s" if k in med_cpu else ""
        print(f"  {labels[k]:<44} {v / 1e6:6.3f} M{cpu_note}  ({counts[k]:,} tokens)")
    checks = [("build 1 worker / bare encoding", med["w1"] / med["bare"], 0.85),
              ("build 2 workers / build 1 worker", med["w2"] / med["w1"], 1.6)]
    if "datatrove" in med:
        checks.append(("build 2 workers / datatrove", med["w2"] / med["datatrove"], 2.0))
    print(f"  (per CPU-second, build workers / bare encoding: {med_cpu['w1'] / med_cpu['bare']:.2f}x; "
          f"the machine's own 2-process scaling of bare encoding: {med['bare2'] / med['bare']:.2f}x)")
    print(f"  (segment-cache encoder / bare sp.encode: {med['seg'] / med['bare']:.2f}x, starting empty, "
          f"{missed[0]:.1%} of segments not yet cached; build 1 worker / this encoder alone: "
          f"{med['w1'] / med['seg']:.2f}x)")
    print("\nratios, wall clock (target)")
    ok = True
    for name, ratio, target in checks:
        ok &= ratio >= target
        print(f"  {name:<36} {ratio:5.2f}x  (>= {target}x) {'ok' if ratio >= target else 'MISSED'}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
