"""What a corpus folder holds, counted from disk: the numbers behind `elm-corpus stats` (and its JSON and report).

The numbers come from the files a build leaves, never from a build's memory: the plan
(``plan.json``, every work unit), the ledger (a unit is done once its entry exists), the
failed entries, each done unit's shard sidecar (documents, chunks, drops, tokens of dropped
chunks, quarantine, and the duplicates removed by the source of the copy kept: the cross-source
overlap) and ``.idx`` (chunk lengths). So they are right for a finished corpus, a build still
running and one that was interrupted. With dedup, ``dedup/result.json`` adds what the search
decided to remove. ``corpus.json`` supplies the manifest, tokenizer and status; the
status shown is ``damaged`` instead when a finished unit's files disagree with its ledger entry
(:func:`corpus.store.verify.quick_check`: presence, byte sizes, records; no hashing).
A corpus on an object store (``s3://bucket/prefix``) is counted the same way, through
:mod:`corpus.store.location`: its indexes are read, its tokens never.

The JSON schema (``--json``) is documented in ``docs/stats.md``; ``SCHEMA_VERSION`` changes
whenever a field changes meaning or disappears.
"""
from __future__ import annotations

import json
import os
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corpus.inspection.health import source_warning
from corpus.store import location
from corpus.store.counts import DUPLICATE_EXACT, DUPLICATE_NEAR, UnitCounts
from corpus.store.layout import CORPUS_JSON, PLAN_JSON, QUARANTINE_DIR, SHARDS_DIR, CorpusDir, NotACorpus
from corpus.store.location import ObjectPath, StorePath
from corpus.store.shards import read_index
from corpus.store.verify import UnitDamage, quick_check

SCHEMA_VERSION = 1


# ---------------------------------------------------------------- reading the folder

def _read_json(path: StorePath) -> dict | None:
    """`location.read_json`, its parse error naming the file (stats reads many and stops at the first bad one)."""
    try:
        return location.read_json(path)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _folder_bytes(folder: StorePath) -> int:
    return sum(location.files_under(folder).values())


def _bytes_below(sizes: dict[str, int], prefix: str) -> int:
    """Bytes of the files under ``prefix`` in one listing of the corpus (``{relative path: size}``)."""
    return sum(size for rel, size in sizes.items() if rel.startswith(prefix + "/"))


def build_holder(corpus_dir: StorePath) -> int | None:
    """The pid of the build holding the folder's lock, 0 when none does, None when this system cannot say.

    Read from /proc/locks (Linux) rather than by taking the lock, which could make a build
    that starts at that moment refuse to run. On an object store, the pid the lock object
    records (on the host it names).
    """
    if isinstance(corpus_dir, ObjectPath):
        try:
            holder = location.read_json(CorpusDir(corpus_dir).lock_path)
        except ValueError:
            return None
        return 0 if holder is None else (holder.get("pid") if isinstance(holder, dict) else None)
    lock, locks = CorpusDir(corpus_dir).lock_path, Path("/proc/locks")
    if not lock.exists():
        return 0
    if not locks.exists():
        return None
    st = lock.stat()
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in locks.read_text().splitlines():
        fields = line.split()  # "1: FLOCK ADVISORY WRITE <pid> <maj:min:inode> 0 EOF"; waiters have "->"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == inode:
            return int(fields[4])
    return 0


