"""A live stream of one source's token chunks, computed on Ray and never written to disk.

The chunks come in the order a build's shards would hold them (units in plan order,
chunks in input order within a unit), because each unit is computed exactly as the
build computes it. At most ``window`` units are in flight or waiting to be consumed,
so memory stays bounded however large the source is.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from corpus.manifest import Manifest, load_manifest
from corpus.tokenizer.tokenizer import Tokenizer
from pipelines.plan import DEFAULT_UNIT_BYTES, WorkUnit, plan_source, source_files
from pipelines.runner import in_flight, start_ray
from pipelines.worker import UnitJob, tokenize_unit


class StreamError(RuntimeError):
    """A unit of the stream could not be read; the stream stops rather than skip data silently."""


def stream_source(manifest: Manifest | str, source_name: str, sample: bool = False, workers: int | None = None,
                  window: int | None = None, unit_bytes: int = DEFAULT_UNIT_BYTES,
                  mirror_root: str | None = None, address: str | None = None) -> Iterator[np.ndarray]:
    """Yield the kept chunks (uint16 arrays, BOS ... EOS) of one source, in shard order."""
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    source = manifest.source(source_name)
    tokenizer = Tokenizer(manifest.tokenizer.model, manifest.text.normalize)
    units = plan_source(source, source_files(manifest, source, sample, mirror_root), unit_bytes)
    workers = workers or os.cpu_count() or 1
    started_ray = start_ray(workers, address)
    import ray
    try:
        job = UnitJob.of(manifest, tokenizer, [source])
        for unit, ref in in_flight(tokenize_unit, job, units, WorkUnit.to_dict, window or 2 * workers, ordered=True):
            try:
                tokens, offsets = ray.get(ref)
            except Exception as e:
                raise StreamError(f"{unit.key} ({unit.slice.describe()}): {e}") from e
            for i in range(len(offsets) - 1):
                # a copy, so a consumer holding chunks never pins Ray's shared buffer
                yield tokens[int(offsets[i]):int(offsets[i + 1])].copy()
    finally:
        if started_ray:
            ray.shutdown()
