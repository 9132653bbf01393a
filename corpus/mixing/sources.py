"""What a sampler mixes: the sources of a built corpus or of live streams, their weights, their chunk streams.

A built corpus names its sources (manifest order) and holds a fixed number of chunks per
source, which fixes the train/val split and fingerprints the corpus in a sampler's state.
Live streams name their sources themselves and are mixed by the manifest's shares unless
weights are given.
"""
from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

from corpus.manifest import Manifest
from corpus.mixing.chunk_streams import (ChunkStream, LiveChunks, OpenUnits, ShuffledChunks, SourceChunks,
                                         StreamPoint, val_chunk_count)
from corpus.store.layout import read_corpus_json, source_shards


def mixture_weights(weights: Mapping[str, float] | None, manifest: Manifest | None) -> dict[str, float]:
    """The mixture weights per source: the run's ``weights``, else the manifest's target shares."""
    return dict(weights) if weights is not None else manifest.target_shares()


def sampled_sources(weights: Mapping[str, float] | None, manifest: Manifest) -> list[str]:
    """The manifest's sources a run with these weights reads: those of positive weight (a weight that is not a
    number counts as read here; the sampler refuses it)."""
    chosen = mixture_weights(weights, manifest)
    return [s.name for s in manifest.sources
            if not isinstance(chosen.get(s.name, 0), numbers.Real) or chosen.get(s.name, 0) > 0]


