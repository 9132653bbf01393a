"""Planning: cut every source's input files into work units, each a bounded slice of one file.

A parquet file is cut between row groups, a JSON-lines file into byte ranges (a line
belongs to the range its first byte falls in), so one huge file (RedPajama's books are
a single file) spreads over every worker. A compressed stream cannot be entered in the
middle: its units each decompress from the start and skip ahead, so a compressed file is
cut into at most ``MAX_COMPRESSED_PARTS`` units, sized on an expected expansion ratio;
the last unit of every file is open-ended, so nothing past an estimate is ever lost.

Unit ids ``<file index:05d>-<part:05d>`` sort in input order; the plan is stored in the
corpus folder at the first build, and every rerun works through that same plan.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from corpus.manifest import Manifest, Source
from corpus.text.readers import Slice, file_size, list_files, parquet_row_groups

DEFAULT_UNIT_BYTES = 64 << 20
MAX_COMPRESSED_PARTS = 16
COMPRESSED_EXPANSION = 4
_PLANNING_THREADS = 16


class PlanError(ValueError):
    """A source whose input files cannot be listed."""


@dataclass(frozen=True)
class WorkUnit:
    source: str
    unit_id: str
    slice: Slice
    plan_note: str | None = None   # why a file could not be cut (its unit then covers the whole file)

    @property
    def key(self) -> str:
        return f"{self.source}/{self.unit_id}"

    def to_dict(self) -> dict:
        d = {"source": self.source, "unit": self.unit_id, "input": self.slice.to_dict()}
        if self.plan_note:
            d["plan_note"] = self.plan_note
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WorkUnit":
        return cls(d["source"], d["unit"], Slice.from_dict(d["input"]), d.get("plan_note"))


def unit_id(file_index: int, part: int) -> str:
    return f"{file_index:05d}-{part:05d}"


def source_files(manifest: Manifest, source: Source, sample: bool, mirror_root: str | None = None) -> list[str]:
    """The files a source reads: upstream, or the offline sample mirror with ``sample``."""
    if sample:
        from corpus.mirror.mirror import mirror_files
        return list(mirror_files(manifest, source.name, mirror_root))
    return list_files(source.upstream)


def _byte_ranges(total: int, parts: int) -> list[tuple[int, int | None]]:
    bounds = [total * i // parts for i in range(parts)]
    return [(bounds[i], bounds[i + 1] if i + 1 < parts else None) for i in range(parts)]


def plan_file(source: Source, file_index: int, uri: str, unit_bytes: int) -> list[WorkUnit]:
    def unit(part: int, sl: Slice, note: str | None = None) -> WorkUnit:
        return WorkUnit(source.name, unit_id(file_index, part), sl, note)

    fmt = source.format
    if fmt == "parquet":
        try:
            groups = parquet_row_groups(uri)
        except Exception as e:  # an unreadable footer: one unit for the file, which fails (and retries) on its own
            return [unit(0, Slice(uri, fmt), f"could not read the parquet footer: {e}")]
        units, first, row0, rows, size = [], 0, 0, 0, 0
        for i, (n_rows, n_bytes) in enumerate(groups):
            rows, size = rows + n_rows, size + n_bytes
            if size >= unit_bytes or i == len(groups) - 1:
                units.append(unit(len(units), Slice(uri, fmt, row_groups=(first, i + 1), row0=row0)))
                first, row0, rows, size = i + 1, row0 + rows, 0, 0
        return units or [unit(0, Slice(uri, fmt, row_groups=(0, 0)))]
    try:
        size = file_size(uri)
    except Exception as e:
        return [unit(0, Slice(uri, fmt), f"could not read the file size: {e}")]
    if fmt == "jsonl":
        parts = max(1, math.ceil(size / unit_bytes))
    else:
        parts = min(MAX_COMPRESSED_PARTS, max(1, math.ceil(size * COMPRESSED_EXPANSION / unit_bytes)))
        size *= COMPRESSED_EXPANSION
    return [unit(i, Slice(uri, fmt, start=a, end=b)) for i, (a, b) in enumerate(_byte_ranges(size, parts))]


def plan_source(source: Source, files: list[str], unit_bytes: int = DEFAULT_UNIT_BYTES) -> list[WorkUnit]:
    with ThreadPoolExecutor(max_workers=min(_PLANNING_THREADS, max(1, len(files)))) as pool:
        per_file = pool.map(lambda a: plan_file(source, a[0], a[1], unit_bytes), enumerate(files))
        return [u for units in per_file for u in units]


def plan_build(manifest: Manifest, sample: bool = False, unit_bytes: int = DEFAULT_UNIT_BYTES,
               mirror_root: str | None = None) -> list[WorkUnit]:
    """Every unit of every source, sources in manifest order, units in input order."""
    units: list[WorkUnit] = []
    for source in manifest.sources:
        try:
            files = source_files(manifest, source, sample, mirror_root)
        except Exception as e:  # offline, a typo in a pattern, a missing fsspec backend: say which source
            where = "its sample mirror" if sample else (source.upstream.files or source.upstream.listing)
            raise PlanError(f"source {source.name!r}: cannot list {where}: {type(e).__name__}: {e}") from e
        if not files:
            raise PlanError(f"source {source.name!r} has no input files" + (" in the sample mirror" if sample else ""))
        units.extend(plan_source(source, files, unit_bytes))
    return units
