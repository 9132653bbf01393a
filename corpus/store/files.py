"""Files that are whole or absent: atomic writes, checksums, advisory locks, record timestamps.

Everything a later stage reads (shards, sidecars, ledger entries, corpus.json, the mirror's
index, a run's run.json) is written to a temporary file in the same folder, fsynced and
renamed into place, so a process killed at any moment leaves the old file or the new one.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# mkstemp creates files 0600; shards are meant to be shared, so give them the usual umask mode
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def utc_now() -> str:
    """The timestamp records carry (ledger entries, corpus.json, run.json, checkpoints)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def temporary_beside(path: Path) -> tuple[int, str]:
    """An open descriptor and the name of a hidden temporary file in ``path``'s folder, with the usual mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    return fd, tmp


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    path = Path(path)
    fd, tmp = temporary_beside(path)
    try:
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


@contextmanager
def held_lock(path: str | Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing); it dies with its process, however that ends.

    ``wait=False`` raises BlockingIOError at once when another process holds it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