class MixedSources:
    """The sources of one split, their raw weights, and (per process) their chunk streams.

    ``corpus_dir``: a built corpus, or ``None`` with ``streams`` (``{source: callable (pass, unit) returning
    that pass's units from there, each a sequence of token chunks}``, see ``chunk_streams.OpenUnits``).
    ``weights`` override the manifest's target shares.
    """

    def __init__(self, corpus_dir: str | Path | None, streams: Mapping[str, OpenUnits] | None,
                 manifest: Manifest | None, weights: Mapping[str, float] | None, split: str, val_fraction: float,
                 presplit: bool = False):
        if (corpus_dir is None) == (streams is None):
            raise ValueError("give either corpus_dir (a built corpus) or streams (live mode), not both or neither")
        self.corpus_dir = Path(corpus_dir) if corpus_dir is not None else None
        self.streams = dict(streams) if streams is not None else None
        self.split, self.val_fraction = split, val_fraction
        self.presplit = presplit  # live streams that serve only this split's chunks
        # The built corpus's tokenizer bounds every token id served (None: live, or not recorded).
        self.vocab_size: int | None = None
        recorded: dict[str, int] = {}
        if self.corpus_dir is not None:
            manifest, self.vocab_size, recorded = _built_manifest(self.corpus_dir)
            self.names = [s.name for s in manifest.sources]
        else:
            names = list(self.streams)
            if manifest is not None:
                unknown = [n for n in names if n not in {s.name for s in manifest.sources}]
                if unknown:
                    raise ValueError(f"live streams {unknown} are not sources of manifest {manifest.name!r}")
                names = [s.name for s in manifest.sources if s.name in self.streams]
            self.names = names
        self.manifest = manifest
        # Chunks per source: fixes the splits and fingerprints the corpus in the state. A source the run reads is
        # counted on disk; one it does not read (weight 0) as corpus.json records it, so that a local copy of a
        # corpus on an object store need not hold its shards.
        self.chunk_counts: dict[str, int] | None = None
        if self.corpus_dir is not None:
            read = set(sampled_sources(weights, manifest))
            self.chunk_counts = {n: SourceChunks(source_shards(self.corpus_dir, n)).n if n in read
                                 else recorded.get(n, 0) for n in self.names}
        self.raw_weights = self._resolve_weights(weights)
        self._opened: tuple[int, list] | None = None

    @property
    def live(self) -> bool:
        return self.streams is not None

    def _resolve_weights(self, weights: Mapping[str, float] | None) -> list[float]:
        names = self.names
        if weights is None and self.manifest is None:
            raise ValueError("live mode needs weights or a manifest to take target shares from")
        chosen = mixture_weights(weights, self.manifest)
        if weights is not None:
            unknown = sorted(set(chosen) - set(names))
            if unknown:
                raise ValueError(f"weights name unknown sources {unknown}; the sources are {names}")
            bad = {k: v for k, v in chosen.items() if not (isinstance(v, numbers.Real) and v >= 0)}
            if bad:
                raise ValueError(f"weights must be numbers >= 0, got {bad}")
            raw = [float(chosen.get(n, 0.0)) for n in names]
        else:
            missing = [n for n, v in chosen.items() if v > 0 and n not in names]
            if missing:
                raise ValueError(f"live mode has no stream for sources {missing}, which have target shares; "
                                 f"give them streams or pass weights")
            raw = [chosen[n] for n in names]
        if self.chunk_counts is not None:
            empty = [n for n, w in zip(names, raw) if w > 0 and self.split_size(n) == 0]
            if empty and self.split == "train":
                raise ValueError(f"{self.corpus_dir}: sources {empty} have no chunks in the train split "
                                 f"(chunks: {[self.chunk_counts[n] for n in empty]}); build them or give them weight 0")
            if empty:
                warnings.warn(f"{self.corpus_dir}: sources {empty} hold no validation chunks (too few chunks); "
                              f"the val split mixes the others only", stacklevel=4)
                raw = [0.0 if n in empty else w for n, w in zip(names, raw)]
        if sum(raw) <= 0:
            raise ValueError(f"no source has a positive weight: {dict(zip(names, raw))}")
        return raw

    def split_size(self, name: str) -> int:
        """Chunks of a built source in this split."""
        n = self.chunk_counts[name]
        n_val = val_chunk_count(n, self.val_fraction)
        return n_val if self.split == "val" else n - n_val

    def open_streams(self, seed: int, split_seed: int, block_chunks: int,
                     points: Mapping[str, StreamPoint] | None = None) -> list[ChunkStream | None]:
        """Chunk streams per source (None for sources without weight or data); fresh for live sources,
        each starting at its point in ``points`` (else at the start).

        Built streams are memory maps, opened once per process (DataLoader workers open their own).
        """
        if self.live:
            points = points or {}
            return [LiveChunks(n, self.streams[n], self.split, split_seed=split_seed, val_fraction=self.val_fraction,
                               presplit=self.presplit, start=points.get(n)) if w > 0 else None
                    for n, w in zip(self.names, self.raw_weights)]
        if self._opened is None or self._opened[0] != os.getpid():
            streams: list[ChunkStream | None] = []
            for n, w in zip(self.names, self.raw_weights):
                if w <= 0 or self.split_size(n) == 0:
                    streams.append(None)
                    continue
                chunks = SourceChunks(source_shards(self.corpus_dir, n))
                if chunks.n != self.chunk_counts[n]:
                    raise RuntimeError(f"{self.corpus_dir}: source {n!r} changed while in use "
                                       f"({self.chunk_counts[n]} chunks, now {chunks.n})")
                streams.append(ShuffledChunks(chunks, n, self.split, seed=seed, split_seed=split_seed,
                                              val_fraction=self.val_fraction, block_chunks=block_chunks))
            self._opened = (os.getpid(), streams)
        return self._opened[1]

    def __getstate__(self):
        # Workers reopen the memory maps themselves rather than receive pickled copies of them.
        return dict(self.__dict__, _opened=None)


def _built_manifest(corpus_dir: Path) -> tuple[Manifest, int | None, dict[str, int]]:
    """The manifest a corpus was built from, its tokenizer's vocabulary size (None when not recorded), and the
    chunks corpus.json records per source."""
    corpus = read_corpus_json(corpus_dir)
    if not isinstance(corpus.get("manifest"), dict):
        raise ValueError(f"{corpus_dir}/corpus.json has no 'manifest'; rebuild it with 'elm-corpus build'")
    # The build stores {"path", "dump"}; a bare manifest dump is accepted too.
    manifest = Manifest.model_validate(corpus["manifest"].get("dump", corpus["manifest"]))
    if corpus.get("status", "complete") != "complete":
        warnings.warn(f"{corpus_dir}: corpus status is {corpus['status']!r}; the sampler uses the shards "
                      f"present now, and its states will not load once the corpus changes", stacklevel=4)
    vocab_size = (corpus.get("tokenizer") or {}).get("vocab_size")
    recorded = {name: sum(int(row.get("chunks", 0)) for row in source.get("shards", []))
                for name, source in (corpus.get("sources") or {}).items()}
    return manifest, int(vocab_size) if vocab_size else None, recorded
