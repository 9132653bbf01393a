"""Where a corpus lives: a local folder, or an fsspec URI (``s3://bucket/prefix``, ``gs://...``) on an object store.

:func:`at` turns what a user typed into a path: a plain path or ``file://`` URI becomes a
``pathlib.Path`` and keeps the atomic writes of :mod:`corpus.store.files` (temporary file,
fsync, rename); anything else becomes an :class:`ObjectPath`. An object store has no rename,
so each object is written whole by a single put: a reader sees the old object or the new one,
never a part, and a unit is whole once its ledger entry (written last) exists.

Every read, write, listing and removal of a corpus goes through the functions below, whichever
kind the path is, so the layout, the writer, verify, stats and the index need not know which.
A store that cannot be reached raises :class:`StoreUnreachable`, an OSError naming the object,
which the build stops on like a full disk (:func:`stops_build`), keeping the finished units.

Credentials and endpoints come from where fsspec's backends look (``AWS_*`` variables with
``AWS_ENDPOINT_URL``, ``~/.aws``, fsspec's configuration), never from a manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Union

from corpus.store import files

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_LOCAL_PROTOCOLS = ("file", "local")
# The variables that configure a store's client; a change of them means another filesystem object.
STORE_ENV_PREFIXES = ("AWS_", "FSSPEC_")


class ObjectPath:
    """An object (or a prefix) on an fsspec filesystem other than the local disk, with the pathlib manners the
    corpus layout uses (``/``, ``name``, ``stem``, ``parent``, ``with_suffix``, ``relative_to``).

    It is not an ``os.PathLike``, so handing one to ``open`` fails loudly instead of writing a local file.
    """
    __slots__ = ("protocol", "path")

    def __init__(self, protocol: str, path: str):
        self.protocol, self.path = protocol, path.rstrip("/")

    @property
    def fs(self):
        return _filesystem(self.protocol)

    def __truediv__(self, part: str | PurePosixPath) -> "ObjectPath":
        return ObjectPath(self.protocol, f"{self.path}/{PurePosixPath(part).as_posix().strip('/')}")

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def parent(self) -> "ObjectPath":
        return ObjectPath(self.protocol, self.path.rsplit("/", 1)[0]) if "/" in self.path else self

    def with_suffix(self, suffix: str) -> "ObjectPath":
        return ObjectPath(self.protocol, PurePosixPath(self.path).with_suffix(suffix).as_posix())

    def relative_to(self, other: "ObjectPath") -> PurePosixPath:
        if not isinstance(other, ObjectPath) or other.protocol != self.protocol:
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(self.path).relative_to(other.path)

    def __str__(self) -> str:
        return f"{self.protocol}://{self.path}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and (self.protocol, self.path) == (other.protocol, other.path)

    def __lt__(self, other: "ObjectPath") -> bool:
        return (self.protocol, self.path) < (other.protocol, other.path)

    def __hash__(self) -> int:
        return hash((self.protocol, self.path))

    def __reduce__(self):  # travels as its URI: the receiving process (a Ray worker) makes its own client
        return ObjectPath, (self.protocol, self.path)


StorePath = Union[Path, ObjectPath]


def at(target: str | os.PathLike | ObjectPath) -> StorePath:
    """The path a user's location names: a ``Path`` for a plain path or ``file://``, else an :class:`ObjectPath`."""
    if isinstance(target, (Path, ObjectPath)):
        return target
    text = os.fspath(target)
    match = _URI.match(text)
    if match is None:
        return Path(text).expanduser()
    protocol = match.group(1).lower()
    if protocol in _LOCAL_PROTOCOLS:
        return Path(text[match.end():]).expanduser()
    try:
        fs = _filesystem(protocol)
    except ImportError as e:  # e.g. gs:// without gcsfs installed
        raise ValueError(f"{text}: {e}") from None
    return ObjectPath(protocol, fs._strip_protocol(text))


def is_remote(path: StorePath | str) -> bool:
    return isinstance(at(path) if isinstance(path, str) else path, ObjectPath)


_FILESYSTEMS: dict[tuple, Any] = {}


def _filesystem(protocol: str):
    """One client per protocol and process, made again when the store's environment variables change."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(STORE_ENV_PREFIXES)))
    key = (protocol, os.getpid(), env)
    if key not in _FILESYSTEMS:
        import fsspec
        # Listings are read fresh each time: other processes (the workers, another build) write the same prefix.
        _FILESYSTEMS[key] = fsspec.filesystem(protocol, use_listings_cache=False, skip_instance_cache=True)
    return _FILESYSTEMS[key]


def store_environment() -> dict[str, str]:
    """This process's store settings (``AWS_*``, ``FSSPEC_*``), for worker processes started without them."""
    return {k: v for k, v in os.environ.items() if k.startswith(STORE_ENV_PREFIXES)}


# ---------------------------------------------------------------- failures

class StoreUnreachable(ConnectionError):
    """The object store could not be reached (connection refused or lost, a timeout) while handling ``filename``."""

    def __init__(self, path: StorePath | str, detail: str):
        super().__init__(f"cannot reach the store for {path}: {detail}")
        self.filename, self.detail = str(path), detail

    def __str__(self) -> str:  # OSError would print "[Errno None] None: <filename>" once a filename is set
        return f"cannot reach the store for {self.filename}: {self.detail}"

    def __reduce__(self):
        return type(self), (self.filename, self.detail)


_UNREACHABLE = {  # (module, class name) of the clients' connection failures, matched anywhere in an error's MRO
    ("builtins", "ConnectionError"), ("builtins", "TimeoutError"),
    ("botocore.exceptions", "ConnectionError"), ("botocore.exceptions", "HTTPClientError"),
    ("aiohttp.client_exceptions", "ClientConnectionError"), ("aiohttp.client_exceptions", "ServerTimeoutError"),
}


def unreachable(error: BaseException) -> bool:
    """An error (or one it was raised from) that means the store did not answer, not that it said no."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if any((c.__module__, c.__name__) in _UNREACHABLE for c in type(error).__mro__):
            return True
        error = error.__cause__ or error.__context__
    return False


def stops_build(error: BaseException) -> bool:
    """A write failed for a reason outside the unit (full disk or quota, unreachable store): stop, keep the rest."""
    return files.out_of_space(error) or isinstance(error, StoreUnreachable)


@contextmanager
def _calling(path: ObjectPath) -> Iterator[None]:
    try:
        yield
    except (FileNotFoundError, FileExistsError, StoreUnreachable):
        raise
    except Exception as e:
        if unreachable(e):
            raise StoreUnreachable(path, " ".join(str(e).split()) or type(e).__name__) from e
        raise


# ---------------------------------------------------------------- reading

def exists(path: StorePath) -> bool:
    """A file (an object) is at ``path``."""
    if isinstance(path, Path):
        return path.is_file()
    return size(path) is not None


def size(path: StorePath) -> int | None:
    """Bytes in a file, None when there is none."""
    if isinstance(path, Path):
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None
    with _calling(path):
        try:
            info = path.fs.info(path.path)
        except FileNotFoundError:
            return None
    return int(info["size"]) if info.get("type") == "file" else None


def read_bytes(path: StorePath) -> bytes:
    """A whole file; FileNotFoundError when absent."""
    if isinstance(path, Path):
        return path.read_bytes()
    with _calling(path):
        return path.fs.cat_file(path.path)


def read_json(path: StorePath) -> Any | None:
    """A JSON record, None when absent; ValueError("not valid JSON (...)") when it does not parse."""
    try:
        return json.loads(read_bytes(path))
    except FileNotFoundError:
        return None
    except ValueError as e:  # UnicodeDecodeError too
        raise ValueError(f"not valid JSON ({e})") from None


def read_many(paths: list[StorePath]) -> dict[StorePath, bytes]:
    """Several whole files, absent ones left out; on an object store fetched concurrently (one request each)."""
    remote = [p for p in paths if isinstance(p, ObjectPath)]
    out: dict[StorePath, bytes] = {}
    for p in paths:
        if isinstance(p, Path):
            try:
                out[p] = p.read_bytes()
            except FileNotFoundError:
                pass
    for protocol in {p.protocol for p in remote}:
        group = [p for p in remote if p.protocol == protocol]
        if any(c in p.path for p in group for c in "*?["):  # fsspec's cat would read those as patterns
            out.update((p, data) for p in group if (data := _read_or_none(p)) is not None)
            continue
        with _calling(group[0]):
            got = _filesystem(protocol).cat([p.path for p in group], on_error="return")
        for p in group:
            value = got.get(p.path)
            if value is None or isinstance(value, FileNotFoundError):
                continue
            if isinstance(value, BaseException):
                with _calling(p):
                    raise value
            out[p] = value
    return out


def _read_or_none(path: StorePath) -> bytes | None:
    try:
        return read_bytes(path)
    except FileNotFoundError:
        return None


def open_input(path: StorePath) -> BinaryIO:
    """A seekable file to read parts of (a zip's members, a footer): local, or range requests on a store."""
    if isinstance(path, Path):
        return open(path, "rb")
    with _calling(path):
        return path.fs.open(path.path, "rb")


def blocks(path: StorePath, block: int) -> Iterator[bytes]:
    """A file read ``block`` bytes at a time (streamed from a store, never held whole)."""
    if isinstance(path, Path):
        with open(path, "rb") as f:
            while chunk := f.read(block):
                yield chunk
        return
    with _calling(path):
        with path.fs.open(path.path, "rb", block_size=block, cache_type="none") as f:
            while chunk := f.read(block):
                yield chunk


def list_files(folder: StorePath) -> list[str]:
    """The relative posix paths of every file below ``folder``, sorted (hidden temporaries included)."""
    if isinstance(folder, Path):
        return sorted(Path(dirpath, name).relative_to(folder).as_posix()
                      for dirpath, _, names in os.walk(folder) for name in names)
    return sorted(files_under(folder))


def files_under(folder: StorePath) -> dict[str, int]:
    """``relative posix path -> size`` of every file below ``folder`` (hidden temporaries included)."""
    if isinstance(folder, Path):
        out = {}
        for dirpath, _, names in os.walk(folder):
            for name in names:
                full = os.path.join(dirpath, name)
                try:
                    out[Path(full).relative_to(folder).as_posix()] = os.stat(full).st_size
                except FileNotFoundError:  # a build renamed a temporary file away under us
                    pass
        return out
    with _calling(folder):
        found = folder.fs.find(folder.path, detail=True)
    prefix = folder.path + "/"
    return {name[len(prefix):]: int(info.get("size") or 0) for name, info in found.items()
            if name.startswith(prefix) and info.get("type", "file") == "file"}


# ---------------------------------------------------------------- writing

def write_bytes(path: StorePath, data: bytes | memoryview) -> None:
    """Write a whole file: locally atomic (temporary file, fsync, rename), on a store one put."""
    if isinstance(path, Path):
        files.atomic_write_bytes(path, data)
        return
    with _calling(path):
        path.fs.pipe_file(path.path, bytes(data))


def write_json(path: StorePath, obj: Any) -> None:
    """Write ``obj`` as JSON without holding its whole text: locally atomic; to a store through a local temporary
    file, uploaded whole (a failed write then leaves no partial object, as a streamed upload could on close)."""
    if isinstance(path, Path):
        files.atomic_write_json(path, obj)
        return
    with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
        tmp.writelines(files.json_pieces(obj))
        tmp.flush()
        with _calling(path):
            path.fs.put_file(tmp.name, path.path)


def put_file(local: Path, path: StorePath) -> None:
    """Move a finished local file to ``path`` whole: a rename on the same disk, an upload to a store (then removed)."""
    if isinstance(path, Path):
        os.replace(local, path)
        return
    with _calling(path):
        path.fs.put_file(str(local), path.path)
    os.unlink(local)


def create(path: StorePath, data: bytes) -> bool:
    """Write ``path`` only if nothing is there; False when something is.

    On stores with conditional writes (AWS S3, and the test's server) the check and the put are one
    request; on a backend without them it is a check, then a put, with a window between the two.
    """
    if isinstance(path, Path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, files.FILE_MODE)
        except FileExistsError:
            return False
        files.write_synced(fd, data)
        return True
    with _calling(path):
        try:
            path.fs.pipe_file(path.path, data, mode="create")
        except FileExistsError:
            return False
        except TypeError:  # a backend without exclusive writes
            if exists(path):
                return False
            path.fs.pipe_file(path.path, data)
    return True


def remove(path: StorePath) -> bool:
    """Delete a file; False when there was none."""
    if isinstance(path, Path):
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False
    if size(path) is None:  # a store deletes absent keys without a word; say whether there was one
        return False
    with _calling(path):
        try:
            path.fs.rm_file(path.path)
        except FileNotFoundError:
            return False
    return True


def download(path: StorePath, dest: Path, sha256: str | None = None, block: int = 8 << 20) -> str:
    """Copy ``path`` to the local file ``dest`` through a temporary beside it; return the copy's sha256.

    With ``sha256`` a copy whose hash differs is never put in place: ValueError, ``dest`` untouched.
    """
    h = hashlib.sha256()
    with files.replacing(dest) as fd, os.fdopen(fd, "wb") as f:
        for chunk in blocks(path, block):
            f.write(chunk)
            h.update(chunk)
        if sha256 is not None and h.hexdigest() != sha256:
            raise ValueError(f"{path} has sha256 {h.hexdigest()[:16]}..., not the {sha256[:16]}... its ledger "
                             f"entry records")
    return h.hexdigest()


def spool_file(prefix: str) -> tuple[int, str]:
    """A local temporary file for an object that is written in pieces and put whole at the end."""
    return tempfile.mkstemp(prefix=prefix, suffix=".tmp")


def pid_alive(pid: int) -> bool:
    """A process of this machine with this pid exists (a lock's holder on this host may be checked)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
