"""Token shards: the on-disk format every later stage reads.

Per work unit, three files under ``<corpus>/shards/<source>/``:

- ``<unit>.bin``  little-endian uint16 token ids, chunks concatenated (each BOS ... EOS);
- ``<unit>.idx``  little-endian uint64 offsets into ``.bin`` in tokens, number of chunks + 1, first 0;
- ``<unit>.json`` the sidecar: source, input slice, counts, drops by reason, sha256 of both files.

numpy opens them without this package: ``np.fromfile(p, "<u2")`` and ``np.fromfile(q, "<u8")``.
Every write is atomic (temporary file in the same folder, fsync, rename).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TOKEN_DTYPE = np.dtype("<u2")
OFFSET_DTYPE = np.dtype("<u8")
SHARDS_DIR = "shards"
CORPUS_JSON = "corpus.json"
# mkstemp creates files 0600; shards are meant to be shared, so give them the usual umask mode
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_shard(stem: str | Path, chunks: list[np.ndarray] | list[list[int]], sidecar: dict) -> dict:
    """Write ``stem.bin``, ``stem.idx`` and, last, ``stem.json``; return the sidecar as written."""
    from corpus.store.writer import ShardWriter  # the one writer; it imports this module's format
    writer = ShardWriter(stem)
    try:
        for chunk in chunks:
            writer.add(chunk)
    except BaseException:
        writer.abort()
        raise
    return writer.close(sidecar)


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


def read_corpus_json(corpus_dir: str | Path) -> dict:
    """The corpus-level index: manifest, tokenizer hash, every shard with checksums, totals."""
    path = Path(corpus_dir) / CORPUS_JSON
    if not path.exists():
        raise FileNotFoundError(f"{corpus_dir}: not a corpus folder (no {CORPUS_JSON}); build it with "
                                f"'elm-corpus build MANIFEST'")
    return json.loads(path.read_text())


def source_shards(corpus_dir: str | Path, source: str) -> list[Shard]:
    """The shards of one source in their deterministic (unit id) order."""
    folder = Path(corpus_dir) / SHARDS_DIR / source
    return [Shard.open(p.with_suffix("")) for p in sorted(folder.glob("*.idx"))]
