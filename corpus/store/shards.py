"""Token shards: the on-disk format every later stage reads.

Per work unit, three files under ``<corpus>/shards/<source>/``:

- ``<unit>.bin``  little-endian uint16 token ids, chunks concatenated (each BOS ... EOS);
- ``<unit>.idx``  little-endian uint64 offsets into ``.bin`` in tokens, number of chunks + 1, first 0;
- ``<unit>.json`` the sidecar: source, input slice, counts, drops by reason, sha256 of both files.

numpy opens them without this package: ``np.fromfile(p, "<u2")`` and ``np.fromfile(q, "<u8")``.
Every write is atomic (temporary file in the same folder, fsync, rename).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOKEN_DTYPE = np.dtype("<u2")
OFFSET_DTYPE = np.dtype("<u8")


@dataclass
class Shard:
    """A read-only, memory-mapped view of one shard."""
    stem: Path
    tokens: np.ndarray   # uint16, memory-mapped
    offsets: np.ndarray  # uint64, memory-mapped

    @classmethod
    def open(cls, stem: str | Path) -> "Shard":
        stem = Path(stem)
        if stem.suffix in (".bin", ".idx", ".json"):
            stem = stem.with_suffix("")
        bin_path, idx_path = stem.with_suffix(".bin"), stem.with_suffix(".idx")
        offsets = np.fromfile(idx_path, dtype=OFFSET_DTYPE) if idx_path.stat().st_size < (1 << 20) \
            else np.memmap(idx_path, dtype=OFFSET_DTYPE, mode="r")
        if len(offsets) == 0 or offsets[0] != 0:
            raise ValueError(f"{idx_path}: not a shard index (must start with offset 0)")
        size = bin_path.stat().st_size
        if size != int(offsets[-1]) * TOKEN_DTYPE.itemsize:
            raise ValueError(f"{bin_path}: holds {size // 2} tokens but {idx_path.name} says {int(offsets[-1])}")
        tokens = np.memmap(bin_path, dtype=TOKEN_DTYPE, mode="r") if size else np.zeros(0, TOKEN_DTYPE)
        return cls(stem, tokens, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    def chunk(self, i: int) -> np.ndarray:
        return self.tokens[int(self.offsets[i]):int(self.offsets[i + 1])]

    def chunk_lengths(self) -> np.ndarray:
        return np.diff(self.offsets.astype(np.int64))

    def sidecar(self) -> dict:
        return json.loads(self.stem.with_suffix(".json").read_text())
