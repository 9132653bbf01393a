"""Planning and the resume scan at the full OpenELM scale take seconds and bounded memory.

    .venv/bin/python benchmarks/plan_scale.py [--units 10000 100000] [--repeat 3] [--work DIR] [--keep]

Simulated upstream, no network: every source of ``manifests/openelm.yaml`` gets its real file
count (8,667 files in all: RefinedWeb's 5,534 parquet files, RedPajama's 1,225 JSON-lines
files, the Pile's 1,650 parquet files, Dolma's 258 gzip files) with upstream-like names;
each file holds ``tokens x B / files`` bytes of text (x0.8..1.2, fixed per file), B bytes per
token solved so that the full mix plans to the largest ``--units`` (B is about 5 for 100k
units, about what UTF-8 text with its JSON or parquet framing takes per LLaMA token). A
smaller size is the same mix scaled down: that fraction of every source's files and tokens.
Parquet files have row groups of 8 MB; a gzip file is a quarter of its text. The planner's
three upstream calls (list the files, a file's size, a parquet footer's row groups) are
replaced by these numbers; everything else is the build's own code.

For each size, in fresh processes, each step's median over ``--repeat`` processes (wall seconds;
memory is the peak RSS above the process's RSS before the step, from VmHWM, reset before each step):

- plan: ``plan_build`` over the 13 sources; storing ``plan.json`` as the first build does;
  reading it back into work units, as every rerun does first;
- resume scan over a corpus folder whose ledger holds an entry for every unit (entries
  shaped like the worker's, with a .bin/.idx/sidecar file per unit, empty: no step reads
  them): which units are done (the build's check: one listing of the ledger); ``build()``
  run again on the finished corpus, end to end (plan read and checked, stale temporaries
  swept, the ledger listed, corpus.json assembled from every ledger entry and written; no
  unit is pending, so no Ray starts).

The smallest size is the baseline: the table gives each step's time per unit against it
(1.00x: linear; above: worse than linear). Upstream latency is not in these numbers: on the
real upstream, listing and the 7,184 parquet footers and 1,483 sizes cost a request each,
16 at a time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MANIFEST = ROOT / "manifests" / "openelm.yaml"
ROW_GROUP_BYTES = 8 << 20
GZIP_RATIO = 4


# ---------------------------------------------------------------- measuring

def _rss_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> float:
    """Reset VmHWM to the current RSS (Linux: /proc/self/clear_refs); return the RSS now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _rss_mb("VmRSS:")


def step(name: str, results: dict, fn):
    """Run ``fn()``, record its wall seconds and peak RSS growth under ``name``; return its result."""
    before = reset_peak()
    t0 = time.perf_counter()
    value = fn()
    results[name] = {"seconds": time.perf_counter() - t0, "peak_mb": _rss_mb("VmHWM:") - before}
    return value


# ---------------------------------------------------------------- the simulated upstream

def scaled(source, fraction: float) -> tuple[int, float]:
    """A source's files and tokens in the mix at ``fraction`` of its full size (the same shapes, fewer files)."""
    return max(1, round(source.files * fraction)), source.tokens * fraction


def simulated_files(manifest, bytes_per_token: float, fraction: float) -> dict[str, list[tuple[str, int]]]:
    """Per source: (uri, bytes of text) of each of its files."""
    rng = random.Random(0)
    out = {}
    for s in manifest.sources:
        n, tokens = scaled(s, fraction)
        if s.upstream.files:
            names = [s.upstream.files[0].replace("*", f"{i:05d}-of-{n:05d}") for i in range(n)]
        else:
            base = s.upstream.listing.rsplit("/", 1)[0] + "/" + s.upstream.match.strip("/")
            names = [f"{base}/{s.name}-{i:05d}.{s.format}" for i in range(n)]
        mean = tokens * bytes_per_token / n
        out[s.name] = [(uri, int(mean * rng.uniform(0.8, 1.2))) for uri in names]
    return out


def estimated_units(manifest, bytes_per_token: float, unit_bytes: int) -> int:
    """Units of the full mix, about (the planner's rules without the per-file jitter)."""
    from pipelines.plan import COMPRESSED_EXPANSION, MAX_COMPRESSED_PARTS
    total = 0
    for s in manifest.sources:
        per_file = s.tokens * bytes_per_token / s.files
        if s.format == "json.gz":
            total += s.files * min(MAX_COMPRESSED_PARTS, max(1, math.ceil(per_file / GZIP_RATIO * COMPRESSED_EXPANSION
                                                                          / unit_bytes)))
        else:
            total += s.files * max(1, math.ceil(per_file / unit_bytes))
    return total


