"""The token-weighted mixture sampler: training sequences from a built (or live) corpus.

``MixtureSampler`` is a ``torch.utils.data.IterableDataset``. Every sequence it serves
has a *global index* ``g`` in one endless stream that is a pure function of the corpus,
the weights, the mode and the seed:

1. the mixture (:mod:`corpus.mixing.schedule`) deals index ``g`` to a source ``s`` by tokens;
2. that source's ``k``-th sequence (``k`` = how many it has served so far) is cut from
   its chunk stream (:mod:`corpus.mixing.chunk_streams`) in pack or corenet mode
   (:mod:`corpus.mixing.packing`).

Sharding is by blocks of ``batch_size`` consecutive indices: counting from where the
sampler started, block ``b`` belongs to rank ``b % world_size`` and, within that rank, to
DataLoader worker ``(b // world_size) % num_workers``. A DataLoader reads its workers'
batches round-robin, so after ``t`` batches per rank the ranks together have consumed
exactly the first ``t * world_size * batch_size`` indices: no overlap, no gap, and the
union over ranks is the single-process stream.

Exact resume: the state is the mixture's counters at a global index. With DataLoader
workers the sampler in the training process cannot see what the workers served, so the
trainer says how many batches this rank consumed: ``state_dict(batches=t)``; the sampler
replays the schedule (counters only, no tokens) to that index. Iterated in-process
(``batches()`` or ``num_workers=0``) it counts by itself and ``state_dict()`` suffices.

Trainer recipe (DDP, DataLoader workers)::

    sampler = MixtureSampler(corpus, rank=rank, world_size=world, batch_size=B, seed=seed)
    if resuming:
        sampler.load_state_dict(checkpoint["sampler"])     # before iterating
    loader = DataLoader(sampler, batch_size=B, num_workers=W)
    for t, batch in enumerate(loader, start=1):          # t: batches consumed since the load
        ...
        log(sampler.shares(batches=t))                   # target vs achieved share per source
        checkpoint["sampler"] = sampler.state_dict(batches=t)

The replay behind ``state_dict(batches=t)`` is incremental (about 4 us per sequence, each
call continuing from the last), and a loaded state holds the counters, so resuming never
replays from the start. World size and batch size may change across a resume.

Live mode (``streams=``, no shards on disk) mixes the same way. Each consumer reads
every live stream in full (there is no index to skip by), so use one process without
DataLoader workers; resume skips each source's consumed chunks, which is exact as long
as the streams are deterministic. Validation chunks are chosen by a keyed hash of their
position in the pass.

Samples are dicts: ``input_ids`` and ``labels`` (``LongTensor[sequence_length]``; labels
are inputs shifted by one, ``-100`` where the target is padding), ``source`` (an index
into ``sampler.source_names``) and ``index`` (the global index). Padded input positions
hold ``pad_id`` (default 0, a real embedding row, so a 32000-row model never sees an
out-of-range id; CoreNet's pad id 32000 only ever reaches its loss, where it is ignored,
as ``-100`` is here). Only corenet mode pads.
"""
from __future__ import annotations

import math
import numbers
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from corpus.mixing.chunk_streams import SPLITS, LiveChunks, ShuffledChunks, SourceChunks, val_chunk_count
from corpus.manifest import Manifest
from corpus.mixing.schedule import TokenMixture
from corpus.mixing.packing import MODES, ChunkSequences, PackedSequences, split_inputs_and_labels
from corpus.store.layout import read_corpus_json, source_shards

STATE_FORMAT = "elm-corpus.mixing.sampler/1"
DEFAULT_VAL_FRACTION = 0.001


