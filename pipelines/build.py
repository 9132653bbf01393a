"""`elm-corpus build`: plan work units, run them as Ray tasks, keep the ledger, write corpus.json.

One Ray task per unit, at most ``workers`` in flight. A task writes its unit's shard,
quarantine file and, last, its ledger entry, so the build can be killed at any moment:
the rerun skips every unit with a ledger entry and computes the others again, and since a
unit's bytes depend only on the unit, the result is the same as an uninterrupted build.

The corpus folder remembers the manifest fingerprint (text rules, sources, tokenizer) in
``plan.json``; a rerun whose fingerprint differs is refused, or with ``--force`` the old
folder is moved aside to ``<out>.stale-<old fingerprint[:8]>`` and a fresh build starts.

A full disk (or quota) or an unreachable object store, met by a worker or by the driver,
stops the build with a :class:`CorpusWriteError` naming the file and what to do: no new unit
starts, the ones running finish (or stop the same way), and every finished unit keeps its
ledger entry, so the same command run again, once there is space or a connection, goes on
from there.

A manifest's ``decontaminate`` names evaluation tasks: their items are loaded here once, before any
folder is made (an unknown task, or one whose data cannot be had, is refused then), recorded in
``decontaminate/tasks.json`` (a rerun must find the same items), and their n-gram index travels in
the job; each unit drops the documents that share an n-gram with an item and records which items
it found, which corpus.json's ``decontamination`` sums per task.

``out_dir`` may be a URI (``s3://bucket/prefix``, see :mod:`corpus.store.location`): the
workers then write their units straight to the store and the driver reads only through it,
so the driver and the workers need not share a disk. The driver's ``AWS_*`` and ``FSSPEC_*``
variables travel with the unit tasks (Ray's runtime environment), so workers started without
them reach the same endpoint with the same credentials.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from corpus.cleaning.contamination import Decontamination
from corpus.manifest import Manifest, load_manifest
from corpus.paths import default_corpus_dir
from corpus.store import location
from corpus.store.files import utc_now
from corpus.store.index import corpus_index, plan_units
from corpus.store.layout import CorpusBusy, CorpusDir, CorpusWriteError
from corpus.store.location import ObjectPath, StorePath, stops_build
from corpus.text.filters import build_filters
from corpus.tokenizer.tokenizer import Tokenizer
from pipelines.contamination import task_items
from pipelines.dedup import dedup_done, run_dedup
from pipelines.plan import DEFAULT_UNIT_BYTES, WorkUnit, plan_build
from pipelines.reuse import Reused, donors_of, rebased, reuse_units
from pipelines.runner import cluster_cpus, in_flight, require_token_auth, start_ray
from pipelines.views import BuildProgress
from pipelines.worker import BuildJob, UnitJob, execute_unit, failure_entry

PLAN_VERSION = 1


class BuildRefused(RuntimeError):
    """The corpus folder was built from a different manifest or tokenizer."""


def _what_changed(old: dict, new: dict) -> list[str]:
    changes = []
    if old.get("text") != new["text"]:
        changes.append("text rules")
    if old.get("tokenizer") != new["tokenizer"]:
        changes.append("tokenizer")
    for block in ("dedup", "decontaminate"):
        if old.get(block) != new.get(block):
            changes.append(f"{block} settings")
    old_sources = old.get("sources", {})
    for name in sorted(set(old_sources) | set(new["sources"])):
        if name not in old_sources:
            changes.append(f"source {name} added")
        elif name not in new["sources"]:
            changes.append(f"source {name} removed")
        elif old_sources[name] != new["sources"][name]:
            changes.append(f"source {name} changed")
    return changes or ["manifest"]


@dataclass
class BuildResult:
    out_dir: StorePath
    status: str                       # complete | partial | failed
    units_total: int
    units_skipped: int                # already finished before this run
    units_run: int
    failed: list[dict] = field(default_factory=list)
    corpus: dict = field(default_factory=dict)
    moved_aside: Path | None = None
    seconds: float = 0.0
    dedup: dict | None = None         # what this run's deduplication took (run_dedup's measures), when it ran
    reused: list[Reused] = field(default_factory=list)  # what each --reuse corpus gave this run

    @property
    def units_reused(self) -> int:
        return sum(r.units for r in self.reused)

    @property
    def ok(self) -> bool:
        return self.status == "complete"


def _move_aside(out: StorePath, old_fingerprint: str) -> Path:
    if isinstance(out, ObjectPath):  # an object store renames by copying every object: not done behind a flag
        raise BuildRefused(f"{out} was built from a different manifest, and --force cannot move a corpus aside on an "
                           f"object store (there is no rename); delete that prefix or pass another --out")
    target = out.with_name(f"{out.name}.stale-{old_fingerprint[:8]}")
    n = 1
    while target.exists():
        n += 1
        target = out.with_name(f"{out.name}.stale-{old_fingerprint[:8]}-{n}")
    out.rename(target)
    return target


def build(manifest: Manifest | str | Path, out_dir: str | Path | ObjectPath | None = None, sample: bool = False,
          workers: int | None = None, address: str | None = None, force: bool = False, progress: bool = True,
          unit_bytes: int = DEFAULT_UNIT_BYTES, mirror_root: str | Path | None = None,
          dedup_only: bool = False, reuse: list[str | Path | ObjectPath] = ()) -> BuildResult:
    """Build or resume a corpus; see the module docstring.

    ``unit_bytes`` applies when a plan is first made; ``mirror_root`` is where the sample
    mirror lives (default ``data_root()/sample``). ``dedup_only``: plan and deduplicate, tokenize nothing
    (`elm-corpus dedup`: what a live stream of the manifest reads; a later build of the folder goes on from there).
    ``reuse``: corpora whose finished units with the same inputs and settings are taken instead of built
    (pipelines/reuse.py).
    """
    started, t0 = utc_now(), time.perf_counter()
    require_token_auth()  # before any folder is made: a refused Ray must leave nothing behind
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    if dedup_only and manifest.dedup is None:
        raise ValueError(f"manifest {manifest.name} has no dedup block: nothing to deduplicate (docs/cleaning.md)")
    tokenizer = Tokenizer(manifest.tokenizer.model, manifest.text.normalize)
    for s in manifest.sources:  # bad filter params fail here, before any work starts
        build_filters(s.filters, where=f"source {s.name}: ")
    decontaminate = decontamination(manifest)  # likewise unknown tasks and task data that cannot be had
    out = location.at(out_dir) if out_dir is not None else default_corpus_dir(manifest.name, sample)
    try:
        donors = donors_of(list(reuse))
        return _build(manifest, tokenizer, decontaminate, out, sample, workers, address, force, progress,
                      unit_bytes, mirror_root, started, t0, dedup_only, donors)
    except OSError as e:  # the driver's own reads and writes: plan, corpus.json, ledger, failed entries, the lock
        if not stops_build(e):
            raise
        raise CorpusWriteError.of(e, out) from e


def _build(manifest: Manifest, tokenizer: Tokenizer, decontaminate: Decontamination | None, out: StorePath,
           sample: bool, workers: int | None, address: str | None, force: bool, progress: bool, unit_bytes: int,
           mirror_root: str | Path | None, started: str, t0: float, dedup_only: bool,
           donors: list[tuple[CorpusDir, dict]]) -> BuildResult:
    with ExitStack() as held:
        corpus = _hold(held, CorpusDir(out))
        plan, moved = _check_plan(corpus, manifest, tokenizer, sample, force)
        if moved is not None:
            corpus = _hold(held, CorpusDir(out))
        donors = rebased(donors, out, moved)
        if plan is None:
            plan = _new_plan(corpus, manifest, tokenizer, sample, unit_bytes, mirror_root)
        if decontaminate is not None:
            _keep_tasks(corpus, decontaminate)
        corpus.remove_stale_temporaries()
        done = corpus.ledger_units()  # one listing: on an object store not a request per unit
        # Only the pending units become WorkUnits, the rest is kept as corpus.json needs it, and the plan's records
        # and the listing are let go: at the full OpenELM scale (98k units) a rerun of a finished build would
        # otherwise hold them all beside the index it assembles.
        pending = [WorkUnit.from_dict(d) for d in plan["units"] if (d["source"], d["unit"]) not in done]
        reused = []
        if donors and not dedup_only:
            pending, reused = reuse_units(corpus, plan, pending, donors)
        left = len(pending)
        if dedup_only:
            pending = []  # no unit is tokenized
        # deduplication decides over every unit, so it needs them all until it is done (a repair that found its
        # files damaged removes its result: the search is redone, and writes the same files again)
        dedup_units = ([WorkUnit.from_dict(d) for d in plan["units"]]
                       if manifest.dedup is not None and dedup_done(corpus) is None else None)
        units = plan_units(plan)
        plan = {k: v for k, v in plan.items() if k != "units"}
        del done
        total = len(units)

        def write_index(status: str, finished: str | None) -> dict:
            index = corpus_index(manifest, tokenizer.describe(), plan, units, corpus, status, started, finished)
            corpus.write_index(index)
            return index

        if pending or dedup_units:  # corpus.json reads every ledger entry: a rerun with nothing to do assembles it
            # once, at the end
            write_index("building", None)
        skipped = total - left  # finished before this run, or taken from --reuse corpora now
        failed: list[dict] = []
        full: list[dict] = []  # units stopped by a full disk or the store: no new unit starts after the first
        ran, started_ray, interrupted, bar, dedup_measures = 0, False, True, None, None
        try:
            if pending or dedup_units:
                bar = BuildProgress(progress, total, skipped, started=t0)  # shown while Ray starts
                started_ray = start_ray(workers, address)
                env = tuple(sorted(location.store_environment().items())) if corpus.remote else ()
                if dedup_units is not None:  # before any unit is tokenized: removals span every unit
                    bar.phase("dedup signatures", len(corpus.signed_units()))
                    dedup_measures = {}
                    run_dedup(manifest, corpus, dedup_units, workers or cluster_cpus(), dict(env), bar.step,
                              dedup_measures)
                    bar.phase(None)
                    dedup_units = None
                job = BuildJob(UnitJob.of(manifest, tokenizer, dedup_dir=str(out) if manifest.dedup else None,
                                          decontaminate=decontaminate), str(out), env)
                for summary in run_units(job, pending, workers or cluster_cpus(), stop=lambda: bool(full)):
                    if summary["status"] == "stopped":
                        full.append(summary)
                        continue
                    ran += 1
                    if summary["status"] == "failed":
                        failed.append(summary)
                    bar.advance(summary)
            interrupted = False
        finally:
            try:
                status = ("partial" if interrupted or full or (dedup_only and left)
                          else ("failed" if failed else "complete"))
                try:
                    index = write_index(status, utc_now())
                except OSError as e:
                    if not (full and stops_build(e)):
                        raise
                    index = None  # corpus.json keeps "building"; the rerun rewrites it from the ledger
            finally:
                if started_ray:
                    import ray
                    ray.shutdown()
                if bar is not None:
                    bar.close()  # last: its clock then reads what the summary says
    if full:
        first = full[0]
        raise CorpusWriteError(first["path"], first["errno"], first.get("detail", ""),
                               unreachable=first.get("unreachable", False))
    return BuildResult(out, status, total, skipped - sum(r.units for r in reused), ran, index["failed_units"],
                       index, moved, time.perf_counter() - t0, dedup_measures, reused)


def decontamination(manifest: Manifest) -> Decontamination | None:
    """The index of the tasks the manifest's ``decontaminate`` names, loaded as `elm-corpus contamination` and
    `elm-train eval` load them; an unknown task, or one whose data cannot be had here, is refused in one line."""
    block = manifest.decontaminate
    if block is None:
        return None
    setting = f"{manifest.path}: decontaminate.tasks" if manifest.path else "decontaminate.tasks"
    return Decontamination.of(task_items(block.names, block.include_path, setting), block.ngram)


def _keep_tasks(corpus: CorpusDir, decontaminate: Decontamination) -> None:
    """Record the tasks' items in the corpus on the first run; a rerun must find the same items, since the units
    already built were checked against them (the fingerprint names the tasks, not their data)."""
    record = decontaminate.record()
    kept = location.read_json(corpus.decontamination_tasks_path)
    if kept is None:
        location.write_json(corpus.decontamination_tasks_path, record)
        return
    if kept != record:
        old = {t["name"]: t["items_sha256"] for t in kept.get("tasks", [])}
        changed = [t["name"] for t in record["tasks"] if old.get(t["name"]) != t["items_sha256"]] or ["ngram"]
        where = corpus.relative(corpus.decontamination_tasks_path)
        raise BuildRefused(f"{corpus.root}: the items of decontaminate's task(s) {', '.join(changed)} differ from "
                           f"those its finished units were checked against ({where}): the task data changed "
                           f"(another lm-eval version or dataset revision); build with the data it was begun with, "
                           f"or pass another --out")


def _new_plan(corpus: CorpusDir, manifest: Manifest, tokenizer: Tokenizer, sample: bool, unit_bytes: int,
              mirror_root: str | Path | None) -> dict:
    """Cut the inputs into work units and store the plan every rerun will work through."""
    try:
        units = plan_build(manifest, sample=sample, unit_bytes=unit_bytes,
                           mirror_root=str(mirror_root) if mirror_root is not None else None)
    except Exception:
        corpus.remove_if_only_lock()  # leave no empty corpus folder behind a failed start
        raise
    plan = {"version": PLAN_VERSION, "name": manifest.name, "sample": sample,
            "fingerprint": manifest.build_fingerprint(tokenizer.sha256),
            "fingerprint_parts": manifest.fingerprint_parts(tokenizer.sha256), "unit_bytes": unit_bytes,
            "created_at": utc_now(), "units": [u.to_dict() for u in units]}
    corpus.write_plan(plan)
    return plan


def _hold(stack: ExitStack, corpus: CorpusDir) -> CorpusDir:
    try:
        stack.enter_context(corpus.exclusive())
    except CorpusBusy as e:
        raise BuildRefused(str(e)) from None
    return corpus


def _check_plan(corpus: CorpusDir, manifest: Manifest, tokenizer: Tokenizer, sample: bool,
                force: bool) -> tuple[dict | None, Path | None]:
    """The stored plan if it fits this manifest; refuse a misfit, or with ``force`` move the folder aside."""
    plan = corpus.read_plan()
    fingerprint = manifest.build_fingerprint(tokenizer.sha256)
    if plan is None or (plan["fingerprint"] == fingerprint and plan["sample"] == sample):
        return plan, None
    if plan["fingerprint"] != fingerprint:
        what = _what_changed(plan.get("fingerprint_parts", {}), manifest.fingerprint_parts(tokenizer.sha256))
    else:
        what = [f"it is a {'sample' if plan['sample'] else 'full'} build"]
    out = corpus.root
    if not force:
        raise BuildRefused(
            f"{out} was built from a different manifest (fingerprint {plan['fingerprint'][:12]}, now "
            f"{fingerprint[:12]}; changed: {', '.join(what)}). Its shards would not match this manifest. "
            f"Rerun with --force to move it aside to {out.name}.stale-{plan['fingerprint'][:8]} and build "
            f"afresh, or pass another --out.")
    return None, _move_aside(out, plan["fingerprint"])


def run_units(job: BuildJob, units: list[WorkUnit], workers: int, stop=None):
    """Yield each unit's summary as it finishes, at most ``workers`` tasks in flight; none starts once ``stop()``."""
    import ray
    for unit, ref in in_flight(execute_unit, job, units, WorkUnit.to_dict, workers, stop=stop,
                               env=dict(job.store_env) or None):
        try:
            yield ray.get(ref)
        except Exception as e:  # the worker died (out of memory, node lost): record it like any failure
            entry = failure_entry(unit, e, with_traceback=False)
            CorpusDir(job.out_dir).write_failed(unit.source, unit.unit_id, entry)
            yield {"status": "failed", **entry}
