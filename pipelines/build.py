"""`elm-corpus build`: plan work units, run them as Ray tasks, keep the ledger, write corpus.json.

One Ray task per unit, at most ``workers`` in flight. A task writes its unit's shard,
quarantine file and, last, its ledger entry, so the build can be killed at any moment:
the rerun skips every unit with a ledger entry and computes the others again, and since a
unit's bytes depend only on the unit, the result is the same as an uninterrupted build.

The corpus folder remembers the manifest fingerprint (text rules, sources, tokenizer) in
``plan.json``; a rerun whose fingerprint differs is refused, or with ``--force`` the old
folder is moved aside to ``<out>.stale-<old fingerprint[:8]>`` and a fresh build starts.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from corpus.text.filters import build_filters
from corpus.store.layout import CorpusBusy, CorpusDir
from corpus.manifest import Manifest, Source, TextRules, load_manifest
from corpus.store.writer import ShardWriter
from corpus.store.shards import atomic_write_json
from corpus.text.rules import CoreNetRules
from corpus.tokenizer.tokenizer import Tokenizer
from corpus.store.index import corpus_index
from pipelines.plan import DEFAULT_UNIT_BYTES, WorkUnit, plan_build
from pipelines.unit import UnitOutput, UnitProcessor

PLAN_VERSION = 1


class BuildRefused(RuntimeError):
    """The corpus folder was built from a different manifest or tokenizer."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_out_dir(manifest: Manifest, sample: bool = False) -> Path:
    from corpus.paths import corpora_root
    return corpora_root() / (f"{manifest.name}-sample" if sample else manifest.name)


# ---------------------------------------------------------------- the worker side

@dataclass(frozen=True)
class BuildJob:
    """Everything a worker needs besides its unit; shipped to the cluster once."""
    out_dir: str
    fingerprint: str
    text: TextRules
    sources: dict[str, Source]
    tokenizer_spec: str
    tokenizer_bytes: bytes
    tokenizer_sha256: str


_PROCESSORS: dict[tuple[str, str], UnitProcessor] = {}  # per worker process, built once per source


def processor_for(job: BuildJob, source_name: str) -> UnitProcessor:
    key = (job.fingerprint, source_name)
    if key not in _PROCESSORS:
        source = job.sources[source_name]
        tokenizer = Tokenizer(job.tokenizer_spec, job.text.normalize, model_bytes=job.tokenizer_bytes)
        filters = build_filters(source.filters, where=f"source {source_name}: ")
        _PROCESSORS[key] = UnitProcessor(CoreNetRules(job.text), tokenizer, filters, source.text_field)
    return _PROCESSORS[key]


def sidecar_for(job: BuildJob, output: UnitOutput, quarantine_file: str | None) -> dict:
    """The shard's sidecar: deterministic (no times, no hosts), so shards compare byte for byte."""
    unit = output.unit
    return {
        "source": unit.source,
        "unit": unit.unit_id,
        "input": unit.slice.to_dict(),
        "text_field": job.sources[unit.source].text_field,
        "manifest_fingerprint": job.fingerprint,
        "tokenizer_sha256": job.tokenizer_sha256,
        **output.counts.to_dict(),
        "origin": {"location": "row" if unit.slice.format == "parquet" else "byte",
                   "record": output.origin_location, "part": output.origin_part},
        "quarantine": quarantine_file,
    }


