"""Files that are whole or absent: atomic writes, checksums, advisory locks, record timestamps.

Everything a later stage reads (shards, sidecars, ledger entries, corpus.json, the mirror's
index, a run's run.json) is written to a temporary file in the same folder, fsynced and
renamed into place, so a process killed at any moment leaves the old file or the new one.
A write that fails names the file it was for (``OSError.filename``), and :func:`out_of_space`
tells a full disk or quota (which the caller can stop on) from every other failure.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
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


def files_below(folder: str | Path, base: str | Path | None = None) -> list[str]:
    """The sorted paths of every file (and link) under ``folder``, relative to ``base`` (default ``folder``)."""
    folder = Path(folder)
    base = folder if base is None else Path(base)
    return sorted(str(p.relative_to(base)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


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


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def out_of_space(error: BaseException) -> bool:
    """A write failed because the filesystem (or the user's quota on it) is full."""
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


def mount_point(path: str | Path) -> Path:
    """The mount point of the filesystem that holds ``path`` (or would hold it): what a user frees space on."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def write_synced(fd: int, data: bytes | memoryview | Iterable[bytes]) -> None:
    """Write all of ``data`` (bytes, or pieces of them) to an open descriptor, closing it, and fsync: the one place
    bytes reach the disk here."""
    with os.fdopen(fd, "wb") as f:
        if isinstance(data, (bytes, memoryview)):
            f.write(data)
        else:
            f.writelines(data)
        f.flush()
        os.fsync(f.fileno())


def sync_path(path: str | Path) -> None:
    """fsync a file or folder by path (a folder's entries: what makes a rename or removal in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path) -> Iterator[int]:
    """An open descriptor on a hidden temporary beside ``path`` that replaces ``path`` when the block ends; if the
    block raises, the temporary is removed and ``path`` left as it was. A failed write(2) names no file, so an
    out-of-space error gets ``path``'s name (an error from elsewhere, e.g. reading a store, keeps its own)."""
    fd, tmp = temporary_beside(path)
    try:
        yield fd
        os.replace(tmp, path)
    except BaseException as e:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        if out_of_space(e) and e.filename is None:
            e.filename = str(path)
        raise


def atomic_write_bytes(path: str | Path, data: bytes | memoryview | Iterable[bytes]) -> None:
    with replacing(Path(path)) as fd:
        write_synced(fd, data)


_JSON = json.JSONEncoder(indent=2, sort_keys=True)


def json_bytes(obj: Any) -> bytes:
    """A record's bytes, the same wherever it is written (a local file or an object)."""
    return (_JSON.encode(obj) + "\n").encode()


def json_pieces(obj: Any) -> Iterator[bytes]:
    """``json_bytes(obj)`` a megabyte at a time. An indented dump is assembled from millions of small strings:
    corpus.json of the full OpenELM mix (45 MB) took over 200 MB to build whole."""
    pending: list[str] = []
    size = 0
    for piece in _JSON.iterencode(obj):
        pending.append(piece)
        size += len(piece)
        if size >= 1 << 20:
            yield "".join(pending).encode()
            pending, size = [], 0
    pending.append("\n")
    yield "".join(pending).encode()


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, json_pieces(obj))


@contextmanager
def held_lock(path: str | Path, wait: bool = True, holder: dict | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing); it dies with its process, however that ends.

    ``wait=False`` raises BlockingIOError at once when another process holds it. ``holder`` (JSON) is written into
    the file while held, for `lock_holder` to tell a refused process who has it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            if holder is not None:
                f.truncate(0)
                f.write(json.dumps(holder))
                f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_holder(path: str | Path) -> dict:
    """What the process holding ``path`` wrote there ({} when nothing readable)."""
    try:
        value = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
