"""Token shards: the on-disk format every later stage reads.

Per work unit, three files under ``<corpus>/shards/<source>/``:

- ``<unit>.bin``  little-endian uint16 token ids, chunks concatenated (each BOS ... EOS);
- ``<unit>.idx``  Megatron's indexed-dataset index (``MMIDIDX``, version 1), one sequence and one
  document per chunk, so megatron-core's ``IndexedDataset(stem)`` reads the pair unchanged;
- ``<unit>.json`` the sidecar: source, input slice, counts, drops by reason, sha256 of both files.

Corpora written before that hold an ``.idx`` of little-endian uint64 token offsets (chunks + 1,
first 0). :meth:`Shard.open` reads both, told apart by the header: a legacy index starts with
eight zero bytes, never with ``MMIDIDX``. Byte layouts, and how to read them with numpy alone:
``docs/formats.md``. :func:`read_index` checks a shard's index against its ``.bin`` without
the tokens, on the local disk or an object store (stats and verify use it). Every write is
whole: atomic locally (temporary file in the same folder, fsync, rename), one put on a store.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corpus.store import location
from corpus.store.location import StorePath

TOKEN_DTYPE = np.dtype("<u2")
OFFSET_DTYPE = np.dtype("<u8")   # token offsets: the legacy index, and Shard.offsets

INDEX_FORMAT = "megatron-mmidx-1"
LEGACY_INDEX_FORMAT = "uint64-offsets"

# Megatron's index: header, version, dtype code, sequence count, document count (34 bytes), then
# int32 sequence lengths, int64 byte pointers into .bin, int64 document boundaries.
MEGATRON_HEADER = b"MMIDIDX\x00\x00"
MEGATRON_VERSION = 1
MEGATRON_UINT16 = 8              # megatron-core's DType code for uint16
_MEGATRON_DTYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float64", 7: "float32", 8: "uint16"}
_PREAMBLE = struct.Struct("<9sQBQQ")
LENGTH_DTYPE = np.dtype("<i4")
POINTER_DTYPE = np.dtype("<i8")
DOCUMENT_DTYPE = np.dtype("<i8")

_MMAP_FROM = 1 << 20             # smaller indexes are read whole: many small maps cost more than the reads


def megatron_index_bytes(lengths: list[int] | np.ndarray) -> bytes:
    """The ``.idx`` bytes of a shard whose chunks have these token lengths.

    Built here with numpy, not with megatron-core's writer: megatron-core is only a test
    dependency, there to prove that it reads these bytes back.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and (lengths.min() < 0 or lengths.max() > np.iinfo(LENGTH_DTYPE).max):
        raise ValueError("chunk lengths must fit Megatron's int32 sequence lengths")
    n = int(lengths.size)
    pointers = np.zeros(n, dtype=POINTER_DTYPE)
    np.cumsum(lengths[:-1] * TOKEN_DTYPE.itemsize, out=pointers[1:])
    # each chunk is its own document: boundaries 0, 1, ..., n (megatron checks the last equals n)
    documents = np.arange(n + 1, dtype=DOCUMENT_DTYPE)
    preamble = _PREAMBLE.pack(MEGATRON_HEADER, MEGATRON_VERSION, MEGATRON_UINT16, n, n + 1)
    return b"".join((preamble, lengths.astype(LENGTH_DTYPE).tobytes(), pointers.tobytes(), documents.tobytes()))


class ShardDamaged(ValueError):
    """A shard whose .bin and .idx disagree or that is cut short: the message names the file."""