def execute_unit(job: BuildJob, unit_dict: dict) -> dict:
    """Run one unit and record it; returns a small summary (never raises for a unit's own failure)."""
    unit = WorkUnit.from_dict(unit_dict)
    corpus = CorpusDir(job.out_dir)
    writer = None
    try:
        processor = processor_for(job, unit.source)
        stem = corpus.shard_stem(unit.source, unit.unit_id)
        writer = ShardWriter(stem)
        output = processor.run(unit, sink=writer)
        qpath = corpus.write_quarantine(unit.source, unit.unit_id, output.quarantine)
        qrel = corpus.relative(qpath) if qpath else None
        meta = writer.close(sidecar_for(job, output, qrel))
        entry = {
            "source": unit.source, "unit": unit.unit_id, "input": unit.slice.to_dict(),
            "shard": corpus.relative(stem),
            "chunks": meta["chunks"], "tokens": meta["tokens"],
            "sha256_bin": meta["sha256_bin"], "sha256_idx": meta["sha256_idx"],
            "quarantine": qrel,
            **output.counts.to_dict(),
            "seconds": round(output.seconds, 3), "cpu_seconds": round(output.cpu_seconds, 3),
            "peak_rss_mb": round(output.peak_rss_mb, 1),
            "host": socket.gethostname(), "pid": os.getpid(), "finished_at": _now(),
        }
        corpus.write_ledger(unit.source, unit.unit_id, entry)
        return {"status": "done", **entry}
    except Exception as e:  # the unit fails alone; the build goes on and a rerun retries it
        if writer is not None:
            writer.abort()
        entry = {"source": unit.source, "unit": unit.unit_id, "input": unit.slice.to_dict(),
                 "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                 "host": socket.gethostname(), "failed_at": _now()}
        corpus.write_failed(unit.source, unit.unit_id, entry)
        return {"status": "failed", **entry}


# ---------------------------------------------------------------- the fingerprint

def _fingerprint_parts(manifest: Manifest, tokenizer_sha256: str) -> dict:
    return {"text": manifest.text.model_dump(mode="json"),
            "sources": {s.name: s.model_dump(mode="json", exclude={"weight", "description", "tokens", "files"})
                        for s in manifest.sources},
            "tokenizer": tokenizer_sha256}


def _what_changed(old: dict, new: dict) -> list[str]:
    changes = []
    if old.get("text") != new["text"]:
        changes.append("text rules")
    if old.get("tokenizer") != new["tokenizer"]:
        changes.append("tokenizer")
    old_sources = old.get("sources", {})
    for name in sorted(set(old_sources) | set(new["sources"])):
        if name not in old_sources:
            changes.append(f"source {name} added")
        elif name not in new["sources"]:
            changes.append(f"source {name} removed")
        elif old_sources[name] != new["sources"][name]:
            changes.append(f"source {name} changed")
    return changes or ["manifest"]


# ---------------------------------------------------------------- the driver

@dataclass
class BuildResult:
    out_dir: Path
    status: str                       # complete | partial | failed
    units_total: int
    units_skipped: int                # already finished before this run
    units_run: int
    failed: list[dict] = field(default_factory=list)
    corpus: dict = field(default_factory=dict)
    moved_aside: Path | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "complete"


def _move_aside(out: Path, old_fingerprint: str) -> Path:
    target = out.with_name(f"{out.name}.stale-{old_fingerprint[:8]}")
    n = 1
    while target.exists():
        n += 1
        target = out.with_name(f"{out.name}.stale-{old_fingerprint[:8]}-{n}")
    out.rename(target)
    return target


def _start_ray(workers: int, address: str | None) -> bool:
    """Start (or join) Ray unless this process already has it; True when we started it."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        import corpus
        import pipelines
        # the cluster runs this very code, whatever its nodes have installed
        ray.init(address=address, runtime_env={"py_modules": [corpus, pipelines]}, **common)
    else:
        # Ray starts workers at niceness 15; a build the user asked for should not yield to every other process
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address="local", num_cpus=workers, **common)
    return True


def _default_workers(address: str | None) -> int:
    if address:
        import ray
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    return max(1, os.cpu_count() or 1)


class _Progress:
    """Units done/total, docs/s, tokens/s and ETA on one line (or nothing with progress=False)."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled, self.started = enabled, time.perf_counter()
        self.docs = self.tokens = 0
        if not enabled:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        self.bar = Progress(TextColumn("[bold]build"), BarColumn(), MofNCompleteColumn(), TextColumn("units"),
                            TextColumn("{task.fields[docs]} docs/s  {task.fields[toks]} tokens/s"),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            transient=False)
        self.bar.start()
        self.task = self.bar.add_task("build", total=total, completed=done, docs="0", toks="0")

    def advance(self, summary: dict) -> None:
        self.docs += summary.get("documents_read", 0)
        self.tokens += summary.get("tokens", 0)
        if not self.enabled:
            return
        dt = max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(self.task, advance=1, docs=f"{self.docs / dt:,.0f}", toks=f"{self.tokens / dt:,.0f}")

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()


def build(manifest: Manifest | str | Path, out_dir: str | Path | None = None, sample: bool = False,
          workers: int | None = None, address: str | None = None, force: bool = False, progress: bool = True,
          unit_bytes: int = DEFAULT_UNIT_BYTES, sample_root: str | Path | None = None) -> BuildResult:
    """Build or resume a corpus; see the module docstring.

    ``unit_bytes`` applies when a plan is first made; ``sample_root`` is where the sample
    mirror lives (default ``data_root()/sample``).
    """
    started, t0 = _now(), time.perf_counter()
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    tokenizer = Tokenizer(manifest.tokenizer.model, manifest.text.normalize)
    for s in manifest.sources:  # bad filter params fail here, before any work starts
        build_filters(s.filters, where=f"source {s.name}: ")
    out = Path(out_dir) if out_dir is not None else default_out_dir(manifest, sample)
    with ExitStack() as held:
        corpus = _hold(held, CorpusDir(out))
        plan, moved = _check_plan(corpus, manifest, tokenizer, sample, force)
        if moved is not None:
            corpus = _hold(held, CorpusDir(out))
        if plan is None:
            try:
                units = plan_build(manifest, sample=sample, unit_bytes=unit_bytes,
                                   sample_root=str(sample_root) if sample_root is not None else None)
            except Exception:
                corpus.remove_if_only_lock()  # leave no empty corpus folder behind a failed start
                raise
            plan = {"version": PLAN_VERSION, "name": manifest.name, "sample": sample,
                    "fingerprint": manifest.build_fingerprint(tokenizer.sha256),
                    "fingerprint_parts": _fingerprint_parts(manifest, tokenizer.sha256), "unit_bytes": unit_bytes,
                    "created_at": _now(), "units": [u.to_dict() for u in units]}
            corpus.write_plan(plan)
        units = [WorkUnit.from_dict(d) for d in plan["units"]]
        corpus.remove_stale_temporaries()

        def write_index(status: str, finished: str | None) -> dict:
            index = corpus_index(manifest, tokenizer, plan, corpus, status, started, finished)
            atomic_write_json(corpus.corpus_json_path, index)
            return index

        write_index("building", None)
        pending = [u for u in units if not corpus.is_done(u.source, u.unit_id)]
        skipped = len(units) - len(pending)
        failed: list[dict] = []
        ran, started_ray, interrupted, bar = 0, False, True, None
        try:
            if pending:
                started_ray = _start_ray(workers or os.cpu_count() or 1, address)
                workers = workers or _default_workers(address)
                bar = _Progress(progress, len(units), skipped)
                job = BuildJob(str(out), plan["fingerprint"], manifest.text, {s.name: s for s in manifest.sources},
                               tokenizer.spec, tokenizer.model_bytes, tokenizer.sha256)
                for summary in run_units(job, pending, workers):
                    ran += 1
                    if summary["status"] == "failed":
                        failed.append(summary)
                    bar.advance(summary)
            interrupted = False
        finally:
            if bar is not None:
                bar.close()
            status = "partial" if interrupted else ("failed" if failed else "complete")
            index = write_index(status, _now())
            if started_ray:
                import ray
                ray.shutdown()
    return BuildResult(out, status, len(units), skipped, ran, index["failed_units"], index, moved,
                       time.perf_counter() - t0)


def _hold(stack: ExitStack, corpus: CorpusDir) -> CorpusDir:
    try:
        stack.enter_context(corpus.exclusive())
    except CorpusBusy as e:
        raise BuildRefused(str(e)) from None
    return corpus


def _check_plan(corpus: CorpusDir, manifest: Manifest, tokenizer: Tokenizer, sample: bool,
                force: bool) -> tuple[dict | None, Path | None]:
    """The stored plan if it fits this manifest; refuse a misfit, or with ``force`` move the folder aside."""
    plan = corpus.read_plan()
    fingerprint = manifest.build_fingerprint(tokenizer.sha256)
    if plan is None or (plan["fingerprint"] == fingerprint and plan["sample"] == sample):
        return plan, None
    if plan["fingerprint"] != fingerprint:
        what = _what_changed(plan.get("fingerprint_parts", {}), _fingerprint_parts(manifest, tokenizer.sha256))
    else:
        what = [f"it is a {'sample' if plan['sample'] else 'full'} build"]
    out = corpus.root
    if not force:
        raise BuildRefused(
            f"{out} was built from a different manifest (fingerprint {plan['fingerprint'][:12]}, now "
            f"{fingerprint[:12]}; changed: {', '.join(what)}). Its shards would not match this manifest. "
            f"Rerun with --force to move it aside to {out.name}.stale-{plan['fingerprint'][:8]} and build "
            f"afresh, or pass another --out.")
    return None, _move_aside(out, plan["fingerprint"])


def run_units(job: BuildJob, units: list[WorkUnit], workers: int):
    """Yield each unit's summary as it finishes, keeping at most ``workers`` tasks in flight."""
    import ray
    remote = ray.remote(num_cpus=1)(execute_unit)
    job_ref = ray.put(job)
    queue = list(reversed(units))
    in_flight: dict = {}
    while queue or in_flight:
        while queue and len(in_flight) < workers:
            unit = queue.pop()
            in_flight[remote.remote(job_ref, unit.to_dict())] = unit
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            unit = in_flight.pop(ref)
            try:
                yield ray.get(ref)
            except Exception as e:  # the worker died (out of memory, node lost): record it like any failure
                entry = {"source": unit.source, "unit": unit.unit_id, "input": unit.slice.to_dict(),
                         "error": f"{type(e).__name__}: {e}", "failed_at": _now()}
                CorpusDir(job.out_dir).write_failed(unit.source, unit.unit_id, entry)
                yield {"status": "failed", **entry}


# ---------------------------------------------------------------- the CLI

def cli_build(args) -> int:
    try:
        result = build(args.manifest, out_dir=args.out, sample=args.sample, workers=args.workers,
                       address=args.address, force=args.force, progress=not args.no_progress)
    except BuildRefused as e:
        print(f"elm-corpus build: refused: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("elm-corpus build: interrupted; finished units are kept, run the same command to resume",
              file=sys.stderr)
        return 130
    if result.moved_aside:
        print(f"moved the old build aside to {result.moved_aside}")
    totals = result.corpus["totals"]
    print(f"{result.out_dir}: {result.status}; units {result.units_total} "
          f"({result.units_skipped} already done, {result.units_run} run) in {result.seconds:.1f}s; "
          f"documents {totals['documents_read']:,} read, {totals['kept']:,} kept, "
          f"{sum(totals['dropped'].values()):,} dropped, {totals['quarantined']:,} quarantined; "
          f"{totals['tokens']:,} tokens")
    if result.failed:
        print(f"{len(result.failed)} unit(s) failed; rerun the same command to retry them:", file=sys.stderr)
        for f in result.failed:
            print(f"  {f['source']}/{f['unit']}: {f['error']}", file=sys.stderr)
        return 1
    return 0
