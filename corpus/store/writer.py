"""Writing shards: chunk by chunk, so a worker's memory does not grow with its work unit.

The ``.bin`` grows in a temporary file and is put in place at :meth:`ShardWriter.close`, then
the ``.idx`` (Megatron's ``MMIDIDX`` index, one sequence per chunk) and, last, the sidecar
(format: :mod:`corpus.store.shards`). Locally the temporary file lies beside the ``.bin`` and is
renamed into place; for a corpus on an object store it is spooled on the worker's own disk and
uploaded whole, since a store has no rename and no append (:mod:`corpus.store.location`).
:func:`write_shard` drives the same writer for a list of chunks already in memory.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from corpus.store import location
from corpus.store.files import temporary_beside
from corpus.store.location import ObjectPath, StorePath
from corpus.store.shards import INDEX_FORMAT, TOKEN_DTYPE, megatron_index_bytes


class ShardWriter:
    def __init__(self, stem: str | Path | ObjectPath):
        self.stem: StorePath = location.at(stem)
        bin_path = self.stem.with_suffix(".bin")
        if isinstance(bin_path, Path):
            fd, self._tmp = temporary_beside(bin_path)
        else:
            fd, self._tmp = location.spool_file(prefix=f".{bin_path.name}.")
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        self._sha = hashlib.sha256()
        self._lengths: list[int] = []

    def add(self, chunk: np.ndarray | list[int]) -> None:
        if not (isinstance(chunk, np.ndarray) and chunk.dtype == TOKEN_DTYPE):
            wide = np.asarray(chunk, dtype=np.int64)
            if wide.size and (wide.min() < 0 or wide.max() > np.iinfo(TOKEN_DTYPE).max):
                raise ValueError(f"{self.stem}: token ids must fit uint16 (0..65535)")
            chunk = wide
        data = np.ascontiguousarray(chunk, dtype=TOKEN_DTYPE).data
        try:
            self._file.write(data)
        except OSError as e:
            if e.filename is None and isinstance(self.stem, ObjectPath):
                e.filename = self._tmp  # the full disk is the worker's own, not the store
            raise
        self._sha.update(data)
        self._lengths.append(len(chunk))

    @property
    def tokens(self) -> int:
        return sum(self._lengths)

    def close(self, sidecar: dict) -> dict:
        """Put the three files in place and return the sidecar as written."""
        idx_bytes = megatron_index_bytes(self._lengths)  # before the .bin is placed: a chunk it refuses leaves none
        self._file.flush()
        if isinstance(self.stem, Path):
            os.fsync(self._file.fileno())
        self._file.close()
        bin_path, idx_path = self.stem.with_suffix(".bin"), self.stem.with_suffix(".idx")
        location.put_file(Path(self._tmp), bin_path)
        location.write_bytes(idx_path, idx_bytes)
        meta = dict(sidecar)
        meta.update(chunks=len(self._lengths), tokens=self.tokens, bin=bin_path.name, idx=idx_path.name,
                    index_format=INDEX_FORMAT, sha256_bin=self._sha.hexdigest(),
                    sha256_idx=hashlib.sha256(idx_bytes).hexdigest())
        location.write_json(self.stem.with_suffix(".json"), meta)
        return meta

    def abort(self) -> None:
        """Drop the partial ``.bin`` of a unit that failed."""
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


def write_shard(stem: str | Path | ObjectPath, chunks: list[np.ndarray] | list[list[int]], sidecar: dict) -> dict:
    """Write ``stem.bin``, ``stem.idx`` and, last, ``stem.json``; return the sidecar as written."""
    writer = ShardWriter(stem)
    try:
        for chunk in chunks:
            writer.add(chunk)
        return writer.close(sidecar)
    except BaseException:
        writer.abort()
        raise
