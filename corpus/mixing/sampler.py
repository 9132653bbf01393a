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
DataLoader workers. A live state also holds, per source, the :class:`StreamPoint` of the
unit holding the next token the source serves; a resume opens each stream at that unit,
so it re-reads at most that one unit per source, however far into a pass it is (exact as
long as the streams are deterministic). Validation chunks are chosen by a keyed hash of their
position in the pass, unless ``presplit=True`` says each stream already serves only its
split's chunks (the training pipeline holds out whole units, so held-out data gathers
fast; see ``pipelines.stream``).

Samples are dicts: ``input_ids`` and ``labels`` (``LongTensor[sequence_length]``; labels
are inputs shifted by one, ``-100`` where the target is padding), ``source`` (an index
into ``sampler.source_names``) and ``index`` (the global index). Padded input positions
hold ``pad_id`` (default 0, a real embedding row, so a 32000-row model never sees an
out-of-range id; CoreNet's pad id 32000 only ever reaches its loss, where it is ignored,
as ``-100`` is here). Only corenet mode pads.

Every window is checked against the vocabulary of the corpus's tokenizer (``corpus.json``)
before it is served: a token id outside it (a damaged shard) raises ValueError naming the
shard's ``.bin`` and the token's offset in it. One numpy max per batch (per sample when
iterated one at a time) keeps it cheap; only a refusal walks back to the chunk.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from corpus.manifest import Manifest
from corpus.mixing.chunk_streams import SPLITS, ChunkStream, OpenUnits, StreamPoint
from corpus.mixing.packing import MODES, ChunkSequences, PackedSequences, split_inputs_and_labels
from corpus.mixing.schedule import TokenMixture, deal, replay
from corpus.mixing.sources import MixedSources

STATE_FORMAT = "elm-corpus.sampler/1"
DEFAULT_VAL_FRACTION = 0.001


