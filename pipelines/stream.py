"""A live stream of one source's token chunks, computed on Ray and never written to disk.

The chunks come in the order a build's shards would hold them (units in plan order,
chunks in input order within a unit), because each unit is computed exactly as the
build computes it. At most ``window`` units are in flight or waiting to be consumed,
so memory stays bounded however large the source is.

Validation while streaming holds out whole units: per source, the
``val_chunk_count(units, f)`` units (ceil(f * units), at least one, never all; none for a
one-unit source) whose keyed hash of the unit's key is lowest. The ``train`` split of the
stream skips them without tokenizing them, the ``val`` split tokenizes only them, so a few
held-out batches gather as fast as one unit tokenizes, the choice is the same on every rank
and after a resume (a pure function of the plan and the manifest's seed), and no held-out
chunk is ever trained on.

Faults: a unit whose worker process dies (killed, out of memory, node lost) is rerun by Ray, up to
``WORKER_RETRIES`` times, and the stream goes on with the same chunks. A unit that fails for good (its
input unreadable or corrupt, or its worker dying on every try) ends the stream with a :class:`StreamError`
naming the source, the unit and its input: a stream never skips a unit.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from corpus.manifest import Manifest, load_manifest
from corpus.mixing.chunk_streams import SPLITS, val_chunk_count
from corpus.mixing.permutation import derive_key
from corpus.tokenizer.tokenizer import Tokenizer
from pipelines.plan import DEFAULT_UNIT_BYTES, WorkUnit, plan_source, source_files
from pipelines.runner import in_flight, start_ray
from pipelines.worker import UnitJob, tokenize_unit


WORKER_RETRIES = 3  # reruns of a unit whose worker process died, before the stream gives up on it


class StreamError(RuntimeError):
    """A unit of the stream failed for good; the stream stops rather than skip data silently.

    One line: the source, the unit, its input and the cause (the task's own exception, not Ray's traceback).
    """

    def __init__(self, unit: WorkUnit, cause: BaseException):
        self.source, self.unit, self.input = unit.source, unit.key, unit.slice.describe()
        inner = getattr(cause, "cause", None)  # a RayTaskError carries the task's exception
        # else the worker died on every try (WorkerCrashedError and kin), which Ray's own first line says
        error = inner if isinstance(inner, BaseException) else cause
        kind = type(error).__name__ if type(error).__module__ == "builtins" else \
            f"{type(error).__module__}.{type(error).__name__}"  # zlib.error, not a bare "error"
        first = (str(error).strip().splitlines() or [""])[0]
        self.cause = f"{kind}: {first}" if first else kind
        super().__init__(f"source {self.source}, unit {self.unit}, input {self.input}: {self.cause}")


def held_out_units(units: list[WorkUnit], fraction: float, seed: int) -> set[str]:
    """Keys of the units held out for validation: the ``val_chunk_count(len(units), fraction)`` lowest by keyed hash."""
    ranked = sorted(units, key=lambda u: derive_key("live-val-unit", seed, u.key))
    return {u.key for u in ranked[:val_chunk_count(len(units), fraction)]}


def stream_units(manifest: Manifest, source_name: str, sample: bool = False, unit_bytes: int = DEFAULT_UNIT_BYTES,
                 mirror_root: str | None = None, split: str | None = None,
                 val_fraction: float = 0.0) -> list[WorkUnit]:
    """The units a stream of ``split`` reads, in plan order (``None``: every unit)."""
    source = manifest.source(source_name)
    units = plan_source(source, source_files(manifest, source, sample, mirror_root), unit_bytes)
    if split is None:
        return units
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    held = held_out_units(units, val_fraction, manifest.seed)
    return [u for u in units if (u.key in held) == (split == "val")]


def stream_source(manifest: Manifest | str, source_name: str, sample: bool = False, workers: int | None = None,
                  window: int | None = None, unit_bytes: int = DEFAULT_UNIT_BYTES,
                  mirror_root: str | None = None, address: str | None = None, split: str | None = None,
                  val_fraction: float = 0.0) -> Iterator[np.ndarray]:
    """Yield the kept chunks (uint16 arrays, BOS ... EOS) of one source, in shard order.

    ``split`` ``"train"`` or ``"val"`` reads only the units outside or inside the held-out set
    that ``val_fraction`` sizes; ``None`` reads them all.
    """
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    tokenizer = Tokenizer(manifest.tokenizer.model, manifest.text.normalize)
    source = manifest.source(source_name)
    units = stream_units(manifest, source_name, sample, unit_bytes, mirror_root, split, val_fraction)
    workers = workers or os.cpu_count() or 1
    started_ray = start_ray(workers, address)
    import ray
    try:
        job = UnitJob.of(manifest, tokenizer, [source])
        for unit, ref in in_flight(tokenize_unit, job, units, WorkUnit.to_dict, window or 2 * workers, ordered=True,
                                   retries=WORKER_RETRIES):
            try:
                tokens, offsets = ray.get(ref)
            except Exception as e:
                raise StreamError(unit, e) from e
            for i in range(len(offsets) - 1):
                # a copy, so a consumer holding chunks never pins Ray's shared buffer
                yield tokens[int(offsets[i]):int(offsets[i + 1])].copy()
    finally:
        if started_ray:
            ray.shutdown()
