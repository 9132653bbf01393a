"""The worker side: what runs inside a Ray task for one work unit.

A :class:`UnitJob` holds everything a worker needs besides its unit (text rules, sources,
the tokenizer's bytes) and is shipped to the cluster once. :func:`execute_unit` is the
build's task: it writes the unit's shard, quarantine and, last, its ledger entry, into a
local folder or straight to an object store; on a full disk or an unreachable store it
reports ``stopped`` instead of failing the unit, and the build stops.
:func:`tokenize_unit` is the live stream's task: the same chunks, returned instead of written.
"""
from __future__ import annotations

import os
import socket
import traceback
from dataclasses import dataclass

import numpy as np

from corpus.cleaning.contamination import Decontamination
from corpus.manifest import Manifest, Source, TextRules
from corpus.store.files import utc_now
from corpus.store.layout import CorpusDir
from corpus.store.location import StoreUnreachable, stops_build
from corpus.store.writer import ShardWriter
from corpus.text.filters import build_filters
from corpus.text.rules import CoreNetRules
from corpus.tokenizer.tokenizer import Tokenizer
from pipelines.dedup import read_removals
from pipelines.plan import WorkUnit
from pipelines.unit import UnitOutput, UnitProcessor


@dataclass(frozen=True)
class UnitJob:
    """Everything a worker needs to turn a unit of these sources into chunks."""
    fingerprint: str
    text: TextRules
    sources: dict[str, Source]
    tokenizer_spec: str
    tokenizer_bytes: bytes
    tokenizer_sha256: str
    # The manifest removes duplicates: the corpus folder whose dedup/removed/ files say which records each unit
    # leaves out (pipelines/dedup.py); the build's own, or the one `elm-corpus dedup` made for a live stream.
    dedup_dir: str | None = None
    # the tasks' n-grams no kept document may have: small (a task set's is a few MB), so it travels with the job
    decontaminate: Decontamination | None = None

    @classmethod
    def of(cls, manifest: Manifest, tokenizer: Tokenizer, sources: list[Source] | None = None,
           dedup_dir: str | None = None, decontaminate: Decontamination | None = None) -> "UnitJob":
        return cls(manifest.build_fingerprint(tokenizer.sha256), manifest.text,
                   {s.name: s for s in (manifest.sources if sources is None else sources)},
                   tokenizer.spec, tokenizer.model_bytes, tokenizer.sha256, dedup_dir, decontaminate)

    def removals(self, unit: WorkUnit) -> dict[int, tuple[str, str]] | None:
        """The records of ``unit`` deduplication removed (None: the manifest does not deduplicate)."""
        return None if self.dedup_dir is None else read_removals(CorpusDir(self.dedup_dir), unit.source, unit.unit_id)


@dataclass(frozen=True)
class BuildJob:
    """A :class:`UnitJob` and the corpus its units are written to (a folder, or a URI such as ``s3://bucket/prefix``).

    ``store_env``: the driver's store settings (``AWS_*``, ``FSSPEC_*``) the tasks run with, for a corpus on a store.
    """
    units: UnitJob
    out_dir: str
    store_env: tuple[tuple[str, str], ...] = ()


_PROCESSORS: dict[tuple[str, str], UnitProcessor] = {}  # per worker process, built once per source


def processor_for(job: UnitJob, source_name: str) -> UnitProcessor:
    key = (job.fingerprint, source_name)
    if key not in _PROCESSORS:
        source = job.sources[source_name]
        tokenizer = Tokenizer(job.tokenizer_spec, job.text.normalize, model_bytes=job.tokenizer_bytes)
        filters = build_filters(source.filters, where=f"source {source_name}: ")
        _PROCESSORS[key] = UnitProcessor(CoreNetRules(job.text), tokenizer, filters, source.text_field)
    return _PROCESSORS[key]


def sidecar_for(job: UnitJob, output: UnitOutput, quarantine_file: str | None) -> dict:
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


def failure_entry(unit: WorkUnit, error: BaseException, with_traceback: bool = True) -> dict:
    """The ``failed/`` record of a unit: what went wrong, where and when."""
    entry = {"source": unit.source, "unit": unit.unit_id, "input": unit.slice.to_dict(),
             "error": f"{type(error).__name__}: {error}"}
    if with_traceback:
        entry.update(traceback=traceback.format_exc(), host=socket.gethostname())
    entry["failed_at"] = utc_now()
    return entry


