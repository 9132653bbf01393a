"""The layout of a corpus folder and its ledger: which work units are finished, failed or pending.

::

    <corpus>/plan.json                          fingerprint + every work unit (fixed at the first build)
    <corpus>/corpus.json                        the index: shards, checksums, totals, status
    <corpus>/shards/<source>/<unit>.{bin,idx,json}
    <corpus>/quarantine/<source>/<unit>.jsonl   bad records of the unit (only when it had some)
    <corpus>/ledger/<source>/<unit>.json        written last: the unit is complete once this exists
    <corpus>/failed/<source>/<unit>.json        the error of a unit's last failed attempt

Every file is written atomically, so a build killed at any moment leaves either a whole
file or none, and a unit without a ledger entry is simply computed again.
"""
from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from corpus.store.shards import CORPUS_JSON, SHARDS_DIR, atomic_write_bytes, atomic_write_json

PLAN_JSON = "plan.json"
LEDGER_DIR = "ledger"
FAILED_DIR = "failed"
QUARANTINE_DIR = "quarantine"
LOCK_FILE = ".build.lock"


class CorpusBusy(RuntimeError):
    """Another build holds the corpus folder."""


class CorpusDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def plan_path(self) -> Path:
        return self.root / PLAN_JSON

    @property
    def corpus_json_path(self) -> Path:
        return self.root / CORPUS_JSON

    def shard_stem(self, source: str, unit: str) -> Path:
        return self.root / SHARDS_DIR / source / unit

    def ledger_path(self, source: str, unit: str) -> Path:
        return self.root / LEDGER_DIR / source / f"{unit}.json"

    def failed_path(self, source: str, unit: str) -> Path:
        return self.root / FAILED_DIR / source / f"{unit}.json"

    def quarantine_path(self, source: str, unit: str) -> Path:
        return self.root / QUARANTINE_DIR / source / f"{unit}.jsonl"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # ------------------------------------------------------------ reading

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

    # ------------------------------------------------------------ writing

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the folder for one build; the lock dies with its process, however that ends."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CorpusBusy(f"{self.root}: another build is writing this folder; wait for it or stop it") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def remove_if_only_lock(self) -> None:
        if self.root.is_dir() and all(p.name == LOCK_FILE for p in self.root.iterdir()):
            (self.root / LOCK_FILE).unlink(missing_ok=True)
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

    def write_failed(self, source: str, unit: str, entry: dict) -> None:
        atomic_write_json(self.failed_path(source, unit), entry)

    def write_plan(self, plan: dict) -> None:
        atomic_write_json(self.plan_path, plan)

    def remove_stale_temporaries(self) -> int:
        """Delete the temporary files of writes a killed build left half done."""
        removed = 0
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                if name.startswith(".") and name.endswith(".tmp"):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
        return removed
