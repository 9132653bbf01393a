"""Chunk streams: one source's chunks as an endless, ordered stream the sampler reads from.

A stream is addressed by *ordinal* ``i`` (the i-th chunk served, across epochs) and by
*token position* ``p`` (offset into the concatenation of those chunks); :class:`ChunkStream` is what
the sampler reads of one. Two kinds:

- :class:`ShuffledChunks` reads a built corpus: one split (train or val) of one source,
  each epoch in a fresh seeded order. Orders are keyed permutations over the
  memory-mapped ``.idx`` files, evaluated in blocks, so nothing is materialised.
- :class:`LiveChunks` pulls chunks, a unit at a time, from a callable (the Ray pipeline's
  live stream) in the order it produces them, repeating the pass when it runs dry. It reads
  forward only, and can start at any unit (:class:`StreamPoint`), which is how a resume
  skips what was consumed without reading it again.

The validation split is held out per source and never overlaps train: on disk the
first ``val_chunk_count(n, f)`` positions of a keyed permutation of all ``n`` chunks
are validation and the rest are train; live, a chunk is validation when a keyed hash
of its position in the pass falls below ``f``, unless the streams are split already
(``presplit``: the training pipeline holds out whole units and serves each split its own).
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from corpus.mixing.permutation import KeyedPermutation, derive_key, unit_hash
from corpus.store.shards import Shard

SPLITS = ("train", "val")


class ChunkStream(Protocol):
    """One split of one source as the sampler reads it (:class:`ShuffledChunks`, :class:`LiveChunks`).

    Beyond it, a built stream says where a chunk lies on disk (``origin``, for refusing a damaged shard),
    and a live one looks ahead without forgetting (``length_ahead``, ``point_ahead``, for its state).
    """

    source: str
    split: str

    def chunk(self, i: int) -> np.ndarray:
        """The chunk at ordinal ``i`` (uint16 token ids, BOS ... EOS)."""
        ...

    def length(self, i: int) -> int:
        """The length in tokens of the chunk at ordinal ``i``."""
        ...

    def locate(self, p: int) -> tuple[int, int]:
        """The ordinal of the chunk that holds token position ``p``, and that chunk's start position."""
        ...

    def epochs(self, tokens: int | None = None, chunks: int | None = None) -> float:
        """Passes over the split that ``tokens`` consumed tokens (or ``chunks`` consumed chunks) make."""
        ...


def val_chunk_count(n: int, fraction: float) -> int:
    """Chunks held out for validation: ceil(fraction * n), at least one, never all of a source."""
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, math.ceil(fraction * n))


