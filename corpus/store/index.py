"""corpus.json: the index of a corpus folder, assembled from its plan and its ledger.

Built from what is on disk, never from what a run remembers, so it is right after any
resume, failure or interruption (see docs/formats.md for every field).
"""
from __future__ import annotations

from collections import Counter

from corpus.store.layout import CorpusDir
from corpus.manifest import Manifest
from corpus.tokenizer.tokenizer import Tokenizer


def _add_counts(total: dict, entry: dict) -> None:
    for key in ("documents_read", "kept", "quarantined", "chunks_split", "chunks_kept", "tokens"):
        total[key] = total.get(key, 0) + entry.get(key, 0)
    for key in ("dropped", "quarantined_by_reason", "chunks_dropped", "drop_details", "tokens_dropped"):
        c = Counter(total.get(key, {}))
        c.update(entry.get(key, {}))
        total[key] = dict(sorted(c.items()))


def _empty_totals() -> dict:
    return {"documents_read": 0, "kept": 0, "dropped": {}, "quarantined": 0, "quarantined_by_reason": {},
            "chunks_split": 0, "chunks_kept": 0, "chunks_dropped": {}, "drop_details": {}, "tokens": 0,
            "tokens_dropped": {}}


def corpus_index(manifest: Manifest, tokenizer: Tokenizer, plan: dict, corpus: CorpusDir,
                 status: str, started_at: str, finished_at: str | None) -> dict:
    """corpus.json, assembled from the plan and the ledger on disk (so it is right after any resume)."""
    shares = manifest.target_shares()
    units_by_source: dict[str, list[dict]] = {s.name: [] for s in manifest.sources}
    for u in plan["units"]:
        units_by_source.setdefault(u["source"], []).append(u)
    sources, grand, failed_all = {}, _empty_totals(), []
    for s in manifest.sources:
        totals, shards, failed, done = _empty_totals(), [], [], 0
        for u in units_by_source[s.name]:
            entry = corpus.ledger_entry(s.name, u["unit"])
            if entry is not None:
                done += 1
                _add_counts(totals, entry)
                shards.append({"unit": u["unit"], "bin": entry["shard"] + ".bin", "idx": entry["shard"] + ".idx",
                               "json": entry["shard"] + ".json", "sha256_bin": entry["sha256_bin"],
                               "sha256_idx": entry["sha256_idx"], "chunks": entry["chunks"],
                               "tokens": entry["tokens"]})
                continue
            fail = corpus.failed_entry(s.name, u["unit"])
            if fail is not None:
                failed.append({"source": s.name, "unit": u["unit"], "input": u["input"], "error": fail["error"]})
        _add_counts(grand, totals)
        failed_all.extend(failed)
        sources[s.name] = {
            "group": s.group, "format": s.format, "target_tokens": s.tokens, "weight": s.weight,
            "target_share": shares[s.name], "files": len({u["input"]["uri"] for u in units_by_source[s.name]}),
            "units": {"total": len(units_by_source[s.name]), "done": done, "failed": len(failed)},
            "shards": shards, "failed_units": failed, "totals": totals,
        }
    return {
        "name": manifest.name, "sample": plan["sample"], "status": status,
        "manifest": {"path": manifest.path, "dump": manifest.model_dump(mode="json")},
        "manifest_fingerprint": plan["fingerprint"], "tokenizer": tokenizer.describe(),
        "text_rules": manifest.text.model_dump(mode="json"),
        "plan": {"units": len(plan["units"]), "unit_bytes": plan["unit_bytes"], "created_at": plan["created_at"]},
        "sources": sources, "totals": grand, "failed_units": failed_all,
        "started_at": started_at, "finished_at": finished_at,
    }
