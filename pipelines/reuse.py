"""Finished units taken from another corpus instead of being built again: `elm-corpus build --reuse OTHER`.

A unit's bytes depend only on the unit (its file and range), its source's settings, the text rules, the tokenizer
and the decontamination tasks (pipelines/build.py). Two manifests that share a source with the same settings and
the same input files therefore cut it into the same units and write the same shards for them, whatever else
they hold. A manifest that changes one source's filter, or adds a source, rebuilds that source only (into the
same folder: ``--force --reuse`` of it takes the units from the old build that ``--force`` moves aside); an
ablation of mixtures built from different manifests (model/ablate) builds each shared source once.

Not reused, and built as usual:

- any unit when either corpus deduplicates: its removals are decided over every unit of the corpus, so the same
  unit keeps other documents beside other sources;
- units of a donor built with other decontamination task items (the same task names can hold other items under
  another lm-eval version), or by another plan version.

What is copied: the unit's ``.bin`` and ``.idx`` (hard links on one local disk: a finished shard is never
rewritten in place), its quarantine file, its sidecar with this manifest's fingerprint (the only field that names
the manifest, so the corpus stays byte-identical to a clean build), and, last, its ledger entry with
``reused_from`` added, so a kill in between leaves a unit the rerun takes again.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from corpus.manifest import digest
from corpus.store import location
from corpus.store.layout import CorpusDir
from corpus.store.location import StorePath
from pipelines.plan import WorkUnit


class ReuseRefused(ValueError):
    """A ``--reuse`` target that is not a corpus."""


@dataclass(frozen=True)
class Reused:
    """What one donor gave: how many units, and why it gave none when it could not."""
    donor: str
    units: int
    skipped: str | None = None


def unit_key(plan: dict, unit: dict) -> str:
    """The identity of one unit's output within ``plan``: what decides its shard's bytes, digested."""
    parts = plan["fingerprint_parts"]
    identity = {"version": plan["version"], "text": parts["text"], "tokenizer": parts["tokenizer"],
                "source": parts["sources"][unit["source"]], "decontaminate": parts.get("decontaminate"),
                "unit": {k: unit[k] for k in ("source", "unit", "input")}}
    return digest(identity)


def donors_of(targets: list[str | StorePath]) -> list[tuple[CorpusDir, dict]]:
    """The corpora ``--reuse`` names with their plans, checked before anything is written."""
    donors = []
    for target in targets:
        donor = CorpusDir(target)
        plan = donor.read_plan()
        if plan is None:
            raise ReuseRefused(f"--reuse {target}: not a corpus folder (no plan.json): name a folder a build wrote")
        donors.append((donor, plan))
    return donors


def rebased(donors: list[tuple[CorpusDir, dict]], out: StorePath, moved: Path | None
            ) -> list[tuple[CorpusDir, dict]]:
    """The donors once the build holds ``out``: the folder being built itself gives the old build that ``--force``
    moved aside (a changed manifest then keeps the units of its unchanged sources), or nothing when it was not
    moved (its finished units are this build's own)."""
    kept = []
    for donor, plan in donors:
        if not _same_place(donor.root, out):
            kept.append((donor, plan))
        elif moved is not None:
            kept.append((CorpusDir(moved), plan))
    return kept


def _same_place(a: StorePath, b: StorePath) -> bool:
    if isinstance(a, Path) and isinstance(b, Path):
        return a.resolve() == b.resolve()
    return a == b


def reuse_units(corpus: CorpusDir, plan: dict, pending: list[WorkUnit], donors: list[tuple[CorpusDir, dict]]
                ) -> tuple[list[WorkUnit], list[Reused]]:
    """Copy into ``corpus`` every pending unit a donor has finished with the same identity; return the units still
    to build, and what each donor gave."""
    said = []
    for donor, donor_plan in donors:
        why = _why_not(corpus, plan, donor, donor_plan)
        if why is not None:
            said.append(Reused(str(donor.root), 0, why))
            continue
        wanted = {unit_key(plan, u.to_dict()): u for u in pending}
        finished = donor.ledger_units()  # one listing
        # a unit's identity holds its source and id, so a match is the same unit in both folders
        matches = [wanted[key] for d in donor_plan["units"]
                   if (d["source"], d["unit"]) in finished and (key := unit_key(donor_plan, d)) in wanted]
        for unit in matches:
            _copy_unit(donor, corpus, unit, plan["fingerprint"])
        taken = {u.key for u in matches}
        pending = [u for u in pending if u.key not in taken]
        said.append(Reused(str(donor.root), len(matches)))
    return pending, said


def _why_not(corpus: CorpusDir, plan: dict, donor: CorpusDir, donor_plan: dict) -> str | None:
    """Why no unit of ``donor`` can be taken whole, or None."""
    if "dedup" in plan["fingerprint_parts"] or "dedup" in donor_plan["fingerprint_parts"]:
        return "a corpus that deduplicates decides each unit's removals over all its units"
    if donor_plan["fingerprint_parts"].get("decontaminate") is not None and (
            location.read_json(donor.decontamination_tasks_path)
            != location.read_json(corpus.decontamination_tasks_path)):
        return "its decontamination tasks hold other items"
    return None


def _copy_unit(donor: CorpusDir, corpus: CorpusDir, unit: WorkUnit, fingerprint: str) -> None:
    entry = donor.ledger_entry(unit.source, unit.unit_id)
    stem, into = donor.shard_stem(unit.source, unit.unit_id), corpus.shard_stem(unit.source, unit.unit_id)
    for suffix in (".bin", ".idx"):
        _copy(stem.with_suffix(suffix), into.with_suffix(suffix))
    if entry.get("quarantine"):
        _copy(donor.quarantine_path(unit.source, unit.unit_id), corpus.quarantine_path(unit.source, unit.unit_id))
    sidecar = location.read_json(stem.with_suffix(".json"))
    location.write_json(into.with_suffix(".json"), {**sidecar, "manifest_fingerprint": fingerprint})
    corpus.write_ledger(unit.source, unit.unit_id, {**entry, "reused_from": str(donor.root)})


def _copy(src: StorePath, dst: StorePath) -> None:
    """A hard link on one local disk (a finished unit's files are only ever replaced whole, never written in
    place), else a copy made whole before it takes the name."""
    if isinstance(src, Path) and isinstance(dst, Path):
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.reuse.tmp")
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or one without links
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return
    location.write_bytes(dst, location.read_bytes(src))
