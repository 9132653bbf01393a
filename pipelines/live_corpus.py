"""The live pipeline as a corpus a training job reads (``corpus.mixing.corpus_source.CorpusSource``): a manifest's
sources tokenized on Ray while the job's ranks sample them, never written to disk.

The ranks open it together, at their first sampler. Rank 0 starts Ray (with its token
authentication, ``pipelines.runner.start_ray``), plans each weighted source's units once,
holds some out for validation (``pipelines.stream.split_units``) and opens the job's one feed
(``pipelines.stream.UnitFeed``), which starts 2 units per worker ahead of the readers, split over
the sources by weight; the other ranks join that Ray and that feed, whose address reaches them
through the ranks' collective. Each rank reads each stream through its own ``FedUnits``.

What the feed had started ahead goes into every checkpoint (``corpus_source.LivePipeline``), so a
resumed run can say how many units it tokenizes again. A unit that fails for good, or a Ray that
may not start, is a ``CorpusError`` naming it in one line.
"""
from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

import numpy as np

from corpus.cleaning.contamination import Decontamination
from corpus.manifest import Manifest, load_manifest
from corpus.mixing.corpus_source import CorpusError, Ranks, Sampling
from corpus.mixing.sampler import DEFAULT_VAL_FRACTION, MixtureSampler
from corpus.mixing.sources import mixture_weights
from corpus.paths import corpus_name, default_corpus_dir
from corpus.store.location import store_environment
from corpus.tokenizer.tokenizer import Tokenizer
from pipelines.build import decontamination
from pipelines.dedup import NoRemovals, live_removals
from pipelines.plan import DEFAULT_UNIT_BYTES, WorkUnit
from pipelines.runner import RayAuthRefused, start_ray
from pipelines.stream import (FedUnits, Key, StreamError, close_feed, feed_furthest, feed_report, feed_units_between,
                              join_feed, open_feed, split_units, split_window, stream_key, stream_units)


class LiveUnits:
    """A rank's reader of one stream of the feed, whose failure for good is the corpus's (a CorpusError)."""

    def __init__(self, fed: FedUnits):
        self.fed = fed

    def __call__(self, passes: int, first: int) -> Iterator[list[np.ndarray]]:
        try:
            yield from self.fed(passes, first)
        except StreamError as e:
            raise CorpusError(f"the live pipeline stopped: {e}") from e


def _start_ray(**kwargs) -> None:
    """Ray for the feed; an environment that turns its authentication off cannot serve the corpus."""
    try:
        start_ray(**kwargs)
    except RayAuthRefused as e:
        raise CorpusError(str(e)) from None