@dataclass
class Shard:
    """A read-only, memory-mapped view of one shard, whichever index format it has."""
    stem: Path
    tokens: np.ndarray                               # uint16, memory-mapped
    index_format: str                                # INDEX_FORMAT or LEGACY_INDEX_FORMAT
    sequence_lengths: np.ndarray | None = None       # Megatron index: int32 tokens per chunk
    sequence_pointers: np.ndarray | None = None      # Megatron index: int64 byte offset of each chunk in .bin
    _offsets: np.ndarray | None = field(default=None, repr=False)  # legacy index; Megatron's once asked for

    @classmethod
    def open(cls, stem: str | Path) -> "Shard":
        stem = Path(stem)
        if stem.suffix in (".bin", ".idx", ".json"):
            stem = stem.with_suffix("")
        bin_path, idx_path = stem.with_suffix(".bin"), stem.with_suffix(".idx")
        size = idx_path.stat().st_size
        raw = np.fromfile(idx_path, dtype=np.uint8) if size < _MMAP_FROM \
            else np.memmap(idx_path, dtype=np.uint8, mode="r").view(np.ndarray)
        bin_size = bin_path.stat().st_size
        if bin_size % TOKEN_DTYPE.itemsize:
            raise ShardDamaged(f"{bin_path}: {bin_size} bytes, not a whole number of uint16 tokens")
        tokens = np.memmap(bin_path, dtype=TOKEN_DTYPE, mode="r") if bin_size else np.zeros(0, TOKEN_DTYPE)
        index_format, lengths, pointers, offsets = _parse_index(idx_path, raw, bin_size)
        return cls(stem, tokens, index_format, lengths, pointers, offsets)

    def __len__(self) -> int:
        if self.sequence_lengths is not None:
            return len(self.sequence_lengths)
        return len(self._offsets) - 1

    @property
    def offsets(self) -> np.ndarray:
        """Token offsets of every chunk plus the end (``len + 1`` values, first 0), as the legacy index held them.

        For a Megatron index they are made from its byte pointers on first use (8 bytes a chunk);
        :meth:`chunk`, :meth:`chunk_lengths` and :attr:`num_tokens` never need them.
        """
        if self._offsets is None:
            offsets = np.empty(len(self) + 1, dtype=OFFSET_DTYPE)
            offsets[:-1] = self.sequence_pointers // TOKEN_DTYPE.itemsize
            offsets[-1] = self.num_tokens
            self._offsets = offsets
        return self._offsets

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)  # Shard.open checked that the index covers .bin exactly

    def chunk(self, i: int) -> np.ndarray:
        if self.sequence_lengths is not None:
            start = int(self.sequence_pointers[i]) // TOKEN_DTYPE.itemsize
            return self.tokens[start:start + int(self.sequence_lengths[i])]
        return self.tokens[int(self._offsets[i]):int(self._offsets[i + 1])]

    def spans(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first token, token count) of the chunks numbered `local`, read from the index for those chunks only.

        `offsets` would build 8 bytes per chunk of the whole shard in memory for a Megatron index; a sampler
        over a trillion-token corpus asks for a few chunks at a time and must not hold that.
        """
        local = np.asarray(local, dtype=np.int64)
        if self.sequence_lengths is not None:
            begin = self.sequence_pointers[local].astype(np.int64) // TOKEN_DTYPE.itemsize
            return begin, self.sequence_lengths[local].astype(np.int64)
        begin = self._offsets[local].astype(np.int64)
        return begin, self._offsets[local + 1].astype(np.int64) - begin

    def chunk_lengths(self) -> np.ndarray:
        if self.sequence_lengths is not None:
            return self.sequence_lengths.astype(np.int64)
        return np.diff(self._offsets.astype(np.int64))

    def sidecar(self) -> dict:
        return json.loads(self.stem.with_suffix(".json").read_text())


@dataclass
class ShardIndex:
    """A shard's index checked against the size of its ``.bin``, without its tokens: what stats and verify read."""
    stem: StorePath
    index_format: str
    bin_size: int
    sequence_lengths: np.ndarray | None = None
    offsets: np.ndarray | None = None                # legacy index only

    def __len__(self) -> int:
        return len(self.sequence_lengths) if self.sequence_lengths is not None else len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return self.bin_size // TOKEN_DTYPE.itemsize

    def chunk_lengths(self) -> np.ndarray:
        if self.sequence_lengths is not None:
            return self.sequence_lengths.astype(np.int64)
        return np.diff(self.offsets.astype(np.int64))


def read_index(stem: StorePath) -> ShardIndex:
    """The ``.idx`` of ``stem`` (a local path or an object), read whole and checked against the ``.bin``'s size.

    FileNotFoundError when either file is missing; ValueError, naming the file, when they disagree.
    """
    bin_path, idx_path = stem.with_suffix(".bin"), stem.with_suffix(".idx")
    raw = np.frombuffer(location.read_bytes(idx_path), dtype=np.uint8)
    bin_size = location.size(bin_path)
    if bin_size is None:
        raise FileNotFoundError(f"{bin_path}: no such file")
    if bin_size % TOKEN_DTYPE.itemsize:
        raise ShardDamaged(f"{bin_path}: {bin_size} bytes, not a whole number of uint16 tokens")
    index_format, lengths, _, offsets = _parse_index(idx_path, raw, bin_size)
    return ShardIndex(stem, index_format, bin_size, lengths, offsets)


