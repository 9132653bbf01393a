"""Decontamination's measure: which items of evaluation tasks share a word n-gram with a built corpus, and where.

Both sides are reduced by :mod:`corpus.cleaning.words` (lowercased, punctuation removed, split on whitespace) and
cut into runs of ``n`` words (13 by default, as GPT-3 and lm-eval's decontamination did); each n-gram is the 64-bit
xxhash of its text. The tasks' n-grams make a :class:`NgramIndex` (a sorted array of hashes, each with the items
that have it); the corpus is scanned once, a unit at a time (:func:`scan_unit`), every n-gram of every document
looked up in it. An item of fewer than ``n`` words has no n-gram: it is counted as ``short`` and never matches.
With about a million task n-grams and 10^12 corpus n-grams, 64 bits leave about 0.05 false matches in all.

A corpus stores tokens, so its documents are decoded with the corpus's own tokenizer: the text the corpus really
holds, after the build's NFC, filters and tokenizer. A document the build split into chunks is joined again from
its consecutive chunks (the sidecar's ``origin``: the same record, the next part) with the one space the split
took out, so an n-gram across a chunk boundary is found. Chunks of a record with a dropped chunk between them are
not joined: the corpus never holds their words side by side.

The build's decontamination (a manifest's ``decontaminate``) checks the same index against each document's whole
text before it is cut into chunks (:class:`Decontamination`), so it finds at least what a report on the corpus
built without it would find, and drops the documents that hold it (``CONTAMINATED``).
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corpus.cleaning.words import ngram_hashes as word_ngram_hashes, words
from corpus.store import location
from corpus.store.cache import local_unit
from corpus.store.files import utc_now
from corpus.store.layout import CorpusDir
from corpus.store.location import StorePath
from corpus.store.shards import Shard
from corpus.tasks.items import TaskItems
from corpus.tokenizer.tokenizer import Tokenizer

REPORTS_DIR = "contamination"  # in a corpus folder: one report per set of tasks and n
CONTAMINATED = "contaminated"  # the drop reason of a document the build's decontamination removed
_NO_HASHES = np.zeros(0, dtype=np.uint64)
_NO_ITEMS = np.zeros(0, dtype=np.int64)


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """The 64-bit xxhash of each n-gram of the text's words, in order; none when it has fewer than ``n`` words."""
    return word_ngram_hashes(words(text), n)


@dataclass(frozen=True)
class NgramIndex:
    """The n-grams of numbered items: item ``items[starts[k]:starts[k + 1]]`` have the n-gram hashed ``hashes[k]``."""
    n: int
    hashes: np.ndarray   # uint64, sorted, each once
    starts: np.ndarray   # int64, len(hashes) + 1
    items: np.ndarray    # int64 item numbers
    short: np.ndarray    # bool per item: fewer than n words in every text, so no n-gram

    @classmethod
    def build(cls, items: Sequence[Sequence[str]], n: int) -> "NgramIndex":
        """The index of ``items`` (per item, the texts it is scored on), numbered in order."""
        if n < 1:
            raise ValueError(f"an n-gram needs at least one word, got n={n}")
        per_item = [np.unique(np.concatenate([ngram_hashes(t, n) for t in texts] or [_NO_HASHES]))
                    for texts in items]
        counts = np.array([len(h) for h in per_item], dtype=np.int64)
        numbers = np.repeat(np.arange(len(items), dtype=np.int64), counts)
        hashes = np.concatenate(per_item) if per_item else _NO_HASHES
        order = np.lexsort((numbers, hashes))
        hashes, numbers = hashes[order], numbers[order]
        keys, first = np.unique(hashes, return_index=True)
        starts = np.append(first, len(hashes)).astype(np.int64)
        return cls(n, keys, starts, numbers, counts == 0)

    def __len__(self) -> int:
        """Items indexed."""
        return len(self.short)

    def items_with(self, hashes: np.ndarray) -> np.ndarray:
        """The items (sorted, each once) that have any of the n-grams ``hashes``."""
        if not len(self.hashes) or not len(hashes):
            return _NO_ITEMS
        at = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        found = np.unique(at[self.hashes[at] == hashes])
        if not found.size:
            return _NO_ITEMS
        return np.unique(np.concatenate([self.items[self.starts[k]:self.starts[k + 1]] for k in found]))


