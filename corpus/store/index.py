"""corpus.json: the index of a corpus folder, assembled from its plan and its ledger.

Built from what is on disk, never from what a run remembers, so it is right after any
resume, failure or interruption (see docs/formats.md for every field).
"""
from __future__ import annotations

from corpus.manifest import Manifest
from corpus.store import location
from corpus.store.counts import UnitCounts
from corpus.store.layout import CorpusDir


PlanUnit = tuple[str, str, str]  # (source, unit id, input file): what corpus.json needs of a planned unit


def plan_units(plan: dict) -> list[PlanUnit]:
    """The plan's units as corpus.json needs them: a tenth of the memory of the plan's own records (98k units:
    about 12 MB against 80), so a build can let those go before it assembles the index."""
    files: dict[str, str] = {}  # one string per input file, not one per unit
    return [(u["source"], u["unit"], files.setdefault(u["input"]["uri"], u["input"]["uri"])) for u in plan["units"]]


def corpus_index(manifest: Manifest, tokenizer: dict, plan: dict, units: list[PlanUnit], corpus: CorpusDir,
                 status: str, started_at: str, finished_at: str | None) -> dict:
    """corpus.json, assembled from the plan and the ledger on disk (so it is right after any resume).

    ``tokenizer`` is the tokenizer's description (``Tokenizer.describe()``); ``plan`` gives the plan's own fields
    (its ``units`` are not read), ``units`` its units (:func:`plan_units`).
    """
    shares = manifest.target_shares()
    failures = corpus.failed_entries()  # one listing, not a request per unit; few
    units_by_source: dict[str, list[PlanUnit]] = {s.name: [] for s in manifest.sources}
    for u in units:
        units_by_source.setdefault(u[0], []).append(u)
    # The ledger is read in batches, each folded into its source's totals and shard rows and let go: at the full
    # OpenELM scale (about 98k units) holding every parsed entry at once took most of 800 MB.
    listed = set(corpus.ledger_units())  # the keys only: their paths are made a batch at a time
    in_plan_order = ((source, unit) for s in manifest.sources for source, unit, _ in units_by_source[s.name]
                     if (source, unit) in listed)
    totals = {s.name: UnitCounts() for s in manifest.sources}
    shards: dict[str, list[dict]] = {s.name: [] for s in manifest.sources}
    found: dict[str, dict[str, set[int]]] = {}  # task -> source -> its items decontamination found there
    for (source, unit), entry in corpus.ledger_entries_in_batches(in_plan_order):
        totals[source].add(UnitCounts.from_dict(entry))
        for task, items in (entry.get("contaminated_items") or {}).items():
            found.setdefault(task, {}).setdefault(source, set()).update(items)
        shards[source].append({"unit": unit, "bin": entry["shard"] + ".bin", "idx": entry["shard"] + ".idx",
                               "json": entry["shard"] + ".json", "sha256_bin": entry["sha256_bin"],
                               "sha256_idx": entry["sha256_idx"], "chunks": entry["chunks"],
                               "tokens": entry["tokens"]})
    sources, grand, failed_all = {}, UnitCounts(), []
    for s in manifest.sources:
        done = {row["unit"] for row in shards[s.name]}
        failed = [{"source": s.name, "unit": unit, "input": failures[(s.name, unit)]["input"],
                   "error": failures[(s.name, unit)]["error"]}
                  for _, unit, _ in units_by_source[s.name] if unit not in done and (s.name, unit) in failures]
        grand.add(totals[s.name])
        failed_all.extend(failed)
        sources[s.name] = {
            "group": s.group, "format": s.format, "target_tokens": s.tokens, "weight": s.weight,
            "target_share": shares[s.name], "files": len({uri for _, _, uri in units_by_source[s.name]}),
            "units": {"total": len(units_by_source[s.name]), "done": len(done), "failed": len(failed)},
            "shards": shards[s.name], "failed_units": failed, "totals": totals[s.name].to_dict(),
        }
    index = {
        "name": manifest.name, "sample": plan["sample"], "status": status,
        "manifest": {"path": manifest.path, "dump": manifest.model_dump(mode="json")},
        "manifest_fingerprint": plan["fingerprint"], "tokenizer": tokenizer,
        "text_rules": manifest.text.model_dump(mode="json"),
        "plan": {"units": len(units), "unit_bytes": plan["unit_bytes"], "created_at": plan["created_at"]},
        "sources": sources, "totals": grand.to_dict(), "failed_units": failed_all,
        "started_at": started_at, "finished_at": finished_at,
    }
    if manifest.decontaminate is not None:
        index["decontamination"] = decontamination(location.read_json(corpus.decontamination_tasks_path), found)
    return index


def decontamination(tasks: dict | None, found: dict[str, dict[str, set[int]]]) -> dict:
    """corpus.json's ``decontamination``: per task (``tasks``: decontaminate/tasks.json), its items and how many
    of them the finished units found and dropped, per source (most first), as a contamination report counts them."""
    out = {}
    for task in (tasks or {}).get("tasks", []):
        by_source = found.get(task["name"], {})
        sources = {s: len(i) for s, i in sorted(by_source.items(), key=lambda kv: (-len(kv[1]), kv[0]))}
        out[task["name"]] = {"items": task["items"], "contaminated": len(set().union(*by_source.values())),
                             "sources": sources, "short": task["short"], "subtasks": task["subtasks"],
                             "items_sha256": task["items_sha256"]}
    return {"ngram": (tasks or {}).get("ngram"), "tasks": out}
