"""A live stream of one source's token chunks, computed on Ray and never written to disk.

The chunks come in the order a build's shards would hold them (units in plan order,
chunks in input order within a unit), because each unit is computed exactly as the
build computes it. At most ``window`` units are in flight or waiting to be consumed,
so memory stays bounded however large the source is.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator

import numpy as np

from corpus.manifest import Manifest, load_manifest
from corpus.tokenizer.tokenizer import Tokenizer
from pipelines.build import BuildJob, _start_ray, processor_for
from pipelines.plan import DEFAULT_UNIT_BYTES, WorkUnit, plan_source, source_files


class StreamError(RuntimeError):
    """A unit of the stream could not be read; the stream stops rather than skip data silently."""


def tokenize_unit(job: BuildJob, unit_dict: dict) -> tuple[np.ndarray, np.ndarray]:
    """One unit's kept chunks as (uint16 tokens, uint64 offsets), the same bytes a shard would hold."""
    unit = WorkUnit.from_dict(unit_dict)
    output = processor_for(job, unit.source).run(unit)
    lengths = np.fromiter((len(c) for c in output.chunks), dtype=np.uint64, count=len(output.chunks))
    offsets = np.zeros(len(lengths) + 1, dtype=np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(output.chunks) if output.chunks else np.zeros(0, dtype=np.uint16)
    return tokens, offsets


def stream_source(manifest: Manifest | str, source_name: str, sample: bool = False, workers: int | None = None,
                  window: int | None = None, unit_bytes: int = DEFAULT_UNIT_BYTES,
                  sample_root: str | None = None, address: str | None = None) -> Iterator[np.ndarray]:
    """Yield the kept chunks (uint16 arrays, BOS ... EOS) of one source, in shard order."""
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    source = manifest.source(source_name)
    tokenizer = Tokenizer(manifest.tokenizer.model, manifest.text.normalize)
    units = plan_source(source, source_files(manifest, source, sample, sample_root), unit_bytes)
    workers = workers or os.cpu_count() or 1
    window = window or 2 * workers
    started_ray = _start_ray(workers, address)
    import ray
    try:
        job = ray.put(BuildJob("", manifest.build_fingerprint(tokenizer.sha256), manifest.text,
                               {source.name: source}, tokenizer.spec, tokenizer.model_bytes, tokenizer.sha256))
        remote = ray.remote(num_cpus=1)(tokenize_unit)
        pending = deque(units)
        in_flight: deque = deque()
        while pending or in_flight:
            while pending and len(in_flight) < window:
                unit = pending.popleft()
                in_flight.append((unit, remote.remote(job, unit.to_dict())))
            unit, ref = in_flight.popleft()
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