class MixtureSampler(IterableDataset):
    """Token-weighted, deterministic, shardable, exactly resumable training sequences.

    ``corpus_dir``: a built corpus (``corpus.json`` + ``shards/``), or ``None`` with
    ``streams`` (``{source: callable (pass, unit) returning that pass's units from there, each a
    sequence of token chunks}``, see ``chunk_streams.OpenUnits``) for live mode.
    ``weights``: ``{source: weight}``, overriding the manifest's target shares; sources left
    out get none. ``batch_size``: the per-rank batch size the consumer uses (sharding unit).
    ``val_fraction`` must be the same for the train and val samplers of one corpus.
    ``presplit`` (live mode): the streams serve only ``split``'s chunks, so every chunk is taken.
    """

    def __init__(self, corpus_dir: str | Path | None = None, sequence_length: int | None = None,
                 weights: Mapping[str, float] | None = None, mode: str = "pack", seed: int = 0,
                 split: str = "train", val_fraction: float = DEFAULT_VAL_FRACTION, rank: int = 0,
                 world_size: int = 1, *, batch_size: int = 1, pad_id: int = 0,
                 streams: Mapping[str, OpenUnits] | None = None,
                 manifest: Manifest | None = None, block_chunks: int = 8192, presplit: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if presplit and streams is None:
            raise ValueError("presplit applies to live streams only")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.mode, self.seed, self.split, self.val_fraction = mode, int(seed), split, float(val_fraction)
        self.rank, self.world_size, self.batch_size, self.pad_id = rank, world_size, batch_size, int(pad_id)
        self.block_chunks = int(block_chunks)
        self.sources = MixedSources(corpus_dir, streams, manifest, weights, split, self.val_fraction, presplit)
        self.vocab_size = self.sources.vocab_size
        if self.vocab_size is not None and not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id {self.pad_id} is outside the corpus's vocabulary of {self.vocab_size} ids")
        self.split_seed = self.manifest.seed if self.manifest is not None else 0
        self.sequence_length = int(sequence_length or (self.manifest.sequence_length if self.manifest else 2048))
        if self.sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1, got {self.sequence_length}")
        self._start = TokenMixture(self.source_names, self.sources.raw_weights)
        self._tracker: tuple[TokenMixture, list] | None = None
        self._iteration: dict | None = None
        self._points: dict[str, StreamPoint] = {}  # live: where each source's stream restarts (from a loaded state)

    # What is mixed, as `self.sources` holds it.
    corpus_dir = property(lambda self: self.sources.corpus_dir)
    manifest = property(lambda self: self.sources.manifest)
    source_names = property(lambda self: self.sources.names)
    chunk_counts = property(lambda self: self.sources.chunk_counts)

    def __getstate__(self):
        # DataLoader workers start from the sampler as configured, not from this process's iteration.
        return dict(self.__dict__, _tracker=None, _iteration=None)

    # ------------------------------------------------------------------ readers

    def _open_readers(self) -> list[PackedSequences | ChunkSequences | None]:
        """Per source, its sequences in this mode (None for sources without weight or data)."""
        streams: list[ChunkStream | None] = self.sources.open_streams(self.seed, self.split_seed, self.block_chunks, self._points)
        if self.mode == "pack":
            return [PackedSequences(s, self.sequence_length) if s is not None else None for s in streams]
        return [ChunkSequences(s, self.sequence_length, self.pad_id) if s is not None else None for s in streams]

    def _deal(self, mix: TokenMixture, readers: list, block: int, worker: int = 0, workers: int = 1):
        return deal(mix, readers, self.mode == "pack", block, self.rank, self.world_size, worker, workers)

    # ------------------------------------------------------------------ serving

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        mix = self._start.copy()
        readers = self._open_readers()
        iteration = None
        if info is None:
            iteration = self._iteration = {"mix": mix, "readers": readers, "consumed": 0, "block": self.batch_size}
        vocab = self.vocab_size
        for g, s, k in self._deal(mix, readers, self.batch_size, worker, workers):
            window = np.empty(self.sequence_length + 1, dtype=np.int64)
            real = readers[s].fill(k, window)
            if vocab is not None and window.max() >= vocab:
                self._refuse(window[None], [s], [k], readers)
            inputs, labels = split_inputs_and_labels(window, real)
            if iteration is not None:
                iteration["consumed"] += 1
            yield {"input_ids": torch.from_numpy(inputs), "labels": torch.from_numpy(labels), "source": s, "index": g}

    def batches(self, batch_size: int | None = None) -> Iterator[dict]:
        """In-process batches for this rank: ``input_ids``/``labels`` ``[B, L]``, ``source``/``index`` ``[B]``.

        ``batch_size`` defaults to the sampler's and is the sharding unit across ranks.
        """
        block = int(batch_size or self.batch_size)
        mix = self._start.copy()
        readers = self._open_readers()
        iteration = self._iteration = {"mix": mix, "readers": readers, "consumed": 0, "block": block}
        L, vocab = self.sequence_length, self.vocab_size
        dealt = self._deal(mix, readers, block)
        while True:
            windows = np.empty((block, L + 1), dtype=np.int64)
            real = np.empty(block, dtype=np.int64)
            sources = np.empty(block, dtype=np.int64)
            index = np.empty(block, dtype=np.int64)
            items = [0] * block
            for row in range(block):
                g, s, k = next(dealt)
                real[row] = readers[s].fill(k, windows[row])
                sources[row], index[row], items[row] = s, g, k
            if vocab is not None and windows.max() >= vocab:
                self._refuse(windows, sources.tolist(), items, readers)
            inputs, labels = split_inputs_and_labels(windows, real)
            iteration["consumed"] += block
            yield {"input_ids": torch.from_numpy(np.ascontiguousarray(inputs)),
                   "labels": torch.from_numpy(labels), "source": torch.from_numpy(sources),
                   "index": torch.from_numpy(index)}

    def _refuse(self, windows: np.ndarray, sources: list[int], items: list[int], readers: list) -> None:
        """Raise for the first token outside the vocabulary in ``windows``, naming its shard and offset."""
        vocab = self.vocab_size
        row = int(np.argmax(windows.max(axis=1) >= vocab))
        position = int(np.argmax(windows[row] >= vocab))
        s, token = sources[row], int(windows[row, position])
        reader = readers[s]
        i, offset = reader.origin(items[row], position)
        path, at = reader.stream.origin(i, offset)
        raise ValueError(f"{path}: token id {token} at token offset {at} is outside the vocabulary of the corpus's "
                         f"tokenizer ({vocab} ids; source {self.source_names[s]!r}); refusing to serve it to the "
                         f"model: the shard is damaged, run 'elm-corpus verify {self.corpus_dir}'")

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
        live = self.sources.live
        if n == self._start.sequences and live:
            return self._start.copy(), [None] * len(self.source_names)
        if live and self.mode == "corenet":
            # The schedule depends on chunk lengths, which only this process's own readers know: they look
            # ahead to ``n`` (another rank's sequences) without forgetting what this rank serves before it.
            if it is None or it["mix"].sequences > n:
                raise ValueError("live corenet mode reports its state only from its own in-process iterator "
                                 "(no DataLoader workers), at or past where it stands")
            mix = it["mix"].copy()
            replay(mix, [_LookAhead(r) if r is not None else None for r in it["readers"]], n, None)
            return mix, it["readers"]
        if self._tracker is None or self._tracker[0].sequences > n:
            readers = [None] * len(self.source_names) if live else self._open_readers()
            self._tracker = (self._start.copy(), readers)
        mix, readers = self._tracker
        replay(mix, readers, n, self.sequence_length if self.mode == "pack" else None)
        return mix.copy(), readers

    def state_dict(self, batches: int | None = None) -> dict:
        """Where the stream stands after this rank consumed ``batches`` batches (default: what it iterated)."""
        mix, _ = self._mixture_at(self._position(batches))
        state = {"format": STATE_FORMAT, **self._identity(), "mixture": mix.state()}
        if self.sources.live:
            state["streams"] = {name: point.to_dict() for name, point in self._stream_points(mix).items()}
        return state

    def _stream_points(self, mix: TokenMixture) -> dict[str, StreamPoint]:
        """Live: per source, the point of the unit holding the next token (pack) or chunk (corenet) ``mix`` needs.

        Found by this process's own readers, which look ahead to it without forgetting what this rank still
        serves before it (every rank reads every chunk of a live stream anyway); before any iteration, the
        points loaded last stand.
        """
        points = dict(self._points)
        readers = self._iteration["readers"] if self._iteration is not None else None
        if readers is None:
            return points
        for s, name in enumerate(self.source_names):
            if readers[s] is not None:
                pack = self.mode == "pack"
                needed = mix.items[s] * self.sequence_length if pack else mix.items[s]
                points[name] = readers[s].stream.point_ahead(needed, by_token=pack)
        return points

    def _identity(self) -> dict:
        identity = {"mode": self.mode, "sequence_length": self.sequence_length, "seed": self.seed,
                    "split": self.split, "val_fraction": self.val_fraction, "split_seed": self.split_seed,
                    "live": self.sources.live, "chunks": self.chunk_counts}
        if self.sources.presplit:  # a presplit stream holds other chunks than a chunk-hashed one at the same position
            identity["presplit"] = True
        return identity

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
                   for a, b in zip(mix.weights, TokenMixture(self.source_names, self.sources.raw_weights).weights)):
            mix = mix.reweighted(self.sources.raw_weights)
        self._start = mix
        self._points = {name: StreamPoint.from_dict(d) for name, d in state.get("streams", {}).items()}
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


class _LookAhead:
    """A live corenet reader whose costs are read ahead, forgetting nothing (see ``MixtureSampler._mixture_at``)."""

    def __init__(self, reader: ChunkSequences):
        self.cost = reader.cost_ahead