def execute_unit(job: BuildJob, unit_dict: dict) -> dict:
    """Run one unit and record it; returns a small summary (never raises for a unit's own failure)."""
    unit = WorkUnit.from_dict(unit_dict)
    corpus = CorpusDir(job.out_dir)
    writer = None
    try:
        processor = processor_for(job.units, unit.source)
        stem = corpus.shard_stem(unit.source, unit.unit_id)
        writer = ShardWriter(stem)
        output = processor.run(unit, sink=writer, removed=job.units.removals(unit),
                               decontaminate=job.units.decontaminate)
        qpath = corpus.write_quarantine(unit.source, unit.unit_id, output.quarantine)
        qrel = corpus.relative(qpath) if qpath else None
        meta = writer.close(sidecar_for(job.units, output, qrel))
        entry = {
            "source": unit.source, "unit": unit.unit_id, "input": unit.slice.to_dict(),
            "shard": corpus.relative(stem),
            "chunks": meta["chunks"], "tokens": meta["tokens"],
            "sha256_bin": meta["sha256_bin"], "sha256_idx": meta["sha256_idx"],
            "quarantine": qrel,
            **output.counts.to_dict(),
            "seconds": round(output.seconds, 3), "cpu_seconds": round(output.cpu_seconds, 3),
            "peak_rss_mb": round(output.peak_rss_mb, 1),
            "host": socket.gethostname(), "pid": os.getpid(), "finished_at": utc_now(),
        }
        decontaminate = job.units.decontaminate
        if decontaminate is not None:  # corpus.json's per-task counts are assembled from these
            entry["contaminated_items"] = decontaminate.by_task(output.contaminated_items)
        corpus.write_ledger(unit.source, unit.unit_id, entry)
        return {"status": "done", **entry}
    except Exception as e:  # the unit fails alone; the build goes on and a rerun retries it
        if writer is not None:
            writer.abort()
        if stops_build(e):
            return write_stopped(corpus, unit, e)
        entry = failure_entry(unit, e)
        try:
            corpus.write_failed(unit.source, unit.unit_id, entry)
        except OSError as w:
            if not stops_build(w):
                raise
            return write_stopped(corpus, unit, w)
        return {"status": "failed", **entry}


def write_stopped(corpus: CorpusDir, unit: WorkUnit, error: OSError) -> dict:
    """The summary of a unit stopped by a full disk or an unreachable store: not the unit's fault, so no failed
    entry (nor, often, a way to write one).

    Files it placed before its ledger entry are removed where that is possible: they are no finished unit.
    """
    # a write(2) into the shard's growing .bin names no file; every other write here names its own
    path = error.filename or str(corpus.shard_stem(unit.source, unit.unit_id).with_suffix(".bin"))
    try:
        if not corpus.is_done(unit.source, unit.unit_id):
            corpus.discard_unit_files(unit.source, unit.unit_id)
    except StoreUnreachable:
        pass  # the next build overwrites them: without a ledger entry they are no finished unit
    reachable = not isinstance(error, StoreUnreachable)
    return {"status": "stopped", "source": unit.source, "unit": unit.unit_id, "path": path,
            "errno": error.errno, "unreachable": not reachable,
            "detail": "" if reachable else error.detail,
            "error": f"{type(error).__name__}: {error.strerror or error}"}


def tokenize_unit(job: UnitJob, unit_dict: dict) -> tuple[np.ndarray, np.ndarray]:
    """One unit's kept chunks as (uint16 tokens, uint64 token offsets, first 0): the tokens a shard's .bin would hold."""
    unit = WorkUnit.from_dict(unit_dict)
    output = processor_for(job, unit.source).run(unit, removed=job.removals(unit), decontaminate=job.decontaminate)
    lengths = np.fromiter((len(c) for c in output.chunks), dtype=np.uint64, count=len(output.chunks))
    offsets = np.zeros(len(lengths) + 1, dtype=np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(output.chunks) if output.chunks else np.zeros(0, dtype=np.uint16)
    return tokens, offsets