def solve_bytes_per_token(manifest, units: int, unit_bytes: int) -> float:
    lo, hi = 1e-6, 1e3
    for _ in range(80):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if estimated_units(manifest, mid, unit_bytes) < units else (lo, mid)
    return hi


def simulate_upstream(manifest, bytes_per_token: float, fraction: float) -> None:
    """Point the planner's upstream calls at the simulated files."""
    import pipelines.plan as plan
    files = simulated_files(manifest, bytes_per_token, fraction)
    by_uri = {uri: (name, size) for name, fs in files.items() for uri, size in fs}
    fmt = {s.name: s.format for s in manifest.sources}
    lists = {(s.upstream.listing, s.upstream.match, tuple(s.upstream.files or ())): s.name for s in manifest.sources}

    def list_files(upstream):
        return sorted(uri for uri, _ in files[lists[(upstream.listing, upstream.match, tuple(upstream.files or ()))]])

    def file_size(uri):
        name, size = by_uri[uri]
        return size // GZIP_RATIO if fmt[name] == "json.gz" else size

    def parquet_row_groups(uri):
        size = by_uri[uri][1]
        full, rest = divmod(size, ROW_GROUP_BYTES)
        rows = ROW_GROUP_BYTES // 2500
        return [(rows, ROW_GROUP_BYTES)] * full + ([(max(1, rest // 2500), rest)] if rest else [])

    plan.list_files, plan.file_size, plan.parquet_row_groups = list_files, file_size, parquet_row_groups


# ---------------------------------------------------------------- the steps, each size in a fresh process

def run_plan(out: Path, bytes_per_token: float, fraction: float) -> dict:
    from corpus.manifest import load_manifest
    from corpus.store.files import atomic_write_json
    from corpus.tokenizer.tokenizer import Tokenizer
    from pipelines.build import PLAN_VERSION
    from pipelines.plan import DEFAULT_UNIT_BYTES, WorkUnit, plan_build
    manifest = load_manifest(MANIFEST)
    tokenizer = Tokenizer(manifest.tokenizer.model, manifest.text.normalize)
    simulate_upstream(manifest, bytes_per_token, fraction)
    results: dict = {}
    plan_units = step("plan_build", results, lambda: plan_build(manifest))
    plan = {"version": PLAN_VERSION, "name": manifest.name, "sample": False,
            "fingerprint": manifest.build_fingerprint(tokenizer.sha256),
            "fingerprint_parts": manifest.fingerprint_parts(tokenizer.sha256), "unit_bytes": DEFAULT_UNIT_BYTES,
            "created_at": "2026-01-01T00:00:00+00:00"}
    out.mkdir(parents=True, exist_ok=True)

    def store() -> None:  # what the first build does with its plan
        atomic_write_json(out / "plan.json", {**plan, "units": [u.to_dict() for u in plan_units]})

    step("store plan.json", results, store)
    plan_units.clear()  # reading back starts from the file alone
    loaded = step("read plan.json", results,
                  lambda: [WorkUnit.from_dict(d) for d in json.loads((out / "plan.json").read_text())["units"]])
    results.update(units=len(loaded), files=len({u.slice.uri for u in loaded}),
                   plan_json_mb=(out / "plan.json").stat().st_size / 1e6)
    return results


def ledger_entry(unit: dict, i: int) -> dict:
    """An entry shaped like the worker's (pipelines/worker.py), with plausible numbers."""
    from corpus.store.counts import UnitCounts
    counts = UnitCounts(documents_read=20_000 + i % 977, kept=17_000, quarantined=3, chunks_split=24_000,
                        chunks_kept=19_000, tokens=16_000_000 + i)
    counts.dropped.update(too_few_chars=2_000, too_few_tokens=997 + i % 977)
    counts.quarantined_by_reason.update(broken_json=3)
    counts.chunks_dropped.update(too_few_chars=3_000, too_few_tokens=2_000)
    counts.tokens_dropped.update(too_few_tokens=300_000)
    shard = f"shards/{unit['source']}/{unit['unit']}"
    return {"source": unit["source"], "unit": unit["unit"], "input": unit["input"], "shard": shard,
            "chunks": 19_000, "tokens": 16_000_000 + i, "sha256_bin": f"{i:064x}", "sha256_idx": f"{i + 1:064x}",
            "quarantine": f"quarantine/{unit['source']}/{unit['unit']}.jsonl", **counts.to_dict(),
            "seconds": 41.2, "cpu_seconds": 40.9, "peak_rss_mb": 310.5, "host": "worker-17", "pid": 4242,
            "finished_at": "2026-01-01T00:00:00+00:00"}


def fill_ledger(out: Path) -> dict:
    """Every unit of the folder's plan finished: its ledger entry and its (empty) shard files."""
    from corpus.store.files import json_bytes
    t0 = time.perf_counter()
    units = json.loads((out / "plan.json").read_text())["units"]
    for d in {f"{sub}/{u['source']}" for u in units for sub in ("ledger", "shards")}:
        (out / d).mkdir(parents=True, exist_ok=True)
    for i, u in enumerate(units):
        (out / "ledger" / u["source"] / f"{u['unit']}.json").write_bytes(json_bytes(ledger_entry(u, i)))
        for suffix in (".bin", ".idx", ".json"):
            open(out / "shards" / u["source"] / f"{u['unit']}{suffix}", "wb").close()
    return {"seconds": time.perf_counter() - t0}


def run_scan(out: Path) -> dict:
    from corpus.store.layout import CorpusDir
    from pipelines.build import build
    from pipelines.plan import WorkUnit
    corpus = CorpusDir(out)
    units = [WorkUnit.from_dict(d) for d in corpus.read_plan()["units"]]
    results: dict = {}

    def pending() -> list:  # the build's check: one listing of the ledger, then a set lookup per unit
        done = corpus.ledger_units()
        return [u for u in units if (u.source, u.unit_id) not in done]

    assert not step("which units are done", results, pending)
    result = step("build() rerun", results, lambda: build(MANIFEST, out, progress=False))
    assert result.status == "complete" and result.units_skipped == len(units), (result.status, result.units_skipped)
    results["corpus_json_mb"] = (out / "corpus.json").stat().st_size / 1e6
    return results


def in_fresh_process(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, __file__, *args], env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def medians(runs: list[dict]) -> dict:
    """Per step, the median seconds and the median peak of several runs; other numbers from the first."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, dict):
            out[key] = {k: statistics.median(r[key][k] for r in runs) for k in value}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, nargs="+", default=[10_000, 100_000],
                    help="plan sizes; the largest is the full mix, the others the same mix scaled down")
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per step; the table gives medians")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch corpora")
    ap.add_argument("--_step", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._step:
        what, out, *params = args._step
        print(json.dumps(run_plan(Path(out), *map(float, params)) if what == "plan"
                         else fill_ledger(Path(out)) if what == "fill" else run_scan(Path(out))))
        return

    from corpus.manifest import load_manifest
    from pipelines.plan import DEFAULT_UNIT_BYTES
    full = max(args.units)
    b = solve_bytes_per_token(load_manifest(MANIFEST), full, DEFAULT_UNIT_BYTES)

    work = Path(args.work or tempfile.mkdtemp(prefix="plan-scale-"))
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; B = {b:.2f} bytes/token", flush=True)
    rows = {}
    try:
        for n in sorted(args.units):
            out = work / f"corpus-{n}"
            shutil.rmtree(out, ignore_errors=True)
            plan = medians([in_fresh_process("--_step", "plan", str(out), str(b), str(n / full))
                            for _ in range(args.repeat)])
            fill = in_fresh_process("--_step", "fill", str(out))
            scan = medians([in_fresh_process("--_step", "scan", str(out)) for _ in range(args.repeat)])
            rows[n] = (plan, fill, scan)
            print(f"{n / full:.0%} of the mix: {plan['units']:,} units over {plan['files']:,} files; "
                  f"plan.json {plan['plan_json_mb']:.1f} MB, corpus.json {scan['corpus_json_mb']:.1f} MB; "
                  f"ledger written in {fill['seconds']:.1f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    base = min(rows)
    steps = [("plan", "plan_build"), ("plan", "store plan.json"), ("plan", "read plan.json"),
             ("scan", "which units are done"), ("scan", "build() rerun")]
    print(f"\n| step | units | seconds | µs/unit | per unit vs {rows[base][0]['units']:,} | peak RSS growth MB |")
    print("|---|---|---|---|---|---|")
    for kind, name in steps:
        for n, (plan, _, scan) in sorted(rows.items()):
            r, units = (plan if kind == "plan" else scan)[name], plan["units"]
            ref = (rows[base][0] if kind == "plan" else rows[base][2])[name]
            ratio = (r["seconds"] / units) / (ref["seconds"] / rows[base][0]["units"])
            print(f"| {name} | {units:,} | {r['seconds']:.2f} | {r['seconds'] / units * 1e6:.1f} | "
                  f"{ratio:.2f}x | {r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