def _parse_index(idx_path: StorePath, raw: np.ndarray, bin_size: int):
    """(index format, lengths, pointers, legacy offsets) of an index's bytes, checked against ``.bin``'s size."""
    if raw[:len(MEGATRON_HEADER)].tobytes() == MEGATRON_HEADER:
        lengths, pointers = _megatron_index(idx_path, raw, bin_size)
        return INDEX_FORMAT, lengths, pointers, None
    return LEGACY_INDEX_FORMAT, None, None, _legacy_index(idx_path, raw, bin_size)


def _megatron_index(idx_path: StorePath, raw: np.ndarray, bin_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The sequence lengths and byte pointers of a Megatron index (views into ``raw``), checked against ``.bin``."""
    if raw.size < _PREAMBLE.size:
        raise ShardDamaged(f"{idx_path}: Megatron index cut short: {raw.size} bytes, its header alone takes "
                         f"{_PREAMBLE.size}")
    _, version, code, n, d = _PREAMBLE.unpack(raw[:_PREAMBLE.size].tobytes())
    if version != MEGATRON_VERSION:
        raise ShardDamaged(f"{idx_path}: Megatron index version {version}; only version {MEGATRON_VERSION} is read")
    if code != MEGATRON_UINT16:
        name = _MEGATRON_DTYPES.get(code, "unknown")
        raise ShardDamaged(f"{idx_path}: Megatron index of dtype code {code} ({name}); shards hold uint16 tokens "
                         f"(code {MEGATRON_UINT16})")
    at = [_PREAMBLE.size]
    for count, dtype in ((n, LENGTH_DTYPE), (n, POINTER_DTYPE), (d, DOCUMENT_DTYPE)):
        at.append(at[-1] + count * dtype.itemsize)
    if raw.size != at[-1]:
        raise ShardDamaged(f"{idx_path}: {raw.size} bytes, but a Megatron index of {n} sequences and {d} documents "
                         f"takes {at[-1]}")
    lengths = raw[at[0]:at[1]].view(LENGTH_DTYPE)
    pointers = raw[at[1]:at[2]].view(POINTER_DTYPE)
    documents = raw[at[2]:at[3]].view(DOCUMENT_DTYPE)
    if n and int(lengths.min()) < 0:
        raise ShardDamaged(f"{idx_path}: sequence {int(np.argmax(lengths < 0))} has a negative length")
    # the project's chunks lie back to back, so each pointer is where the lengths before it end
    ends = np.cumsum(lengths, dtype=np.int64) * TOKEN_DTYPE.itemsize
    starts = ends - lengths.astype(np.int64) * TOKEN_DTYPE.itemsize
    wrong = np.flatnonzero(pointers != starts)
    if wrong.size:
        i = int(wrong[0])
        raise ShardDamaged(f"{idx_path}: sequence {i} starts at byte {int(pointers[i])}, but the lengths before it "
                         f"end at byte {int(starts[i])}")
    end = int(ends[-1]) if n else 0
    if end != bin_size:
        raise ShardDamaged(f"{idx_path}: its sequences end at byte {end} ({end // 2} tokens), but "
                         f"{idx_path.with_suffix('.bin').name} holds {bin_size} bytes ({bin_size // 2} tokens)")
    if d == 0 or int(documents[0]) != 0 or int(documents[-1]) != n or bool((np.diff(documents) < 0).any()):
        raise ShardDamaged(f"{idx_path}: document indices must rise from 0 to the sequence count {n}")
    return lengths, pointers


def _legacy_index(idx_path: StorePath, raw: np.ndarray, bin_size: int) -> np.ndarray:
    """The token offsets of a legacy index (a view into ``raw``), checked against ``.bin``."""
    if raw.size < OFFSET_DTYPE.itemsize or raw.size % OFFSET_DTYPE.itemsize:
        raise ShardDamaged(f"{idx_path}: not a shard index: no {MEGATRON_HEADER!r} header, and {raw.size} bytes "
                         f"are not legacy uint64 offsets")
    offsets = raw.view(OFFSET_DTYPE)
    if offsets[0] != 0:
        raise ShardDamaged(f"{idx_path}: not a shard index: no {MEGATRON_HEADER!r} header, and as legacy uint64 "
                         f"offsets it does not start at 0")
    if bool((offsets[1:] < offsets[:-1]).any()):
        raise ShardDamaged(f"{idx_path}: legacy offsets go backwards at chunk {int(np.argmax(offsets[1:] < offsets[:-1]))}")
    if bin_size != int(offsets[-1]) * TOKEN_DTYPE.itemsize:
        raise ShardDamaged(f"{idx_path}: its chunks end at token {int(offsets[-1])}, but "
                         f"{idx_path.with_suffix('.bin').name} holds {bin_size // 2} tokens")
    return offsets