def unit_documents(shard: Shard, origin: dict | None, tokenizer: Tokenizer) -> Iterator[str]:
    """The unit's documents as text: each run of consecutive chunks of one record decoded and joined by a space.

    ``origin`` is the sidecar's (``record`` and ``part`` per chunk); without it (a hand-made shard), each chunk is a
    document of its own.
    """
    origin = origin or {}
    records, parts = origin.get("record") or [], origin.get("part") or []
    traced = len(records) == len(parts) == len(shard)
    pieces: list[str] = []
    for i in range(len(shard)):
        follows = traced and i > 0 and records[i] == records[i - 1] and parts[i] == parts[i - 1] + 1
        if pieces and not follows:
            yield " ".join(pieces)
            pieces = []
        pieces.append(tokenizer.decode(shard.chunk(i)))  # BOS and EOS are control pieces: they decode to nothing
    if pieces:
        yield " ".join(pieces)


@dataclass(frozen=True)
class ScanJob:
    """What every unit's scan needs: the corpus (a folder or URI), its own tokenizer (shipped to workers as the
    model's bytes) and the tasks' index."""
    corpus: str
    tokenizer: Tokenizer
    index: NgramIndex


@dataclass
class UnitScan:
    """One unit's findings: the items that share an n-gram with its documents."""
    source: str
    unit: str
    items: np.ndarray = field(default_factory=lambda: _NO_ITEMS)
    documents: int = 0
    ngrams: int = 0


def scan_unit(job: ScanJob, entry: dict) -> UnitScan:
    """Scan one finished unit (its ledger ``entry``: source, unit and the sha256s a copy from a store is checked
    against) for the index's n-grams."""
    corpus = CorpusDir(job.corpus)
    source, unit = entry["source"], entry["unit"]
    out = UnitScan(source, unit)
    hit: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="elm-contamination-") as scratch:
        shard = Shard.open(local_unit(corpus, source, unit, entry, Path(scratch)))
        for text in unit_documents(shard, shard.sidecar().get("origin"), job.tokenizer):
            hashes = ngram_hashes(text, job.index.n)
            out.documents += 1
            out.ngrams += len(hashes)
            found = job.index.items_with(hashes)
            if found.size:
                hit.append(found)
    if hit:
        out.items = np.unique(np.concatenate(hit))
    return out


def tally(tasks: Sequence[TaskItems], index: NgramIndex, scans: Sequence[UnitScan]) -> dict[str, dict]:
    """Per task: items, items contaminated, and per source the task's items found in it (most first); for a group,
    its subtasks' items and items contaminated as well (``per_subtask``). Items are numbered as :func:`index_tasks`
    numbered them."""
    by_source: dict[str, list[np.ndarray]] = {}
    for scan in scans:
        by_source.setdefault(scan.source, []).append(scan.items)
    found = {s: np.unique(np.concatenate(arrays)) for s, arrays in by_source.items()}
    out, first = {}, 0
    for task in tasks:
        last = first + len(task)
        within = {s: items[(items >= first) & (items < last)] for s, items in found.items()}
        sources = {s: int(i.size) for s, i in sorted(within.items(), key=lambda kv: (-kv[1].size, kv[0])) if i.size}
        hit = np.unique(np.concatenate(list(within.values()))) if within else _NO_ITEMS
        out[task.name] = {"items": len(task), "contaminated": int(hit.size), "sources": sources,
                          "short": int(index.short[first:last].sum()), "subtasks": list(task.subtasks),
                          "items_sha256": task.sha256}
        if len(task.subtasks) > 1 and len(task.subtask_items) == len(task.subtasks):
            out[task.name]["per_subtask"] = _per_subtask(task, hit - first)
        first = last
    return out


def _per_subtask(task: TaskItems, hit: np.ndarray) -> dict[str, dict]:
    """A group's counts per subtask (``hit``: its contaminated items, numbered within the group), so that eval can
    mark a subtask's row with its own count."""
    out, first = {}, 0
    for name, size in zip(task.subtasks, task.subtask_items):
        out[name] = {"items": size, "contaminated": int(((hit >= first) & (hit < first + size)).sum())}
        first += size
    return out


