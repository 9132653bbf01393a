"""The layout of a corpus folder and its ledger: which work units are finished, failed or pending.

::

    <corpus>/plan.json                          fingerprint + every work unit (fixed at the first build)
    <corpus>/corpus.json                        the index: shards, checksums, totals, status
    <corpus>/shards/<source>/<unit>.{bin,idx,json}
    <corpus>/quarantine/<source>/<unit>.jsonl   bad records of the unit (only when it had some)
    <corpus>/ledger/<source>/<unit>.json        written last: the unit is complete once this exists
    <corpus>/failed/<source>/<unit>.json        the error of a unit's last failed attempt

Every file is written atomically, so a build killed at any moment leaves either a whole
file or none, and a unit without a ledger entry is simply computed again. A corpus is
named by its folder, or by its folder's name under the corpora folder (:func:`find_corpus`).
"""
from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from corpus.paths import corpora_root
from corpus.store.files import atomic_write_bytes, atomic_write_json, held_lock, mount_point
from corpus.store.shards import Shard

PLAN_JSON = "plan.json"
CORPUS_JSON = "corpus.json"
SHARDS_DIR = "shards"
LEDGER_DIR = "ledger"
FAILED_DIR = "failed"
QUARANTINE_DIR = "quarantine"
LOCK_FILE = ".build.lock"


class CorpusBusy(RuntimeError):
    """Another build holds the corpus folder."""


class NotACorpus(FileNotFoundError):
    """A name or folder that does not hold a corpus; the message says what was looked for and where."""


class CorpusWriteError(RuntimeError):
    """A build could not write into its corpus folder because the disk (or the user's quota) is full.

    The message is one line: the file, the filesystem to free space on, and that a rerun keeps
    the finished units (each is whole once its ledger entry exists).
    """

    def __init__(self, path: str | Path, errno_code: int | None, detail: str = ""):
        self.path, self.errno = str(path), errno_code
        what = "disk quota exceeded" if errno_code == errno.EDQUOT else "no space left on the device"
        super().__init__(f"{what} writing {self.path}{f' ({detail})' if detail else ''}: free space on "
                         f"{mount_point(self.path)} then rerun the same build: finished units are kept")
        self.detail = detail

    def __reduce__(self):  # rebuilt from its parts, since __init__ does not take the message
        return type(self), (self.path, self.errno, self.detail)


class CorpusDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def plan_path(self) -> Path:
        return self.root / PLAN_JSON

    @property
    def corpus_json_path(self) -> Path:
        return self.root / CORPUS_JSON

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILE

    def shard_stem(self, source: str, unit: str) -> Path:
        return self.root / SHARDS_DIR / source / unit

    def source_shards_dir(self, source: str) -> Path:
        return self.root / SHARDS_DIR / source

    def ledger_path(self, source: str, unit: str) -> Path:
        return self.root / LEDGER_DIR / source / f"{unit}.json"

    def failed_path(self, source: str, unit: str) -> Path:
        return self.root / FAILED_DIR / source / f"{unit}.json"

    def quarantine_path(self, source: str, unit: str) -> Path:
        return self.root / QUARANTINE_DIR / source / f"{unit}.jsonl"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def unit_files(self, source: str, unit: str) -> list[Path]:
        """What a unit leaves besides its ledger entry: sidecar, index, tokens, quarantine (some may not exist)."""
        stem = self.shard_stem(source, unit)
        return [stem.with_suffix(".json"), stem.with_suffix(".idx"), stem.with_suffix(".bin"),
                self.quarantine_path(source, unit)]

    # ------------------------------------------------------------ reading

    def is_corpus(self) -> bool:
        """A folder a build has started: it holds corpus.json or plan.json."""
        return self.corpus_json_path.is_file() or self.plan_path.is_file()

    def is_done(self, source: str, unit: str) -> bool:
        return self.ledger_path(source, unit).exists()

    def ledger_entry(self, source: str, unit: str) -> dict | None:
        path = self.ledger_path(source, unit)
        return json.loads(path.read_text()) if path.exists() else None

    def failed_entry(self, source: str, unit: str) -> dict | None:
        path = self.failed_path(source, unit)
        return json.loads(path.read_text()) if path.exists() else None

    def read_plan(self) -> dict | None:
        return json.loads(self.plan_path.read_text()) if self.plan_path.exists() else None

    def ledger_units(self) -> dict[tuple[str, str], Path]:
        """``(source, unit) -> ledger entry path`` of every finished unit."""
        return _unit_files(self.root / LEDGER_DIR)

    def failed_units(self) -> dict[tuple[str, str], Path]:
        """``(source, unit) -> failure entry path`` of every unit whose last attempt failed."""
        return _unit_files(self.root / FAILED_DIR)

    def source_shards(self, source: str) -> list[Shard]:
        """The shards of one source in their deterministic (unit id) order."""
        return [Shard.open(p.with_suffix("")) for p in sorted(self.source_shards_dir(source).glob("*.idx"))]

    # ------------------------------------------------------------ writing

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the folder for one build; the lock dies with its process, however that ends."""
        try:
            with held_lock(self.lock_path, wait=False):
                yield
        except BlockingIOError:
            raise CorpusBusy(f"{self.root}: another build is writing this folder; wait for it or stop it") from None

    def remove_if_only_lock(self) -> None:
        if self.root.is_dir() and all(p.name == LOCK_FILE for p in self.root.iterdir()):
            self.lock_path.unlink(missing_ok=True)
            self.root.rmdir()

    def write_quarantine(self, source: str, unit: str, rows: list[dict]) -> Path | None:
        path = self.quarantine_path(source, unit)
        if not rows:
            if path.exists():  # left by an attempt on an input that has since been repaired
                path.unlink()
            return None
        atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n"
                                         for r in rows).encode("utf-8"))
        return path

    def write_ledger(self, source: str, unit: str, entry: dict) -> None:
        atomic_write_json(self.ledger_path(source, unit), entry)
        failed = self.failed_path(source, unit)
        if failed.exists():
            failed.unlink()

    def discard_unit_files(self, source: str, unit: str) -> list[Path]:
        """Remove the files of a unit that has no ledger entry (they are not a finished unit); return those removed."""
        if self.is_done(source, unit):
            raise ValueError(f"{source}/{unit} is finished: forget_unit() it first")
        removed = []
        for path in self.unit_files(source, unit):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
        return removed

    def forget_unit(self, source: str, unit: str) -> list[Path]:
        """Make a finished unit pending again, so the next build computes it afresh; return the files removed.

        The ledger entry goes first (and that removal is made durable): a crash after it leaves
        a pending unit whose leftover files the build overwrites, never a finished unit without files.
        """
        ledger = self.ledger_path(source, unit)
        removed = []
        if ledger.exists():
            ledger.unlink()
            _sync_folder(ledger.parent)
            removed.append(ledger)
        return removed + self.discard_unit_files(source, unit)

    def write_failed(self, source: str, unit: str, entry: dict) -> None:
        atomic_write_json(self.failed_path(source, unit), entry)

    def write_plan(self, plan: dict) -> None:
        atomic_write_json(self.plan_path, plan)

    def write_index(self, index: dict) -> None:
        atomic_write_json(self.corpus_json_path, index)

    def remove_stale_temporaries(self) -> int:
        """Delete the temporary files of writes a killed build left half done."""
        removed = 0
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                if name.startswith(".") and name.endswith(".tmp"):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
        return removed


def _sync_folder(folder: Path) -> None:
    """Make a rename or removal in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unit_files(folder: Path) -> dict[tuple[str, str], Path]:
    """``(source, unit) -> path`` for every ``<folder>/<source>/<unit>.json``."""
    out = {}
    if folder.is_dir():
        for source_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            for path in sorted(source_dir.glob("*.json")):
                out[(source_dir.name, path.stem)] = path
    return out


def read_corpus_json(corpus_dir: str | Path) -> dict:
    """The corpus-level index: manifest, tokenizer hash, every shard with checksums, totals."""
    path = Path(corpus_dir) / CORPUS_JSON
    if not path.exists():
        raise FileNotFoundError(f"{corpus_dir}: not a corpus folder (no {CORPUS_JSON}); build it with "
                                f"'elm-corpus build MANIFEST'")
    return json.loads(path.read_text())


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


def find_corpus(target: str | Path, data_dir: str | Path | None = None) -> Path:
    """A corpus folder from a folder path, or from a name under the corpora folder (``data_dir`` or the default)."""
    path = Path(target).expanduser()
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