class LiveCorpus:
    """The sources of ``manifest`` tokenized live (``sample``: read from the offline sample mirror) for one training
    job: ``workers`` Ray CPUs, on a local Ray or the cluster at ``address``; units of ``unit_bytes`` of input."""

    def __init__(self, manifest: Manifest, tokenizer: Tokenizer, name: str | None = None, sample: bool = False,
                 workers: int = 2, address: str | None = None, unit_bytes: int = DEFAULT_UNIT_BYTES):
        self.manifest, self.sample = manifest, sample
        self.name = name or corpus_name(manifest.name, sample)
        self.fingerprint = manifest.build_fingerprint(tokenizer.sha256)
        self.tokenizer = {"spec": tokenizer.spec, "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size}
        self.workers, self.address, self.unit_bytes = workers, address, unit_bytes
        self.feed = None  # the job's feed once the ranks opened it (`UnitFeed`, or its actor)
        self._owner = False  # this rank opened the feed (rank 0), so it closes it
        self._plans: dict[Key, list[WorkUnit]] | None = None

    @classmethod
    def open(cls, manifest: str, **settings) -> LiveCorpus:
        """The live corpus of the manifest file ``manifest``, with its tokenizer; nothing runs until a sampler."""
        loaded = load_manifest(manifest)
        return cls(loaded, Tokenizer(loaded.tokenizer.model, loaded.text.normalize), **settings)

    def where(self) -> str:
        return f"the live pipeline of manifest {self.manifest.name}"

    def describe(self) -> dict:
        return {"name": self.name, "dir": None, "fingerprint": self.fingerprint}

    def sampler(self, split: str, ranks: Ranks, sampling: Sampling, left_out: Collection[str] = ()) -> MixtureSampler:
        weights = self._held_out_weights(sampling.weights, left_out) if split == "val" else sampling.weights
        feed = self._open_feed(ranks, sampling.weights)
        # sources without weight get a reader too, which the sampler never opens
        streams = {s.name: LiveUnits(FedUnits(feed, stream_key(s.name, split), ranks.rank))
                   for s in self.manifest.sources}
        # The pipeline splits by whole units (pipelines.stream), so the sampler takes every chunk it serves.
        return sampling.sampler(split, ranks, streams=streams, manifest=self.manifest, presplit=True, weights=weights)

    def _open_feed(self, ranks: Ranks, weights: Mapping[str, float] | None):
        """The job's one feed: rank 0 starts Ray and the feed, the other ranks join them.

        Every rank calls this at the same point (its first sampler), since the feed's address
        reaches the others through a collective.
        """
        if self.feed is not None:
            return self.feed
        where = None
        if ranks.rank == 0:
            # started here so that no single stream owns (and shuts down) Ray
            _start_ray(workers=self.workers, address=self.address)
            import ray  # only now: Ray reads its authentication settings, which start_ray sets, when imported
            units = self._planned(weights)
            ahead = {stream_key(name, "train"): n
                     for name, n in split_window(mixture_weights(weights, self.manifest), 2 * self.workers).items()}
            # held-out units are read once, at the first evaluation: none started ahead
            ahead.update({key: 0 for key in units if key not in ahead})
            # a cluster's nodes have none of this process's store settings: the tasks take them along
            env = store_environment() if self.address else None
            self.feed, name = open_feed(self.manifest, units, ahead, ranks.world_size, env=env,
                                        dedup_dir=self._removals(units), decontaminate=self._decontamination())
            self._owner = True
            where = (ray.get_runtime_context().gcs_address, name)
        if ranks.world_size > 1:
            address, name = ranks.gather(where)[0]
            if ranks.rank != 0:
                _start_ray(address=self.address or address, ship_code=False)
                self.feed = join_feed(name)
        return self.feed

    def _planned(self, weights: Mapping[str, float] | None) -> dict[Key, list[WorkUnit]]:
        """Per stream key, the units of the weighted sources' streams, planned once in this process (on the real
        upstream, planning lists its files). The others are never read, so never planned."""
        if self._plans is None:
            self._plans = {}
            for name, weight in mixture_weights(weights, self.manifest).items():
                if weight > 0:
                    every = stream_units(self.manifest, name, self.sample, self.unit_bytes)
                    for split, units in split_units(every, DEFAULT_VAL_FRACTION, self.manifest.seed).items():
                        self._plans[stream_key(name, split)] = units
        return self._plans

    def _removals(self, units: Mapping[Key, list[WorkUnit]]) -> str | None:
        """Where the removals of a deduplicating manifest are: the folder `elm-corpus dedup` searched these units in
        (the build's own folder for the manifest)."""
        if self.manifest.dedup is None:
            return None
        try:
            return live_removals(self.manifest, self.fingerprint, default_corpus_dir(self.manifest.name, self.sample),
                                 [u for planned in units.values() for u in planned])
        except NoRemovals as e:
            raise CorpusError(f"--stream: {e}") from None

    def _decontamination(self) -> Decontamination | None:
        """The task n-grams of the manifest's ``decontaminate`` block, loaded as a build loads them."""
        try:
            return decontamination(self.manifest)
        except ValueError as e:
            raise CorpusError(f"--stream: {e}") from None

    def _held_out_weights(self, weights: Mapping[str, float] | None,
                          left_out: Collection[str] = ()) -> dict[str, float]:
        """The training weights, less the sources too small to hold out a unit (one-unit sources) and ``left_out``."""
        held, plans = mixture_weights(weights, self.manifest), self._planned(weights)
        for name, weight in held.items():
            if name in left_out or (weight > 0 and not plans[stream_key(name, "val")]):
                held[name] = 0.0
        if not any(w > 0 for w in held.values()):
            raise ValueError("no weighted source holds out a unit that gives chunks for validation")
        return held

    # LivePipeline: what a checkpoint and the metrics see of the feed

    def started_ahead(self) -> dict:
        return {key: list(place) for key, place in feed_furthest(self.feed).items()}

    def units_reread(self, state: dict) -> int:
        """Per source, the unit the resumed stream stopped in and those the feed had started ahead of it."""
        ahead = state.get("started_ahead", {})
        reread = 0
        for name, point in state.get("streams", {}).items():
            key = stream_key(name, "train")
            if key in ahead:
                reread += feed_units_between(self.feed, key, (point["passes"], point["unit"]), tuple(ahead[key]))
        return reread

    def report(self) -> dict:
        return feed_report(self.feed)

    def close(self) -> None:
        """Stop the feed (rank 0) or leave its Ray (the other ranks)."""
        if self.feed is None:
            return
        if self._owner:
            close_feed(self.feed)
        else:
            import ray
            ray.shutdown()
        self.feed = None