def index_tasks(tasks: Sequence[TaskItems], n: int) -> NgramIndex:
    """One index over the items of every task, numbered task after task in the order given."""
    return NgramIndex.build([texts for task in tasks for texts in task.texts], n)


@dataclass(frozen=True)
class Decontamination:
    """What the build checks every document against (a manifest's ``decontaminate``): the tasks' index, and the
    tasks in the order their items are numbered, as ``decontaminate/tasks.json`` records them."""
    index: NgramIndex
    tasks: tuple[dict, ...]  # per task: name, items, short, subtasks, items_sha256

    @classmethod
    def of(cls, tasks: Sequence[TaskItems], n: int) -> "Decontamination":
        index = index_tasks(tasks, n)
        described, first = [], 0
        for task in tasks:
            described.append({"name": task.name, "items": len(task),
                              "short": int(index.short[first:first + len(task)].sum()),
                              "subtasks": list(task.subtasks), "items_sha256": task.sha256})
            first += len(task)
        return cls(index, tuple(described))

    def record(self) -> dict:
        """``decontaminate/tasks.json``: what a resumed build must find again, and what corpus.json's counts are of."""
        return {"ngram": self.index.n, "tasks": list(self.tasks)}

    def found_in(self, text: str) -> np.ndarray:
        """The items (numbered over every task) that share an n-gram with ``text``."""
        return self.index.items_with(ngram_hashes(text, self.index.n))

    def by_task(self, items: Iterable[int]) -> dict[str, list[int]]:
        """Item numbers over every task -> ``{task: its own item numbers}``, sorted, tasks without any left out."""
        firsts = np.cumsum([0] + [t["items"] for t in self.tasks])
        out: dict[str, list[int]] = {}
        for item in sorted(items):
            k = int(np.searchsorted(firsts, item, side="right")) - 1
            out.setdefault(self.tasks[k]["name"], []).append(int(item - firsts[k]))
        return out


def report_path(root: StorePath, tasks: dict[str, dict], n: int) -> StorePath:
    """Where a report on these tasks (their names and exact items) and ``n`` lives in the corpus: the same command
    run again replaces it, other tasks or another ``n`` go beside it."""
    key = json.dumps({"ngram": n, "tasks": {name: t["items_sha256"] for name, t in sorted(tasks.items())}})
    return root / REPORTS_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def write_report(root: StorePath, report: dict) -> StorePath:
    """Keep ``report`` in the corpus (atomically on a local disk, one put on a store); return where."""
    path = report_path(root, report["tasks"], report["ngram"])
    location.write_json(path, report)
    return path


def task_reports(root: StorePath) -> dict[str, dict]:
    """What the corpus's reports say of each task: the newest report's entry for it, with that report's ``ngram``,
    ``created_at`` and file name (``report``) added; for `elm-train eval` to mark contaminated tasks."""
    folder = location.at(root) / REPORTS_DIR
    reports = []
    for name in location.list_files(folder):
        if name.endswith(".json") and "/" not in name and not name.startswith("."):  # not a write's temporary
            report = location.read_json(folder / name)
            if isinstance(report, dict):
                reports.append((report.get("created_at") or "", name, report))
    out: dict[str, dict] = {}
    for created, name, report in sorted(reports, key=lambda r: r[:2]):
        for task, entry in (report.get("tasks") or {}).items():
            out[task] = {**entry, "ngram": report.get("ngram"), "created_at": created, "report": name}
    return out


def new_report(corpus: str, n: int, tasks: dict[str, dict], scans: Sequence[UnitScan], index: dict) -> dict:
    """The report kept in the corpus and printed by ``--json``: the tasks' counts, what was scanned, and the build
    (corpus.json's ``index``) it was scanned in."""
    return {"corpus": corpus, "ngram": n, "tasks": tasks,
            "scanned": {"units": len(scans), "documents": sum(s.documents for s in scans),
                        "ngrams": sum(s.ngrams for s in scans), "corpus_status": index.get("status"),
                        "manifest_fingerprint": index.get("manifest_fingerprint"),
                        "tokenizer_sha256": (index.get("tokenizer") or {}).get("sha256")},
            "created_at": utc_now()}
