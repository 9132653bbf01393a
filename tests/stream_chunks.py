"""One pass of one source's chunks from the live pipeline, in shard order: what the stream tests hold against a
build's shards and a training run's batches.

It puts the pieces of ``pipelines.stream`` together as ``pipelines.live_corpus`` does for a training
job, for one source and one reader: plan the units, start Ray, open a feed, read its units.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from corpus.manifest import Manifest, load_manifest
from pipelines.plan import DEFAULT_UNIT_BYTES
from pipelines.runner import start_ray
from pipelines.stream import FedUnits, close_feed, open_feed, stream_key, stream_units


def stream_chunks(manifest: Manifest | str | Path, source_name: str, sample: bool = False, workers: int | None = None,
                  window: int | None = None, unit_bytes: int = DEFAULT_UNIT_BYTES, mirror_root: str | None = None,
                  split: str | None = None, val_fraction: float = 0.0,
                  dedup_dir: str | None = None, decontaminate=None) -> Iterator[np.ndarray]:
    """Yield the kept chunks (uint16 arrays, BOS ... EOS) of one pass of one source, in shard order.

    ``split`` ``"train"`` or ``"val"`` reads only the units outside or inside the held-out set
    that ``val_fraction`` sizes; ``None`` reads them all. ``window``: units started ahead (default 2 per worker).
    ``dedup_dir``: where the removals of a deduplicating manifest are (``pipelines.dedup.live_removals``);
    ``decontaminate``: the task n-grams of its ``decontaminate`` block (``pipelines.build.decontamination``).
    """
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    units = stream_units(manifest, source_name, sample, unit_bytes, mirror_root, split, val_fraction)
    workers = workers or os.cpu_count() or 1
    started_ray = start_ray(workers)
    key = stream_key(source_name, split or "all")
    feed, _ = open_feed(manifest, {key: units}, {key: window or 2 * workers}, dedup_dir=dedup_dir,
                        decontaminate=decontaminate)
    try:
        for chunks in FedUnits(feed, key)(0, 0):
            # copies, so a consumer holding chunks never pins Ray's shared buffer
            yield from (c.copy() for c in chunks)
    finally:
        close_feed(feed)
        if started_ray:
            import ray
            ray.shutdown()
