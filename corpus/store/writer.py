"""A shard written chunk by chunk, so a worker's memory does not grow with its work unit.

The only shard writer: :func:`corpus.store.shards.write_shard` feeds it a list of chunks, the
build feeds it chunks as they are encoded. The ``.bin`` grows in a temporary file and is renamed
into place at :meth:`ShardWriter.close`, then the ``.idx`` and, last, the sidecar.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from corpus.store.shards import FILE_MODE, OFFSET_DTYPE, TOKEN_DTYPE, atomic_write_bytes, atomic_write_json


class ShardWriter:
    def __init__(self, stem: str | Path):
        self.stem = Path(stem)
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        bin_path = self.stem.with_suffix(".bin")
        fd, self._tmp = tempfile.mkstemp(prefix=f".{bin_path.name}.", suffix=".tmp", dir=bin_path.parent)
        os.fchmod(fd, FILE_MODE)
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
        self._file.write(data)
        self._sha.update(data)
        self._lengths.append(len(chunk))

    @property
    def tokens(self) -> int:
        return sum(self._lengths)

    def close(self, sidecar: dict) -> dict:
        """Put the three files in place and return the sidecar as written."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        bin_path, idx_path = self.stem.with_suffix(".bin"), self.stem.with_suffix(".idx")
        os.replace(self._tmp, bin_path)
        offsets = np.zeros(len(self._lengths) + 1, dtype=OFFSET_DTYPE)
        np.cumsum(np.asarray(self._lengths, dtype=np.int64), out=offsets[1:])
        idx_bytes = offsets.tobytes()
        atomic_write_bytes(idx_path, idx_bytes)
        meta = dict(sidecar)
        meta.update(chunks=len(self._lengths), tokens=int(offsets[-1]), bin=bin_path.name, idx=idx_path.name,
                    sha256_bin=self._sha.hexdigest(), sha256_idx=hashlib.sha256(idx_bytes).hexdigest())
        atomic_write_json(self.stem.with_suffix(".json"), meta)
        return meta

    def abort(self) -> None:
        """Drop the partial ``.bin`` of a unit that failed."""
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass
