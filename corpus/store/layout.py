"""The layout of a corpus folder and its ledger: which work units are finished, failed or pending.

::

    <corpus>/plan.json                          fingerprint + every work unit (fixed at the first build)
    <corpus>/corpus.json                        the index: shards, checksums, totals, status
    <corpus>/shards/<source>/<unit>.{bin,idx,json}
    <corpus>/quarantine/<source>/<unit>.jsonl   bad records of the unit (only when it had some)
    <corpus>/ledger/<source>/<unit>.json        written last: the unit is complete once this exists
    <corpus>/failed/<source>/<unit>.json        the error of a unit's last failed attempt

Every file is written whole (locally: atomically; on an object store: one put each), so a
build killed at any moment leaves either a whole file or none, and a unit without a ledger
entry is simply computed again. A corpus is named by its folder, by its folder's name under
the corpora folder, or by a URI such as ``s3://bucket/prefix`` (:func:`find_corpus`); every
access goes through :mod:`corpus.store.location`.
"""
from __future__ import annotations

import errno
import itertools
import json
import os
import socket
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from corpus.paths import corpora_root
from corpus.store import location
from corpus.store.files import held_lock, json_bytes, mount_point, sync_path, utc_now
from corpus.store.location import ObjectPath, StorePath
from corpus.store.shards import Shard

PLAN_JSON = "plan.json"
CORPUS_JSON = "corpus.json"
SHARDS_DIR = "shards"
LEDGER_DIR = "ledger"
FAILED_DIR = "failed"
QUARANTINE_DIR = "quarantine"
DEDUP_DIR = "dedup"  # signatures per unit, removals per unit, and the result of the search (docs/formats.md)
DECONTAMINATE_DIR = "decontaminate"  # the tasks a build keeps out of its corpus (docs/formats.md)
LOCK_FILE = ".build.lock"


class CorpusBusy(RuntimeError):
    """Another build holds the corpus folder."""


class NotACorpus(FileNotFoundError):
    """A name or folder that does not hold a corpus; the message says what was looked for and where."""


class CorpusWriteError(RuntimeError):
    """A build could not write into its corpus: the disk (or the user's quota) is full, or the store is unreachable.

    The message is one line: the file, what to do (free space on the filesystem, or check the
    connection to the store), and that a rerun keeps the finished units (each is whole once its
    ledger entry exists).
    """

    def __init__(self, path: str | Path, errno_code: int | None, detail: str = "", unreachable: bool = False):
        self.path, self.errno, self.unreachable = str(path), errno_code, unreachable
        if unreachable:
            message = (f"lost the connection to the store writing {self.path}{f' ({detail})' if detail else ''}: "
                       f"check the network, the endpoint (AWS_ENDPOINT_URL) and the credentials, then rerun the "
                       f"same build: finished units are kept")
        else:
            what = "disk quota exceeded" if errno_code == errno.EDQUOT else "no space left on the device"
            message = (f"{what} writing {self.path}{f' ({detail})' if detail else ''}: free space on "
                       f"{mount_point(self.path)} then rerun the same build: finished units are kept")
        super().__init__(message)
        self.detail = detail

    @classmethod
    def of(cls, error: OSError, path: str | Path) -> "CorpusWriteError":
        """The stop for ``error`` (one :func:`location.stops_build` accepts); ``path`` when the error names none."""
        if isinstance(error, location.StoreUnreachable):
            return cls(error.filename or path, None, error.detail, unreachable=True)
        return cls(error.filename or path, error.errno)

    def __reduce__(self):  # rebuilt from its parts, since __init__ does not take the message
        return type(self), (self.path, self.errno, self.detail, self.unreachable)


class CorpusDir:
    """A corpus's files, wherever it lives: ``root`` is a ``Path`` or an :class:`ObjectPath` (:func:`location.at`)."""

    def __init__(self, root: str | os.PathLike | ObjectPath):
        self.root: StorePath = location.at(root)

    @property
    def remote(self) -> bool:
        return isinstance(self.root, ObjectPath)

    @property
    def plan_path(self) -> StorePath:
        return self.root / PLAN_JSON

    @property
    def corpus_json_path(self) -> StorePath:
        return self.root / CORPUS_JSON

    @property
    def lock_path(self) -> StorePath:
        return self.root / LOCK_FILE

    def shard_stem(self, source: str, unit: str) -> StorePath:
        return self.root / SHARDS_DIR / source / unit

    def source_shards_dir(self, source: str) -> StorePath:
        return self.root / SHARDS_DIR / source

    def ledger_path(self, source: str, unit: str) -> StorePath:
        return self.root / LEDGER_DIR / source / f"{unit}.json"

    def failed_path(self, source: str, unit: str) -> StorePath:
        return self.root / FAILED_DIR / source / f"{unit}.json"

    def signatures_path(self, source: str, unit: str) -> StorePath:
        return self.root / DEDUP_DIR / "signatures" / source / f"{unit}.npz"

    def removed_path(self, source: str, unit: str) -> StorePath:
        return self.root / DEDUP_DIR / "removed" / source / f"{unit}.json"

    @property
    def dedup_result_path(self) -> StorePath:
        return self.root / DEDUP_DIR / "result.json"

    @property
    def decontamination_tasks_path(self) -> StorePath:
        return self.root / DECONTAMINATE_DIR / "tasks.json"

    def quarantine_path(self, source: str, unit: str) -> StorePath:
        return self.root / QUARANTINE_DIR / source / f"{unit}.jsonl"

    def relative(self, path: StorePath) -> str:
        return path.relative_to(self.root).as_posix()

    def unit_files(self, source: str, unit: str) -> list[StorePath]:
        """What a unit leaves besides its ledger entry: sidecar, index, tokens, quarantine (some may not exist)."""
        stem = self.shard_stem(source, unit)
        return [stem.with_suffix(".json"), stem.with_suffix(".idx"), stem.with_suffix(".bin"),
                self.quarantine_path(source, unit)]

    # ------------------------------------------------------------ reading

    def is_corpus(self) -> bool:
        """A folder a build has started: it holds corpus.json or plan.json."""
        return location.exists(self.corpus_json_path) or location.exists(self.plan_path)

    def is_done(self, source: str, unit: str) -> bool:
        return location.exists(self.ledger_path(source, unit))

    def ledger_entry(self, source: str, unit: str) -> dict | None:
        return location.read_json(self.ledger_path(source, unit))

    def read_plan(self) -> dict | None:
        return location.read_json(self.plan_path)

    def ledger_units(self) -> dict[tuple[str, str], StorePath]:
        """``(source, unit) -> ledger entry path`` of every finished unit."""
        return _unit_files(self.root / LEDGER_DIR)

    def signed_units(self) -> set[tuple[str, str]]:
        """``(source, unit)`` of every unit whose deduplication signatures are written (one listing)."""
        return set(_unit_files(self.root / DEDUP_DIR / "signatures", ".npz"))

    def failed_units(self) -> dict[tuple[str, str], StorePath]:
        """``(source, unit) -> failure entry path`` of every unit whose last attempt failed."""
        return _unit_files(self.root / FAILED_DIR)

    def ledger_entries(self) -> dict[tuple[str, str], dict]:
        """Every ledger entry, by ``(source, unit)``: one listing, then the reads (concurrent on an object store)."""
        return _read_entries(self.ledger_units())

    def ledger_entries_in_batches(self, units: Iterable[tuple[str, str]], batch: int = 2048
                                  ) -> Iterator[tuple[tuple[str, str], dict]]:
        """The entries of ``units`` (``(source, unit)`` keys), in their order, read ``batch`` at a time: a pass over
        every entry of a large corpus that holds one batch of parsed entries and paths, not all of them."""
        units = iter(units)
        while keys := tuple(itertools.islice(units, batch)):
            found = _read_entries({k: self.ledger_path(*k) for k in keys})
            for key in keys:
                if key in found:
                    yield key, found[key]

    def failed_entries(self) -> dict[tuple[str, str], dict]:
        return _read_entries(self.failed_units())

    def source_shards(self, source: str) -> list[Shard]:
        """The shards of one source in their deterministic (unit id) order, memory-mapped."""
        if self.remote:
            raise ValueError(f"{self.root}: shards on an object store are memory-mapped from a local copy; "
                             f"read them through corpus.store.cache")
        return [Shard.open(p.with_suffix("")) for p in sorted(self.source_shards_dir(source).glob("*.idx"))]

    # ------------------------------------------------------------ writing

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the folder for one build; locally the lock dies with its process, however that ends."""
        if self.remote:
            with self._lock_object():
                yield
            return
        try:
            with held_lock(self.lock_path, wait=False):
                yield
        except BlockingIOError:
            raise CorpusBusy(f"{self.root}: another build is writing this folder; wait for it or stop it") from None

    @contextmanager
    def _lock_object(self) -> Iterator[None]:
        """The build lock on an object store, which has no flock: an object created only where none is.

        It holds the build's id, host and pid. No fencing and no expiry: a build killed without
        running its ``finally`` leaves the object behind; the next build on the same host takes
        it over once that pid is gone, any other is refused until the object is deleted by hand.
        """
        mine = {"build_id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                "started_at": utc_now()}
        if not location.create(self.lock_path, json_bytes(mine)):
            holder = _lock_holder(self.lock_path)
            if not (holder.get("host") == mine["host"] and isinstance(holder.get("pid"), int)
                    and not location.pid_alive(holder["pid"])):
                raise CorpusBusy(
                    f"{self.root}: another build holds the lock object {self.lock_path} (build "
                    f"{holder.get('build_id', '?')} on {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
                    f"since {holder.get('started_at', '?')}); wait for it, or if that build is dead, delete "
                    f"the lock object and rerun")
            location.write_bytes(self.lock_path, json_bytes(mine))  # the holder died on this host: take it over
        try:
            yield
        finally:
            try:
                if _lock_holder(self.lock_path).get("build_id") == mine["build_id"]:
                    location.remove(self.lock_path)
            except OSError:  # the store is gone: the lock stays, and a rerun on this host takes it over
                pass

    def remove_if_only_lock(self) -> None:
        if self.remote:
            if set(location.files_under(self.root)) == {LOCK_FILE}:
                location.remove(self.lock_path)
            return
        if self.root.is_dir() and all(p.name == LOCK_FILE for p in self.root.iterdir()):
            self.lock_path.unlink(missing_ok=True)
            self.root.rmdir()

    def write_quarantine(self, source: str, unit: str, rows: list[dict]) -> StorePath | None:
        path = self.quarantine_path(source, unit)
        if not rows:
            location.remove(path)  # left by an attempt on an input that has since been repaired
            return None
        location.write_bytes(path, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n"
                                           for r in rows).encode("utf-8"))
        return path

    def write_ledger(self, source: str, unit: str, entry: dict) -> None:
        location.write_json(self.ledger_path(source, unit), entry)
        location.remove(self.failed_path(source, unit))

    def discard_unit_files(self, source: str, unit: str) -> list[StorePath]:
        """Remove the files of a unit that has no ledger entry (they are not a finished unit); return those removed."""
        if self.is_done(source, unit):
            raise ValueError(f"{source}/{unit} is finished: forget_unit() it first")
        return [path for path in self.unit_files(source, unit) if location.remove(path)]

    def forget_unit(self, source: str, unit: str) -> list[StorePath]:
        """Make a finished unit pending again, so the next build computes it afresh; return the files removed.

        The ledger entry goes first (and that removal is made durable): a crash after it leaves
        a pending unit whose leftover files the build overwrites, never a finished unit without files.
        """
        ledger = self.ledger_path(source, unit)
        removed = []
        if location.remove(ledger):
            if isinstance(ledger, Path):
                sync_path(ledger.parent)
            removed.append(ledger)
        return removed + self.discard_unit_files(source, unit)

    def write_failed(self, source: str, unit: str, entry: dict) -> None:
        location.write_json(self.failed_path(source, unit), entry)

    def write_plan(self, plan: dict) -> None:
        location.write_json(self.plan_path, plan)

    def write_index(self, index: dict) -> None:
        location.write_json(self.corpus_json_path, index)

    def remove_stale_temporaries(self) -> int:
        """Delete the temporary files of writes a killed build left half done (an object store has none)."""
        if self.remote:
            return 0
        removed = 0
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                if name.startswith(".") and name.endswith(".tmp"):
                    # a worker the killed build left running may still be finishing its one unit: its rename can
                    # take the file first (what it renames is whole, and the same bytes a rerun writes)
                    with suppress(FileNotFoundError):
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
        return removed


def _lock_holder(path: StorePath) -> dict:
    try:
        holder = location.read_json(path)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _unit_files(folder: StorePath, suffix: str = ".json") -> dict[tuple[str, str], StorePath]:
    """``(source, unit) -> path`` for every ``<folder>/<source>/<unit><suffix>``, sorted."""
    out = {}
    for rel in location.list_files(folder):
        parts = rel.split("/")
        if len(parts) == 2 and parts[1].endswith(suffix) and not parts[1].startswith("."):
            out[(parts[0], parts[1][:-len(suffix)])] = folder / parts[0] / parts[1]
    return out


def _read_entries(paths: dict[tuple[str, str], StorePath]) -> dict[tuple[str, str], dict]:
    found = location.read_many(list(paths.values()))
    return {key: json.loads(found[path]) for key, path in paths.items() if path in found}


def read_corpus_json(corpus_dir: str | Path | ObjectPath) -> dict:
    """The corpus-level index: manifest, tokenizer hash, every shard with checksums, totals."""
    index = location.read_json(location.at(corpus_dir) / CORPUS_JSON)
    if index is None:
        raise FileNotFoundError(f"{corpus_dir}: not a corpus folder (no {CORPUS_JSON}); build it with "
                                f"'elm-corpus build MANIFEST'")
    return index


def source_shards(corpus_dir: str | Path, source: str) -> list[Shard]:
    """The shards of one source in their deterministic (unit id) order."""
    return CorpusDir(corpus_dir).source_shards(source)


# ---------------------------------------------------------------- finding corpora

def corpora_dir(data_dir: str | Path | None = None) -> Path:
    return Path(data_dir) if data_dir is not None else corpora_root()


def list_corpora(data_dir: str | Path | None = None) -> list[Path]:
    """Every corpus folder under the corpora folder, by name."""
    root = corpora_dir(data_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and CorpusDir(p).is_corpus())


def find_corpus(target: str | Path, data_dir: str | Path | None = None) -> StorePath:
    """A corpus from a folder path, a URI (``s3://bucket/prefix``), or a name under the corpora folder
    (``data_dir`` or the default)."""
    where = location.at(target)
    if isinstance(where, ObjectPath):
        if CorpusDir(where).is_corpus():
            return where
        raise NotACorpus(f"{where} is not a corpus: it holds neither {CORPUS_JSON} nor {PLAN_JSON} (check the "
                         f"URI, and that your credentials can read it)")
    path = where
    under = corpora_dir(data_dir) / str(target)
    for candidate in (path, under):
        if candidate.is_dir():
            if CorpusDir(candidate).is_corpus():
                return candidate
            raise NotACorpus(f"{candidate} is not a corpus folder: it has neither {CORPUS_JSON} nor {PLAN_JSON} "
                             f"(a folder 'elm-corpus build' writes has both)")
    names = [p.name for p in list_corpora(data_dir)]
    known = f"; corpora there: {', '.join(names)}" if names else "; there are none yet"
    raise NotACorpus(f"corpus {str(target)!r} not found: not a folder, and not a name under {corpora_dir(data_dir)}"
                     f"{known} (build one with 'elm-corpus build MANIFEST', e.g. 'elm-corpus build "
                     f"manifests/openelm.yaml --sample' for 'openelm-sample')")