@dataclass
class _Tally:
    """Running counts of one source (or of the whole corpus): the sidecars' counts plus what the .idx files say."""
    counts: UnitCounts = field(default_factory=UnitCounts)
    tokens: int = 0  # from the .idx files, not the sidecars (a disagreement is reported as a problem)
    shards_without_token_drops: int = 0  # sidecars written before builds recorded tokens_dropped
    shards: int = 0
    lengths: Counter = field(default_factory=Counter)  # chunk length in tokens -> number of chunks

    def add_sidecar(self, meta: dict) -> None:
        self.counts.add(UnitCounts.from_dict(meta))
        if "tokens_dropped" not in meta:
            self.shards_without_token_drops += 1
        self.shards += 1

    def add_lengths(self, lengths: np.ndarray) -> None:
        values, counts = np.unique(lengths, return_counts=True)
        self.lengths.update(dict(zip(values.tolist(), counts.tolist())))
        self.tokens += int(lengths.sum())

    def merge(self, other: "_Tally") -> None:
        self.counts.add(other.counts)
        self.tokens += other.tokens
        self.shards_without_token_drops += other.shards_without_token_drops
        self.shards += other.shards
        self.lengths.update(other.lengths)

    def length_summary(self) -> dict:
        if not self.lengths:
            return {"mean": None, "median": None, "min": None, "max": None}
        values = np.array(sorted(self.lengths), dtype=np.int64)
        counts = np.array([self.lengths[v] for v in values], dtype=np.int64)
        n = int(counts.sum())
        cum = np.cumsum(counts)
        # the median of the expanded list, from its two middle order statistics
        lo = int(values[np.searchsorted(cum, (n - 1) // 2, side="right")])
        hi = int(values[np.searchsorted(cum, n // 2, side="right")])
        return {"mean": float((values * counts).sum() / n), "median": (lo + hi) / 2,
                "min": int(values[0]), "max": int(values[-1])}

    def numbers(self) -> dict:
        def by_reason(counter: Counter) -> dict:
            return {k: v for k, v in sorted(counter.items()) if v}
        c = self.counts
        return {
            "documents": {"read": c.documents_read, "kept": c.kept,
                          "dropped": by_reason(c.dropped),
                          "dropped_total": sum(c.dropped.values()),
                          "quarantined": c.quarantined,
                          "quarantined_by_reason": by_reason(c.quarantined_by_reason)},
            "chunks": {"split": c.chunks_split, "kept": c.chunks_kept,
                       "dropped": by_reason(c.chunks_dropped),
                       "dropped_total": sum(c.chunks_dropped.values())},
            "filter_details": by_reason(c.drop_details),
            "tokens": self.tokens,
            # unknown (null) when any counted shard predates the field, rather than a silent undercount
            "tokens_dropped": None if self.shards_without_token_drops else by_reason(c.tokens_dropped),
            "tokens_after_chars": None if self.shards_without_token_drops else
            self.tokens + sum(c.tokens_dropped.values()),
            "tokens_per_chunk": self.length_summary(),
            "shards": self.shards,
        }


@dataclass
class CorpusStats:
    """The ``--json`` numbers plus what only the report needs (full chunk-length distributions)."""
    path: StorePath
    numbers: dict
    lengths: dict[str, Counter]  # source -> {chunk length in tokens: number of chunks}

    @property
    def sources(self) -> list[dict]:
        return self.numbers["sources"]


def _manifest_view(corpus_json: dict | None, plan: dict | None
                   ) -> tuple[list[str], dict[str, float], dict[str, int], dict[str, str]]:
    """Source names in manifest order, target shares, published token counts and groups."""
    if not corpus_json:
        # a build that has planned but not yet written corpus.json: its plan still names each source's group
        planned = ((plan or {}).get("fingerprint_parts") or {}).get("sources") or {}
        return [], {}, {}, {k: v["group"] for k, v in planned.items() if isinstance(v, dict) and v.get("group")}
    dump = (corpus_json.get("manifest") or {}).get("dump")
    if dump:
        from corpus.manifest import Manifest
        manifest = Manifest.model_validate(dump)
        return ([s.name for s in manifest.sources], manifest.target_shares(),
                {s.name: s.tokens for s in manifest.sources}, {s.name: s.group for s in manifest.sources})
    sources = corpus_json.get("sources", {})
    return (list(sources), {k: v.get("target_share") for k, v in sources.items()},
            {k: v.get("target_tokens") for k, v in sources.items()},
            {k: v["group"] for k, v in sources.items() if v.get("group")})


def _group_numbers(per_source: dict[str, dict], total_tokens: int) -> list[dict]:
    """Sources summed by their manifest group, groups in the order they first appear (null: group unknown)."""
    groups: dict[str | None, dict] = {}
    for s in per_source.values():
        if s["group"] not in groups:
            groups[s["group"]] = {"name": s["group"], "sources": [], "units": dict.fromkeys(s["units"], 0),
                                  "tokens": 0, "share": {"target": None, "achieved": None}, "manifest_tokens": None}
        g = groups[s["group"]]
        g["sources"].append(s["name"])
        for k in g["units"]:
            g["units"][k] += s["units"][k]
        g["tokens"] += s["tokens"]
        if s["share"]["target"] is not None:
            g["share"]["target"] = (g["share"]["target"] or 0.0) + s["share"]["target"]
        if s["manifest_tokens"] is not None:
            g["manifest_tokens"] = (g["manifest_tokens"] or 0) + s["manifest_tokens"]
    for g in groups.values():
        g["share"]["achieved"] = g["tokens"] / total_tokens if total_tokens else None
    return list(groups.values())


class _DamageFound:
    """The damage `quick_check` found, plus what reading the shards finds; each problem also as one line."""

    def __init__(self, folder: CorpusDir, found: list[UnitDamage]):
        self.folder = folder
        self.units = {(d.source, d.unit): d for d in found}
        self.problems: list[str] = []

    def add(self, source: str, unit: str, problem: str) -> None:
        self.problems.append(f"{source}/{unit}: {problem}")
        shard = self.folder.relative(self.folder.shard_stem(source, unit))
        d = self.units.setdefault((source, unit), UnitDamage(source, unit, shard))
        if problem not in d.problems:
            d.problems.append(problem)


def _tally_unit(folder: CorpusDir, name: str, unit: str, tally: _Tally, damage: _DamageFound) -> None:
    """Add one finished unit's sidecar and chunk lengths to ``tally``, or record why they cannot be read."""
    stem = folder.shard_stem(name, unit)
    try:
        meta = _read_json(stem.with_suffix(".json"))
        if meta is None:
            damage.add(name, unit, f"the ledger says done but {stem}.json is missing")
            return
        lengths = read_index(stem).chunk_lengths()
    except (FileNotFoundError, ValueError) as e:
        damage.add(name, unit, f"unreadable shard: {e}")
        return
    if len(lengths) != meta.get("chunks") or int(lengths.sum()) != meta.get("tokens"):
        damage.add(name, unit, f"{stem.name}.idx holds {len(lengths)} chunks and {int(lengths.sum())} tokens "
                               f"but its sidecar says {meta.get('chunks')} and {meta.get('tokens')}")
    tally.add_sidecar(meta)
    tally.add_lengths(lengths)


def _corpus_header(root, corpus_json: dict, plan: dict | None, damaged: bool) -> dict:
    """The corpus block of the numbers: name, status, manifest, tokenizer, build times and holder."""
    tokenizer = corpus_json.get("tokenizer") or {}
    holder = build_holder(root)
    recorded = corpus_json.get("status", "planned")
    return {
        "name": root.name,  # what --corpus, run.json and the folder call it (openelm-sample for a sample build)
        "manifest_name": corpus_json.get("name") or (plan or {}).get("name"),
        "path": str(root),
        "status": "damaged" if damaged else recorded,
        "recorded_status": recorded,
        "sample": corpus_json.get("sample", (plan or {}).get("sample")),
        "manifest_path": (corpus_json.get("manifest") or {}).get("path"),
        "manifest_fingerprint": corpus_json.get("manifest_fingerprint") or (plan or {}).get("fingerprint"),
        "tokenizer": {"spec": tokenizer.get("spec"), "sha256": tokenizer.get("sha256"),
                      "vocab_size": tokenizer.get("vocab_size")},
        "started_at": corpus_json.get("started_at"),
        "finished_at": corpus_json.get("finished_at"),
        "build_pid": holder or None,
        "build_running": None if holder is None else bool(holder),
    }


def _total_numbers(per_source: dict[str, dict], total: _Tally, target_shares: dict, manifest_tokens: dict,
                   sizes: dict) -> dict:
    """The total row: the sources' sums, shares against the targets, bytes on disk."""
    return {
        "units": {k: sum(s["units"][k] for s in per_source.values()) for k in ("total", "done", "failed", "pending")},
        **total.numbers(),
        "share": {"target": sum(v for v in target_shares.values() if v) if target_shares else None,
                  "achieved": 1.0 if total.tokens else None},
        "manifest_tokens": sum(v for v in manifest_tokens.values() if v) if manifest_tokens else None,
        "bytes_on_disk": {"shards": sum(s["bytes_on_disk"]["shards"] for s in per_source.values()),
                          "quarantine": sum(s["bytes_on_disk"]["quarantine"] for s in per_source.values()),
                          "folder": sum(sizes.values())},
    }


def _dedup_settings(corpus_json: dict | None, plan: dict | None) -> dict | None:
    """The manifest's dedup block, None when the corpus is built without one; the plan's copy before corpus.json
    exists (a build still deduplicating has written only the plan)."""
    dump = ((corpus_json or {}).get("manifest") or {}).get("dump")
    if dump is not None:
        return dump.get("dedup")
    return ((plan or {}).get("fingerprint_parts") or {}).get("dedup")


def _overlap(settings: dict | None, decided: dict | None, names: list[str], tallies: dict[str, _Tally]
             ) -> dict | None:
    """Documents and tokens each source lost as duplicates, by the source of the copy kept (itself included);
    None without dedup. Only pairs that lost documents are listed."""
    if settings is None:
        return None
    order = {name: i for i, name in enumerate(names)}
    pairs = []
    for name in names:
        c = tallies[name].counts
        for kept_in in sorted(c.duplicate_of, key=lambda k: (order.get(k, len(order)), k)):
            if c.duplicate_of[kept_in]:
                pairs.append({"removed_from": name, "kept_in": kept_in, "documents": c.duplicate_of[kept_in],
                              "tokens": c.duplicate_tokens_of[kept_in],
                              "share_of_read": c.duplicate_of[kept_in] / c.documents_read})
    return {"settings": settings,
            "decided": None if decided is None else dict(decided.get("removed") or {}),
            "documents": sum(p["documents"] for p in pairs), "tokens": sum(p["tokens"] for p in pairs),
            "pairs": pairs}


def collect(corpus_dir: str | Path | ObjectPath) -> CorpusStats:
    """Count everything a corpus folder holds; see the module docstring for where each number comes from."""
    root = location.at(corpus_dir)
    folder = CorpusDir(root)
    if not folder.is_corpus():
        raise NotACorpus(f"{root} is not a corpus folder: it has neither {CORPUS_JSON} nor {PLAN_JSON}")
    corpus_json = _read_json(root / CORPUS_JSON)
    plan = _read_json(root / PLAN_JSON)
    order, target_shares, manifest_tokens, source_groups = _manifest_view(corpus_json, plan)
    planned: dict[str, list[str]] = {}
    for unit in (plan or {}).get("units", []):
        planned.setdefault(unit["source"], []).append(unit["unit"])
    ledger = folder.ledger_units()
    failed = folder.failed_units()
    names = order + sorted((set(planned) | {s for s, _ in ledger}) - set(order))
    sizes = location.files_under(root)  # one listing for every byte count below (one request set on a store)
    damage = _DamageFound(folder, quick_check(root))

    tallies: dict[str, _Tally] = {}
    per_source: dict[str, dict] = {}
    failed_units: list[dict] = []
    for name in names:
        tally = tallies[name] = _Tally()
        units = planned.get(name) or sorted(u for s, u in ledger if s == name)
        done = [u for u in units if (name, u) in ledger]
        failed_here = [u for u in units if (name, u) in failed and (name, u) not in ledger]
        for unit in done:
            _tally_unit(folder, name, unit, tally, damage)
        for unit in failed_here:
            entry = _read_json(failed[(name, unit)]) or {}
            failed_units.append({"source": name, "unit": unit, "input": entry.get("input"),
                                 "error": entry.get("error", "")})
        per_source[name] = {
            "name": name,
            "group": source_groups.get(name),
            "units": {"total": len(units), "done": len(done), "failed": len(failed_here),
                      "pending": len(units) - len(done) - len(failed_here)},
            **tally.numbers(),
            "share": {"target": target_shares.get(name), "achieved": None},
            "manifest_tokens": manifest_tokens.get(name),
            "bytes_on_disk": {"shards": _bytes_below(sizes, f"{SHARDS_DIR}/{name}"),
                              "quarantine": _bytes_below(sizes, f"{QUARANTINE_DIR}/{name}")},
        }
        counts = tally.counts
        per_source[name]["warning"] = source_warning(counts.documents_read, counts.quarantined, tally.tokens,
                                                     len(done))

    total = _Tally()
    for tally in tallies.values():
        total.merge(tally)
    for name, numbers in per_source.items():
        numbers["share"]["achieved"] = tallies[name].tokens / total.tokens if total.tokens else None
    settings = _dedup_settings(corpus_json, plan)
    # the search's record gives only its totals (the pairs come from the sidecars); no request without dedup
    search = _read_json(folder.dedup_result_path) if settings is not None else None
    numbers = {
        "schema_version": SCHEMA_VERSION,
        "corpus": _corpus_header(root, corpus_json or {}, plan, bool(damage.units)),
        "sources": list(per_source.values()),
        "groups": _group_numbers(per_source, total.tokens),
        "total": _total_numbers(per_source, total, target_shares, manifest_tokens, sizes),
        "overlap": _overlap(settings, search, names, tallies),
        "failed_units": failed_units,
        "damaged_units": [d.to_dict() for _, d in sorted(damage.units.items())],
        "problems": damage.problems,
    }
    return CorpusStats(root, numbers, {name: tally.lengths for name, tally in tallies.items()})


def summary_row(corpus_dir: Path) -> dict:
    """One line of the corpora list: cheap, from corpus.json and the ledger only."""
    corpus_json = _read_json(corpus_dir / CORPUS_JSON) or {}
    plan = _read_json(corpus_dir / PLAN_JSON) or {}
    ledger = CorpusDir(corpus_dir).ledger_units()
    units_total = len(plan.get("units", [])) or len(ledger)
    tokens = sum((_read_json(p) or {}).get("tokens", 0) for p in ledger.values())
    sources = corpus_json.get("sources") or {}
    holder = build_holder(corpus_dir)
    damaged = quick_check(corpus_dir)
    return {
        "name": corpus_dir.name,
        "path": str(corpus_dir),
        "status": "damaged" if damaged else corpus_json.get("status", "planned"),
        "damaged_units": len(damaged),
        "build_running": None if holder is None else bool(holder),
        "sources": len(sources) or len({u["source"] for u in plan.get("units", [])}),
        "units": {"total": units_total, "done": len(ledger)},
        "tokens": tokens,
        "bytes_on_disk": _folder_bytes(corpus_dir),
        "last_build": corpus_json.get("finished_at") or corpus_json.get("started_at"),
    }


def quarantine_examples(corpus_dir: str | Path | ObjectPath, per_source: int = 3) -> dict[str, list[dict]]:
    """The first few quarantined records of each source, in unit order."""
    root = location.at(corpus_dir) / QUARANTINE_DIR
    files: dict[str, list[str]] = {}
    for rel in location.list_files(root):
        parts = rel.split("/")
        if len(parts) == 2 and parts[1].endswith(".jsonl") and not parts[1].startswith("."):
            files.setdefault(parts[0], []).append(parts[1])
    out: dict[str, list[dict]] = {}
    for source in sorted(files):
        rows: list[dict] = []
        for name in sorted(files[source]):
            rows += [json.loads(line) for line in _first_lines(root / source / name, per_source - len(rows))]
            if len(rows) >= per_source:
                break
        if rows:
            out[source] = rows
    return out


def _first_lines(path: StorePath, n: int) -> list[str]:
    """Up to ``n`` lines from the start of a file, reading no more of it than they take."""
    lines, pending = [], b""
    for block in location.blocks(path, 1 << 16):
        *whole, pending = (pending + block).split(b"\n")
        lines += [line.decode("utf-8") for line in whole]
        if len(lines) >= n:
            return lines[:n]
    return (lines + ([pending.decode("utf-8")] if pending else []))[:n]


def dedup_settings(s: dict) -> str:
    """A manifest's dedup block (as dumped to JSON) in words: what counts as a duplicate, and among which sources."""
    kinds = ["exact (the same normalised words)"] if s["exact"] else []
    if s["near"]:
        near = s["near"]
        kinds.append(f"near (MinHash LSH: Jaccard >= {near['threshold']} on word {near['ngram']}-gram shingles, "
                     f"{near['permutations']} permutations)")
    where = "across sources (scope corpus)" if s["scope"] == "corpus" else "within each source (scope source)"
    return f"dedup: {' and '.join(kinds)}, {where}"


def dedup_note(overlap: dict) -> str:
    """The dedup settings and what the search decided, in one sentence (the terminal and the report say the same)."""
    decided = overlap["decided"]
    if decided is None:
        found = "the search has not finished, so no document is removed yet"
    else:
        found = (f"the search found {sum(decided.values()):,} documents to remove "
                 f"({decided.get(DUPLICATE_EXACT, 0):,} exact, {decided.get(DUPLICATE_NEAR, 0):,} near)")
    return f"{dedup_settings(overlap['settings'])}; {found}"


def progress_note(status: str, running: bool | None, pid: int | None, target: str = "NAME") -> str | None:
    """What a reader should know about an unfinished or damaged corpus (``target``: its name or folder), or None."""
    if status == "damaged":
        return (f"the files of some finished units disagree with their ledger entries: run 'elm-corpus verify "
                f"{shlex.quote(target)}' to check every shard, then add --repair and rerun the build it prints")
    if running:
        return f"a build (pid {pid}) is writing this folder now; the numbers count the units finished so far"
    if status == "building" and running is False:
        return "no build is running: the last one was interrupted; rerun 'elm-corpus build MANIFEST' to resume"
    if status == "building":
        return "a build is running, or was interrupted: rerun 'elm-corpus build MANIFEST' to resume it"
    if status in ("partial", "failed", "planned"):
        return "not every unit is done: rerun 'elm-corpus build MANIFEST' to finish it"
    return None
