"""`elm-corpus contamination`: how many items of evaluation tasks share a word n-gram with a built corpus, and in
which sources (the measure itself: corpus.cleaning.contamination).

Everything that can be refused is checked before any scan and any write: the n-gram size, the workers, the
corpus, its tokenizer, the task names and the tasks' data. The tasks are loaded as `elm-train eval` loads them
(corpus.tasks). The scan runs one Ray task per finished unit through the project's own Ray (token authentication
on), on this machine or a cluster; a corpus small enough that Ray's start would cost more than the scan is
scanned in this process. The report is printed and kept in the corpus (``contamination/<key>.json``).
"""
from __future__ import annotations

from dataclasses import dataclass

from corpus.cleaning.contamination import ScanJob, UnitScan, index_tasks, new_report, scan_unit, tally, write_report
from corpus.cleaning.words import NGRAM
from corpus.store.layout import CorpusDir, find_corpus, read_corpus_json
from corpus.store.location import StorePath, store_environment
from corpus.tasks.items import TaskItems, load_items
from corpus.tasks.manager import TaskDataMissing, TaskError
from corpus.tokenizer.tokenizer import described_tokenizer
from pipelines.runner import cluster_cpus, in_flight, require_token_auth, start_ray

# Tokens below which the corpus is scanned in this process: a scan reads about 1.2M tokens a second per core
# (docs/benchmarks.md), so below this Ray's start (about 4 s) costs more than a second core saves.
LOCAL_SCAN_TOKENS = 5_000_000
# What a unit's Ray task needs of its ledger entry: which unit, and the checksums a copy from a store must have.
_ENTRY_KEYS = ("source", "unit", "sha256_bin", "sha256_idx")


class ContaminationRefused(ValueError):
    """Input that no scan is started for; the message is one line naming the setting."""


@dataclass
class Contamination:
    report: dict          # the tasks' counts, as printed by --json and kept in the corpus
    path: StorePath       # where it was kept
    ray: bool             # whether the scan ran on Ray


def measure(target: str, tasks: str, include_path: str | None = None, ngram: int = NGRAM,
            workers: int | None = None, address: str | None = None, data_dir: str | None = None,
            local_below: int = LOCAL_SCAN_TOKENS) -> Contamination:
    """Scan the corpus ``target`` (a name, folder or URI) for the n-grams of ``tasks`` (lm-eval names and task sets,
    comma-separated); keep and return the report. ``local_below``: tokens under which no Ray is started (unless
    ``address`` names a cluster)."""
    if ngram < 1:
        raise ContaminationRefused(f"--ngram must be a positive number of words, got {ngram}")
    if workers is not None and workers < 1:
        raise ContaminationRefused(f"--workers must be at least 1, got {workers}")
    require_token_auth()  # a refused Ray must be refused before the work, not after it
    root = find_corpus(target, data_dir)
    index = read_corpus_json(root)
    tokenizer = described_tokenizer(index.get("tokenizer") or {})
    items = task_items(tasks, include_path, "--tasks")
    job = ScanJob(str(root), tokenizer, index_tasks(items, ngram))
    entries = CorpusDir(root).ledger_entries()
    units = [{k: entries[key].get(k) for k in _ENTRY_KEYS} for key in sorted(entries) if entries[key].get("chunks")]
    tokens = sum(int(e.get("tokens") or 0) for e in entries.values())
    on_ray = address is not None or (tokens >= local_below and len(units) > 1)
    scans = _scan_on_ray(job, units, workers, address, CorpusDir(root).remote) if on_ray \
        else [scan_unit(job, unit) for unit in units]
    report = new_report(str(root), ngram, tally(items, job.index, scans), scans, index)
    return Contamination(report, write_report(root, report), on_ray)


def task_items(tasks: str, include_path: str | None, setting: str) -> list[TaskItems]:
    """The items of ``tasks`` (comma-separated names and sets), in order; an unknown task, or one whose data cannot
    be loaded here, is refused in one line naming ``setting`` (the option or manifest key that named it)."""
    try:
        return list(load_items(tasks, include_path).values())
    except TaskDataMissing as e:
        raise ContaminationRefused(
            f"{setting}: the data of {len(e.missing)} task(s) cannot be loaded here (fetch it once where the Hub is "
            f"reachable, then rerun with HF_DATASETS_OFFLINE=1): " + "; ".join(e.missing)) from None
    except TaskError as e:
        raise ContaminationRefused(f"{setting}: {e}") from None


def _scan_on_ray(job: ScanJob, units: list[dict], workers: int | None, address: str | None,
                 remote: bool) -> list[UnitScan]:
    """Each unit's scan as a one-CPU Ray task, as many in flight as there are workers (or the cluster's CPUs)."""
    import ray
    started = start_ray(workers, address)
    try:
        env = store_environment() if remote else None  # the workers read the store as this process does
        return [ray.get(ref) for _, ref in in_flight(scan_unit, job, units, dict, workers or cluster_cpus(),
                                                     env=env or None)]
    finally:
        if started:
            ray.shutdown()