class SourceChunks:
    """Every chunk of one source across its shards, numbered 0..n-1 in shard order."""

    def __init__(self, shards: list[Shard]):
        self.shards = shards
        self.first = np.zeros(len(shards) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in shards], out=self.first[1:])
        self.n = int(self.first[-1])
        self.num_tokens = sum(s.num_tokens for s in shards)
        # Plain ndarray views of the maps: slicing an np.memmap runs Python code on every cut.
        self.tokens = [s.tokens.view(np.ndarray) for s in shards]

    def spans(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For chunk ids: the shard holding each, its first token in that shard, its length."""
        shard = np.searchsorted(self.first, ids, side="right") - 1
        begin = np.empty(len(ids), dtype=np.int64)
        length = np.empty(len(ids), dtype=np.int64)
        for s in np.unique(shard):
            where = shard == s if len(self.shards) > 1 else slice(None)
            begin[where], length[where] = self.shards[s].spans(ids[where] - self.first[s])
        return shard, begin, length


@dataclass
class _Block:
    """Chunks ``first .. first+len-1`` of one epoch's order, with their spans."""
    shard: list[int]
    begin: list[int]
    length: list[int]
    starts: list[int]        # token offset of each chunk from the block's start, plus the block's total
    offset: int              # token offset of the block from the epoch's start


class ShuffledChunks:
    """One split of one source, repeated in epochs, each epoch in its own seeded order."""

    def __init__(self, chunks: SourceChunks, source: str, split: str, *, seed: int, split_seed: int,
                 val_fraction: float, block_chunks: int = 8192):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.chunks, self.source, self.split = chunks, source, split
        self.seed, self.block_chunks = seed, int(block_chunks)
        n_val = val_chunk_count(chunks.n, val_fraction)
        self._split_order = KeyedPermutation(chunks.n, derive_key("split", split_seed, source))
        self._base, self.n = (0, n_val) if split == "val" else (n_val, chunks.n - n_val)
        self.epoch_tokens = self._split_tokens(n_val)
        self._epoch_order: dict[int, KeyedPermutation] = {}
        self._block_offsets: dict[int, list[int]] = {}
        self._blocks: dict[tuple[int, int], _Block] = {}
        self._recent: tuple[int, int, _Block] = (-1, 0, None)   # ordinal range [lo, hi) of the last block used

    def _split_tokens(self, n_val: int) -> int:
        val_tokens = 0
        for lo in range(0, n_val, 1 << 20):
            ids = self._split_order(np.arange(lo, min(n_val, lo + (1 << 20))))
            val_tokens += int(self.chunks.spans(ids)[2].sum())
        return val_tokens if self.split == "val" else self.chunks.num_tokens - val_tokens

    def chunk_ids(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        """Source-wide chunk ids at ``positions`` of ``epoch``'s order."""
        order = self._epoch_order.get(epoch)
        if order is None:
            if len(self._epoch_order) > 2:
                self._epoch_order.clear()
            order = self._epoch_order[epoch] = KeyedPermutation(
                self.n, derive_key("order", self.seed, self.source, self.split, epoch))
        return self._split_order(self._base + order(positions))

    def _block(self, epoch: int, b: int) -> _Block:
        block = self._blocks.get((epoch, b))
        if block is not None:
            return block
        offsets = self._offsets_through(epoch, b)
        lo = b * self.block_chunks
        ids = self.chunk_ids(epoch, np.arange(lo, min(self.n, lo + self.block_chunks)))
        shard, begin, length = self.chunks.spans(ids)
        starts = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(length, out=starts[1:])
        block = _Block(shard.tolist(), begin.tolist(), length.tolist(), starts.tolist(), offsets[b])
        if len(self._blocks) >= 2 * len(SPLITS) + 2:
            self._blocks.clear()
        self._blocks[(epoch, b)] = block
        return block

    def _offsets_through(self, epoch: int, b: int) -> list[int]:
        """Token offsets of blocks 0..b+1 of ``epoch``, computed once in order."""
        offsets = self._block_offsets.get(epoch)
        if offsets is None:
            if len(self._block_offsets) > 2:
                self._block_offsets.clear()
            offsets = self._block_offsets[epoch] = [0]
        while len(offsets) < b + 2 and (len(offsets) - 1) * self.block_chunks < self.n:
            lo = (len(offsets) - 1) * self.block_chunks
            ids = self.chunk_ids(epoch, np.arange(lo, min(self.n, lo + self.block_chunks)))
            offsets.append(offsets[-1] + int(self.chunks.spans(ids)[2].sum()))
        return offsets

    def _where(self, i: int) -> tuple[_Block, int]:
        lo, hi, block = self._recent
        if lo <= i < hi:
            return block, i - lo
        epoch, j = divmod(i, self.n)
        b, r = divmod(j, self.block_chunks)
        block = self._block(epoch, b)
        lo = i - r
        self._recent = (lo, lo + len(block.length), block)
        return block, r

    def length(self, i: int) -> int:
        block, r = self._where(i)
        return block.length[r]

    def chunk(self, i: int) -> np.ndarray:
        block, r = self._where(i)
        a = block.begin[r]
        return self.chunks.tokens[block.shard[r]][a:a + block.length[r]]

    def origin(self, i: int, offset: int) -> tuple[Path, int]:
        """Where token ``offset`` of the chunk at ordinal ``i`` lies on disk: its ``.bin`` and token offset there."""
        block, r = self._where(i)
        return self.chunks.shards[block.shard[r]].stem.with_suffix(".bin"), block.begin[r] + offset

    def locate(self, p: int) -> tuple[int, int]:
        """The ordinal of the chunk that holds token position ``p``, and that chunk's start position."""
        epoch, q = divmod(p, self.epoch_tokens)
        offsets = self._block_offsets.get(epoch) or [0]
        while offsets[-1] <= q and (len(offsets) - 1) * self.block_chunks < self.n:
            offsets = self._offsets_through(epoch, len(offsets) - 1)
        b = bisect.bisect_right(offsets, q) - 1
        block = self._block(epoch, b)
        r = bisect.bisect_right(block.starts, q - block.offset) - 1
        i = epoch * self.n + b * self.block_chunks + r
        return i, epoch * self.epoch_tokens + block.offset + block.starts[r]

    def epochs(self, tokens: int | None = None, chunks: int | None = None) -> float:
        """Passes over this split that ``tokens`` consumed tokens (or ``chunks`` consumed chunks) make."""
        if chunks is not None:
            return chunks / self.n
        return tokens / self.epoch_tokens


@dataclass(frozen=True)
class StreamPoint:
    """Where a live stream (re)starts: a unit of a pass, and what came before that unit.

    A live stream is read unit by unit (a unit is one slice of one input file, see
    ``pipelines.plan``). The point of the unit holding the next chunk a sampler needs is
    what a checkpoint saves: a resumed stream opens that unit directly, so it never
    re-reads the units consumed before it, however far into the pass the run was.
    """
    passes: int = 0  # finished passes before this unit's pass
    unit: int = 0    # the unit's index in its pass
    chunk: int = 0   # ordinal (counted across passes) of the unit's first kept chunk
    token: int = 0   # token position of that chunk
    read: int = 0    # chunks of this pass read before the unit, kept or not (what the live split hashes)
    kept: int = 0    # chunks of this pass kept before the unit

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StreamPoint":
        return cls(**{f.name: int(d[f.name]) for f in dataclasses.fields(cls)})


class EmptySplit(ValueError):
    """A whole pass of a live source gave no chunk for a split."""

    def __init__(self, source: str, split: str, read: int):
        self.source, self.split = source, split
        super().__init__(f"live source {source!r}: a whole pass of its stream gave no chunk for the {split!r} split "
                         f"({read} chunks read)")


# Opens pass ``p`` of a live source at unit ``u``: that pass's units from ``u`` to its end, each a sequence of chunks.
OpenUnits = Callable[[int, int], Iterable[Sequence[np.ndarray]]]


@dataclass
class _HeldUnit:
    point: StreamPoint
    chunks: list[np.ndarray]  # the unit's kept chunks
    ends: list[int]           # token offset of each chunk's end from the unit's first token


class LiveChunks:
    """One split of one live source, in the order its stream produces chunks; forward only.

    ``open_units(p, u)`` reads pass ``p`` from unit ``u``; when a pass ends the next one starts
    at unit 0, so small sources repeat like epochs. Chunks are held a unit at a time, and
    reading ordinal ``i`` forgets every unit before the one holding it, which keeps memory
    bounded. ``start`` resumes at a saved :class:`StreamPoint`.
    """

    def __init__(self, source: str, open_units: OpenUnits, split: str, *, split_seed: int, val_fraction: float,
                 presplit: bool = False, start: StreamPoint | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.source, self.split = source, split
        self._open, self._fraction = open_units, float(val_fraction)
        self._presplit = presplit  # the stream serves only this split's chunks: take every one
        self._key = derive_key("live-split", split_seed, source)
        self._held: deque[_HeldUnit] = deque()
        self._next = start or StreamPoint()  # where the next unit read begins
        self._units: Iterator | None = None

    @property
    def passes(self) -> int:
        """Finished passes, as of the oldest unit still held."""
        return self._held[0].point.passes if self._held else self._next.passes

    def _is_val(self, position: int) -> bool:
        return self._fraction > 0 and unit_hash(self._key, position) < self._fraction

    def _pull(self) -> None:
        """Read the next unit that keeps a chunk of this split, and hold it."""
        while True:
            at = self._next
            if self._units is None:
                self._units = iter(self._open(at.passes, at.unit))
            raw = next(self._units, None)
            if raw is None:
                if at.kept == 0:
                    raise EmptySplit(self.source, self.split, at.read)
                self._units = None
                self._next = StreamPoint(at.passes + 1, 0, at.chunk, at.token, 0, 0)
                continue
            kept = [np.asarray(c) for j, c in enumerate(raw)
                    if self._presplit or self._is_val(at.read + j) == (self.split == "val")]
            ends = np.cumsum([len(c) for c in kept]).tolist()
            self._next = StreamPoint(at.passes, at.unit + 1, at.chunk + len(kept), at.token + (ends[-1] if ends else 0),
                                     at.read + len(raw), at.kept + len(kept))
            if kept:
                self._held.append(_HeldUnit(at, kept, ends))
                return

    def _ahead(self, position: int, by_token: bool) -> int:
        """Index in the held units of the unit holding ordinal (or token) ``position``, reading units as needed
        and forgetting none."""
        first = self._held[0].point if self._held else self._next
        start = first.token if by_token else first.chunk
        if position < start:
            raise ValueError(f"live source {self.source!r} reads forward only: {'token' if by_token else 'chunk'} "
                             f"{position} was already passed (now at {start})")
        j = 0
        while True:
            while j < len(self._held):
                unit = self._held[j]
                end = unit.point.token + unit.ends[-1] if by_token else unit.point.chunk + len(unit.chunks)
                if position < end:
                    return j
                j += 1
            self._pull()

    def _holding(self, position: int, by_token: bool = False) -> _HeldUnit:
        """The unit holding ordinal (or token) ``position``; the units before it are forgotten."""
        for _ in range(self._ahead(position, by_token)):
            self._held.popleft()
        return self._held[0]

    def chunk(self, i: int) -> np.ndarray:
        unit = self._holding(i)
        return unit.chunks[i - unit.point.chunk]

    def length(self, i: int) -> int:
        return len(self.chunk(i))

    def locate(self, p: int) -> tuple[int, int]:
        unit = self._holding(p, by_token=True)
        r = bisect.bisect_right(unit.ends, p - unit.point.token)
        return unit.point.chunk + r, unit.point.token + (unit.ends[r - 1] if r else 0)

    # Looking ahead without forgetting: a rank that reports the stream's state for a position its own
    # sequences have not reached yet must still serve the sequences before it afterwards.

    def length_ahead(self, i: int) -> int:
        unit = self._held[self._ahead(i, by_token=False)]
        return len(unit.chunks[i - unit.point.chunk])

    def point_ahead(self, position: int, by_token: bool = False) -> StreamPoint:
        """Where a stream must restart to serve ordinal (or token) ``position`` next: the point of its unit."""
        return self._held[self._ahead(position, by_token)].point

    def epochs(self, tokens: int | None = None, chunks: int | None = None) -> float:
        """Finished passes (a live stream's length is unknown until it ends)."""
        return float(self.passes)