class MixtureSampler(IterableDataset):
    """Token-weighted, deterministic, shardable, exactly resumable training sequences.

    ``corpus_dir``: a built corpus (``corpus.json`` + ``shards/``), or ``None`` with
    ``streams`` (``{source: callable returning an iterable of token chunks}``) for live mode.
    ``weights``: ``{source: weight}``, overriding the manifest's target shares; sources left
    out get none. ``batch_size``: the per-rank batch size the consumer uses (sharding unit).
    ``val_fraction`` must be the same for the train and val samplers of one corpus.
    """

    def __init__(self, corpus_dir: str | Path | None = None, sequence_length: int | None = None,
                 weights: Mapping[str, float] | None = None, mode: str = "pack", seed: int = 0,
                 split: str = "train", val_fraction: float = DEFAULT_VAL_FRACTION, rank: int = 0,
                 world_size: int = 1, *, batch_size: int = 1, pad_id: int = 0,
                 streams: Mapping[str, Callable[[], Iterable]] | None = None,
                 manifest: Manifest | None = None, block_chunks: int = 8192):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if (corpus_dir is None) == (streams is None):
            raise ValueError("give either corpus_dir (a built corpus) or streams (live mode), not both or neither")
        self.corpus_dir = Path(corpus_dir) if corpus_dir is not None else None
        self.mode, self.seed, self.split, self.val_fraction = mode, int(seed), split, float(val_fraction)
        self.rank, self.world_size, self.batch_size, self.pad_id = rank, world_size, batch_size, int(pad_id)
        self.block_chunks = int(block_chunks)
        self._streams_spec = dict(streams) if streams is not None else None

        if self.corpus_dir is not None:
            corpus = read_corpus_json(self.corpus_dir)
            if not isinstance(corpus.get("manifest"), dict):
                raise ValueError(f"{self.corpus_dir}/corpus.json has no 'manifest'; rebuild it with 'elm-corpus build'")
            # The build stores {"path", "dump"}; a bare manifest dump is accepted too.
            manifest = Manifest.model_validate(corpus["manifest"].get("dump", corpus["manifest"]))
            if corpus.get("status", "complete") != "complete":
                warnings.warn(f"{self.corpus_dir}: corpus status is {corpus['status']!r}; the sampler uses the shards "
                              f"present now, and its states will not load once the corpus changes", stacklevel=2)
            self.source_names = [s.name for s in manifest.sources]
        else:
            names = list(self._streams_spec)
            if manifest is not None:
                unknown = [n for n in names if n not in {s.name for s in manifest.sources}]
                if unknown:
                    raise ValueError(f"live streams {unknown} are not sources of manifest {manifest.name!r}")
                names = [s.name for s in manifest.sources if s.name in self._streams_spec]
            self.source_names = names
        self.manifest = manifest
        self.split_seed = manifest.seed if manifest is not None else 0
        self.sequence_length = int(sequence_length or (manifest.sequence_length if manifest else 2048))
        if self.sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1, got {self.sequence_length}")

        # Chunks per source on disk: fixes the splits and fingerprints the corpus in the state.
        self.chunk_counts: dict[str, int] | None = None
        if self.corpus_dir is not None:
            self.chunk_counts = {n: SourceChunks(source_shards(self.corpus_dir, n)).n for n in self.source_names}
        self._raw_weights = self._resolve_weights(weights)
        self._start = TokenMixture(self.source_names, self._raw_weights)
        self._opened: tuple[int, list] | None = None
        self._tracker: tuple[TokenMixture, list] | None = None
        self._iteration: dict | None = None

    # ------------------------------------------------------------------ configuration

    def _resolve_weights(self, weights: Mapping[str, float] | None) -> list[float]:
        names = self.source_names
        if weights is not None:
            unknown = sorted(set(weights) - set(names))
            if unknown:
                raise ValueError(f"weights name unknown sources {unknown}; the sources are {names}")
            bad = {k: v for k, v in weights.items() if not (isinstance(v, numbers.Real) and v >= 0)}
            if bad:
                raise ValueError(f"weights must be numbers >= 0, got {bad}")
            raw = [float(weights.get(n, 0.0)) for n in names]
        elif self.manifest is not None:
            shares = self.manifest.target_shares()
            missing = [n for n, v in shares.items() if v > 0 and n not in names]
            if missing:
                raise ValueError(f"live mode has no stream for sources {missing}, which have target shares; "
                                 f"give them streams or pass weights")
            raw = [shares[n] for n in names]
        else:
            raise ValueError("live mode needs weights or a manifest to take target shares from")
        if self.chunk_counts is not None:
            empty = [n for n, w in zip(names, raw) if w > 0 and self._split_size(n) == 0]
            if empty and self.split == "train":
                raise ValueError(f"{self.corpus_dir}: sources {empty} have no chunks in the train split "
                                 f"(chunks: {[self.chunk_counts[n] for n in empty]}); build them or give them weight 0")
            if empty:
                warnings.warn(f"{self.corpus_dir}: sources {empty} hold no validation chunks (too few chunks); "
                              f"the val split mixes the others only", stacklevel=3)
                raw = [0.0 if n in empty else w for n, w in zip(names, raw)]
        if sum(raw) <= 0:
            raise ValueError(f"no source has a positive weight: {dict(zip(names, raw))}")
        return raw

    def _split_size(self, name: str) -> int:
        n = self.chunk_counts[name]
        n_val = val_chunk_count(n, self.val_fraction)
        return n_val if self.split == "val" else n - n_val

    def __getstate__(self):
        # Workers reopen the memory maps themselves rather than receive pickled copies of them.
        state = dict(self.__dict__)
        state.update(_opened=None, _tracker=None, _iteration=None)
        return state

    # ------------------------------------------------------------------ streams and readers

    def _open_streams(self) -> list:
        """Chunk streams per source (None for sources without weight or data); fresh for live sources."""
        if self._streams_spec is not None:
            return [LiveChunks(n, self._streams_spec[n], self.split, split_seed=self.split_seed,
                               val_fraction=self.val_fraction) if w > 0 else None
                    for n, w in zip(self.source_names, self._raw_weights)]
        if self._opened is None or self._opened[0] != os.getpid():
            streams = []
            for n in self.source_names:
                if self._split_size(n) == 0:
                    streams.append(None)
                    continue
                chunks = SourceChunks(source_shards(self.corpus_dir, n))
                if chunks.n != self.chunk_counts[n]:
                    raise RuntimeError(f"{self.corpus_dir}: source {n!r} changed while in use "
                                       f"({self.chunk_counts[n]} chunks, now {chunks.n})")
                streams.append(ShuffledChunks(chunks, n, self.split, seed=self.seed, split_seed=self.split_seed,
                                              val_fraction=self.val_fraction, block_chunks=self.block_chunks))
            self._opened = (os.getpid(), streams)
        return self._opened[1]

    def _readers(self, streams: list) -> list:
        if self.mode == "pack":
            return [PackedSequences(s, self.sequence_length) if s is not None else None for s in streams]
        return [ChunkSequences(s, self.sequence_length, self.pad_id) if s is not None else None for s in streams]

    def _deal(self, mix: TokenMixture, readers: list, block: int, rank: int, world: int,
              worker: int, workers: int) -> Iterator[tuple[int, int, int]]:
        """Deal every global index from ``mix`` on; yield ``(index, source, k)`` for those this consumer owns.

        Each sequence is committed to the mixture before it is handed out, so ``mix``
        always describes the stream just after the last sequence yielded.
        """
        start = mix.sequences
        costs = self._next_costs(mix, readers)
        pack, stale = self.mode == "pack", -1
        while True:
            if stale >= 0:
                # Looked up only now: a live stream forgets a chunk once the next one is read.
                costs[stale] = readers[stale].cost(mix.items[stale])
            g = mix.sequences
            s = mix.pick(costs)
            k = mix.items[s]
            b = (g - start) // block
            mix.commit(s, costs[s])
            stale = -1 if pack else s
            if b % world == rank and (b // world) % workers == worker:
                yield g, s, k

    def _next_costs(self, mix: TokenMixture, readers: list) -> list[int]:
        """Token cost of each source's next sequence (0 for sources that are never dealt)."""
        return [r.cost(mix.items[s]) if r is not None and mix.weights[s] > 0 else 0
                for s, r in enumerate(readers)]

    # ------------------------------------------------------------------ serving

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        mix = self._start.copy()
        readers = self._readers(self._open_streams())
        iteration = None
        if info is None:
            iteration = self._iteration = {"mix": mix, "readers": readers, "consumed": 0, "block": self.batch_size}
        for g, s, k in self._deal(mix, readers, self.batch_size, self.rank, self.world_size, worker, workers):
            window = np.empty(self.sequence_length + 1, dtype=np.int64)
            inputs, labels = split_inputs_and_labels(window, readers[s].fill(k, window))
            if iteration is not None:
                iteration["consumed"] += 1
            yield {"input_ids": torch.from_numpy(inputs), "labels": torch.from_numpy(labels), "source": s, "index": g}

    def batches(self, batch_size: int | None = None) -> Iterator[dict]:
        """In-process batches for this rank: ``input_ids``/``labels`` ``[B, L]``, ``source``/``index`` ``[B]``.

        ``batch_size`` defaults to the sampler's and is the sharding unit across ranks.
        """
        block = int(batch_size or self.batch_size)
        mix = self._start.copy()
        readers = self._readers(self._open_streams())
        iteration = self._iteration = {"mix": mix, "readers": readers, "consumed": 0, "block": block}
        L = self.sequence_length
        dealt = self._deal(mix, readers, block, self.rank, self.world_size, 0, 1)
        while True:
            windows = np.empty((block, L + 1), dtype=np.int64)
            labels = np.empty((block, L), dtype=np.int64)
            sources = np.empty(block, dtype=np.int64)
            index = np.empty(block, dtype=np.int64)
            for row in range(block):
                g, s, k = next(dealt)
                real = readers[s].fill(k, windows[row])
                labels[row] = windows[row, 1:]
                if real < L + 1:
                    labels[row, max(real - 1, 0):] = -100
                sources[row], index[row] = s, g
            iteration["consumed"] += block
            yield {"input_ids": torch.from_numpy(np.ascontiguousarray(windows[:, :-1])),
                   "labels": torch.from_numpy(labels), "source": torch.from_numpy(sources),
                   "index": torch.from_numpy(index)}

    # ------------------------------------------------------------------ state

    def _position(self, batches: int | None) -> int:
        """The global index reached once this rank has consumed ``batches`` batches (all ranks in step)."""
        start = self._start.sequences
        it = self._iteration
        block = it["block"] if it is not None else self.batch_size
        if batches is not None:
            if batches < 0:
                raise ValueError(f"batches must be >= 0, got {batches}")
            return start + batches * self.world_size * block
        if it is None:
            return start
        consumed = it["consumed"]
        if self.world_size == 1:
            return start + consumed
        if consumed % block:
            raise ValueError(f"state_dict() mid-batch: this rank consumed {consumed} sequences, "
                             f"not a whole number of batches of {block}")
        return start + consumed // block * self.world_size * block

    def _mixture_at(self, n: int) -> tuple[TokenMixture, list]:
        it = self._iteration
        if it is not None and it["mix"].sequences == n:
            return it["mix"].copy(), it["readers"]
        if n == self._start.sequences and self._streams_spec is not None:
            return self._start.copy(), [None] * len(self.source_names)
        if self._streams_spec is not None and self.mode == "corenet":
            raise ValueError("live corenet mode can report state only where its own in-process iterator stands "
                             "(one rank, no DataLoader workers): the schedule depends on chunk lengths")
        if self._tracker is None or self._tracker[0].sequences > n:
            readers = self._readers(self._open_streams()) if self._streams_spec is None else \
                [None] * len(self.source_names)
            self._tracker = (self._start.copy(), readers)
        mix, readers = self._tracker
        if mix.sequences < n:
            costs = self._next_costs(mix, readers) if self.mode == "corenet" else [self.sequence_length] * len(readers)
            while mix.sequences < n:
                s = mix.pick(costs)
                mix.commit(s, costs[s])
                if self.mode == "corenet":
                    costs[s] = readers[s].cost(mix.items[s])
        return mix.copy(), readers

    def state_dict(self, batches: int | None = None) -> dict:
        """Where the stream stands after this rank consumed ``batches`` batches (default: what it iterated)."""
        mix, _ = self._mixture_at(self._position(batches))
        return {"format": STATE_FORMAT, **self._identity(), "mixture": mix.state()}

    def _identity(self) -> dict:
        return {"mode": self.mode, "sequence_length": self.sequence_length, "seed": self.seed,
                "split": self.split, "val_fraction": self.val_fraction, "split_seed": self.split_seed,
                "live": self._streams_spec is not None, "chunks": self.chunk_counts}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken; new weights start a new segment without replaying data."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a sampler state (format {state.get('format')!r}, expected {STATE_FORMAT!r})")
        ours = self._identity()
        diffs = [f"{k}: saved {state.get(k)!r}, now {v!r}" for k, v in ours.items() if state.get(k) != v]
        if diffs:
            raise ValueError("the sampler state does not fit this sampler (" + "; ".join(diffs) + ")")
        saved = state["mixture"]
        lost = [n for n, k in saved["items"].items() if n not in self.source_names and k > 0]
        if lost:
            raise ValueError(f"the sampler state has served sources {lost}, which this sampler does not have")
        mix = TokenMixture.from_state(self.source_names, saved)
        if not all(math.isclose(a, b, rel_tol=0, abs_tol=1e-12)
                   for a, b in zip(mix.weights, TokenMixture(self.source_names, self._raw_weights).weights)):
            mix = mix.reweighted(self._raw_weights)
        self._start = mix
        self._tracker = None
        self._iteration = None

    def shares(self, batches: int | None = None) -> dict[str, dict]:
        """Per source: target share, achieved share (since the weights took effect), tokens served, epochs."""
        mix, readers = self._mixture_at(self._position(batches))
        total = mix.segment_total
        out = {}
        for s, name in enumerate(self.source_names):
            reader = readers[s] if s < len(readers) else None
            out[name] = {"target": mix.weights[s],
                         "achieved": mix.segment_tokens[s] / total if total else 0.0,
                         "tokens": mix.tokens[s],
                         "epochs": reader.epochs(mix.items[s]) if reader is not None else 0.0}
        return out
