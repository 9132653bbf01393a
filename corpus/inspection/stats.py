"""`elm-corpus stats` and `elm-corpus inspect`: what a corpus folder holds, counted from disk.

The numbers come from the files a build leaves, never from a build's memory: the plan
(``plan.json``, every work unit), the ledger (a unit is done once its entry exists), the
failed entries, each done unit's shard sidecar (documents, chunks, drops, tokens of dropped chunks, quarantine) and
``.idx`` (chunk lengths). So they are right for a finished corpus, a build still running
and one that was interrupted. ``corpus.json`` supplies the manifest, tokenizer and status.

The JSON schema (``--json``) is documented in ``docs/stats.md``; ``SCHEMA_VERSION`` changes
whenever a field changes meaning or disappears.
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corpus.store.layout import FAILED_DIR, LEDGER_DIR, LOCK_FILE, PLAN_JSON, QUARANTINE_DIR
from corpus.store.shards import CORPUS_JSON, SHARDS_DIR, Shard

SCHEMA_VERSION = 1


class NotACorpus(FileNotFoundError):
    """A name or folder that does not hold a corpus; the message says what was looked for and where."""


# ---------------------------------------------------------------- finding corpora

def corpora_dir(data_dir: str | Path | None = None) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    from corpus.paths import corpora_root
    return corpora_root()


def is_corpus(folder: Path) -> bool:
    return (folder / CORPUS_JSON).is_file() or (folder / PLAN_JSON).is_file()


def resolve_corpus(target: str | Path, data_dir: str | Path | None = None) -> Path:
    """A corpus folder from a folder path or a name under the corpora folder."""
    path = Path(target)
    under = corpora_dir(data_dir) / str(target)
    for candidate in (path, under):
        if candidate.is_dir():
            if is_corpus(candidate):
                return candidate
            raise NotACorpus(f"{candidate} is not a corpus folder: it has neither {CORPUS_JSON} nor {PLAN_JSON} "
                             f"(a folder 'elm-corpus build' writes has both)")
    names = [p.name for p in list_corpus_dirs(data_dir)]
    known = f"; corpora there: {', '.join(names)}" if names else "; there are none yet"
    raise NotACorpus(f"no corpus {str(target)!r}: not a folder, and not a name under {corpora_dir(data_dir)}"
                     f"{known} (build one with 'elm-corpus build MANIFEST')")


def list_corpus_dirs(data_dir: str | Path | None = None) -> list[Path]:
    root = corpora_dir(data_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and is_corpus(p))


# ---------------------------------------------------------------- reading the folder

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _unit_files(folder: Path) -> dict[tuple[str, str], Path]:
    """``(source, unit) -> path`` for every ``<folder>/<source>/<unit>.json``."""
    out = {}
    if folder.is_dir():
        for source_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            for path in sorted(source_dir.glob("*.json")):
                out[(source_dir.name, path.stem)] = path
    return out


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:  # a build renamed a temporary file away under us
                pass
    return total


def build_holder(corpus_dir: Path) -> int | None:
    """The pid of the build holding the folder's lock, 0 when none does, None when this system cannot say.

    Read from /proc/locks (Linux) rather than by taking the lock, which could make a build
    that starts at that moment refuse to run.
    """
    lock, locks = corpus_dir / LOCK_FILE, Path("/proc/locks")
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
    """Running counts of one source (or of the whole corpus)."""
    documents_read: int = 0
    documents_kept: int = 0
    documents_dropped: Counter = field(default_factory=Counter)
    quarantined: int = 0
    quarantined_by_reason: Counter = field(default_factory=Counter)
    chunks_split: int = 0
    chunks_kept: int = 0
    chunks_dropped: Counter = field(default_factory=Counter)
    filter_details: Counter = field(default_factory=Counter)
    tokens: int = 0
    tokens_dropped: Counter = field(default_factory=Counter)  # tokens of encoded chunks dropped, by reason
    shards_without_token_drops: int = 0  # sidecars written before builds recorded tokens_dropped
    shards: int = 0
    lengths: Counter = field(default_factory=Counter)  # chunk length in tokens -> number of chunks

    def add_sidecar(self, meta: dict) -> None:
        self.documents_read += meta.get("documents_read", 0)
        self.documents_kept += meta.get("kept", 0)
        self.documents_dropped.update(meta.get("dropped", {}))
        self.quarantined += meta.get("quarantined", 0)
        self.quarantined_by_reason.update(meta.get("quarantined_by_reason", {}))
        self.chunks_split += meta.get("chunks_split", 0)
        self.chunks_kept += meta.get("chunks", 0)
        self.chunks_dropped.update(meta.get("chunks_dropped", {}))
        self.filter_details.update(meta.get("drop_details", {}))
        if "tokens_dropped" in meta:
            self.tokens_dropped.update(meta["tokens_dropped"])
        else:
            self.shards_without_token_drops += 1
        self.shards += 1

    def add_lengths(self, lengths: np.ndarray) -> None:
        values, counts = np.unique(lengths, return_counts=True)
        self.lengths.update(dict(zip(values.tolist(), counts.tolist())))
        self.tokens += int(lengths.sum())

    def merge(self, other: "_Tally") -> None:
        for name in ("documents_read", "documents_kept", "quarantined", "chunks_split", "chunks_kept",
                     "tokens", "shards_without_token_drops", "shards"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("documents_dropped", "quarantined_by_reason", "chunks_dropped", "filter_details",
                     "tokens_dropped", "lengths"):
            getattr(self, name).update(getattr(other, name))

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
        return {
            "documents": {"read": self.documents_read, "kept": self.documents_kept,
                          "dropped": by_reason(self.documents_dropped),
                          "dropped_total": sum(self.documents_dropped.values()),
                          "quarantined": self.quarantined,
                          "quarantined_by_reason": by_reason(self.quarantined_by_reason)},
            "chunks": {"split": self.chunks_split, "kept": self.chunks_kept,
                       "dropped": by_reason(self.chunks_dropped),
                       "dropped_total": sum(self.chunks_dropped.values())},
            "filter_details": by_reason(self.filter_details),
            "tokens": self.tokens,
            # unknown (null) when any counted shard predates the field, rather than a silent undercount
            "tokens_dropped": None if self.shards_without_token_drops else by_reason(self.tokens_dropped),
            "tokens_after_chars": None if self.shards_without_token_drops else
            self.tokens + sum(self.tokens_dropped.values()),
            "tokens_per_chunk": self.length_summary(),
            "shards": self.shards,
        }


@dataclass
class CorpusStats:
    """The ``--json`` numbers plus what only the report needs (full chunk-length distributions)."""
    path: Path
    numbers: dict
    lengths: dict[str, Counter]  # source -> {chunk length in tokens: number of chunks}

    @property
    def sources(self) -> list[dict]:
        return self.numbers["sources"]


def _manifest_view(corpus_json: dict | None) -> tuple[list[str], dict[str, float], dict[str, int]]:
    """Source names in manifest order, target shares and published token counts."""
    if not corpus_json:
        return [], {}, {}
    dump = (corpus_json.get("manifest") or {}).get("dump")
    if dump:
        from corpus.manifest import Manifest
        manifest = Manifest.model_validate(dump)
        return ([s.name for s in manifest.sources], manifest.target_shares(),
                {s.name: s.tokens for s in manifest.sources})
    sources = corpus_json.get("sources", {})
    return (list(sources), {k: v.get("target_share") for k, v in sources.items()},
            {k: v.get("target_tokens") for k, v in sources.items()})


def collect(corpus_dir: str | Path) -> CorpusStats:
    """Count everything a corpus folder holds; see the module docstring for where each number comes from."""
    root = Path(corpus_dir)
    if not is_corpus(root):
        raise NotACorpus(f"{root} is not a corpus folder: it has neither {CORPUS_JSON} nor {PLAN_JSON}")
    corpus_json = _read_json(root / CORPUS_JSON)
    plan = _read_json(root / PLAN_JSON)
    order, target_shares, manifest_tokens = _manifest_view(corpus_json)
    planned: dict[str, list[str]] = {}
    for unit in (plan or {}).get("units", []):
        planned.setdefault(unit["source"], []).append(unit["unit"])
    ledger = _unit_files(root / LEDGER_DIR)
    failed = _unit_files(root / FAILED_DIR)
    names = order + sorted((set(planned) | {s for s, _ in ledger}) - set(order))

    tallies: dict[str, _Tally] = {}
    per_source: dict[str, dict] = {}
    problems: list[str] = []
    failed_units: list[dict] = []
    for name in names:
        tally = _Tally()
        units = planned.get(name) or sorted(u for s, u in ledger if s == name)
        done = [u for u in units if (name, u) in ledger]
        failed_here = [u for u in units if (name, u) in failed and (name, u) not in ledger]
        for unit in done:
            stem = root / SHARDS_DIR / name / unit
            try:
                meta = _read_json(stem.with_suffix(".json"))
                if meta is None:
                    problems.append(f"{name}/{unit}: the ledger says done but {stem}.json is missing")
                    continue
                lengths = Shard.open(stem).chunk_lengths()
            except (FileNotFoundError, ValueError) as e:
                problems.append(f"{name}/{unit}: unreadable shard: {e}")
                continue
            if len(lengths) != meta.get("chunks") or int(lengths.sum()) != meta.get("tokens"):
                problems.append(f"{name}/{unit}: {stem.name}.idx holds {len(lengths)} chunks and "
                                f"{int(lengths.sum())} tokens but its sidecar says {meta.get('chunks')} and "
                                f"{meta.get('tokens')}")
            tally.add_sidecar(meta)
            tally.add_lengths(lengths)
        for unit in failed_here:
            entry = _read_json(failed[(name, unit)]) or {}
            failed_units.append({"source": name, "unit": unit, "input": entry.get("input"),
                                 "error": entry.get("error", "")})
        tallies[name] = tally
        per_source[name] = {
            "name": name,
            "units": {"total": len(units), "done": len(done), "failed": len(failed_here),
                      "pending": len(units) - len(done) - len(failed_here)},
            **tally.numbers(),
            "share": {"target": target_shares.get(name), "achieved": None},
            "manifest_tokens": manifest_tokens.get(name),
            "bytes_on_disk": {"shards": _folder_bytes(root / SHARDS_DIR / name),
                              "quarantine": _folder_bytes(root / QUARANTINE_DIR / name)},
        }

    total = _Tally()
    for tally in tallies.values():
        total.merge(tally)
    for name, numbers in per_source.items():
        numbers["share"]["achieved"] = tallies[name].tokens / total.tokens if total.tokens else None
    units_total = {k: sum(s["units"][k] for s in per_source.values()) for k in ("total", "done", "failed", "pending")}
    corpus_json = corpus_json or {}
    tokenizer = corpus_json.get("tokenizer") or {}
    holder = build_holder(root)
    numbers = {
        "schema_version": SCHEMA_VERSION,
        "corpus": {
            "name": corpus_json.get("name") or (plan or {}).get("name") or root.name,
            "path": str(root),
            "status": corpus_json.get("status", "planned"),
            "sample": corpus_json.get("sample", (plan or {}).get("sample")),
            "manifest_path": (corpus_json.get("manifest") or {}).get("path"),
            "manifest_fingerprint": corpus_json.get("manifest_fingerprint") or (plan or {}).get("fingerprint"),
            "tokenizer": {"spec": tokenizer.get("spec"), "sha256": tokenizer.get("sha256"),
                          "vocab_size": tokenizer.get("vocab_size")},
            "started_at": corpus_json.get("started_at"),
            "finished_at": corpus_json.get("finished_at"),
            "build_pid": holder or None,
            "build_running": None if holder is None else bool(holder),
        },
        "sources": list(per_source.values()),
        "total": {
            "units": units_total,
            **total.numbers(),
            "share": {"target": sum(v for v in target_shares.values() if v) if target_shares else None,
                      "achieved": 1.0 if total.tokens else None},
            "manifest_tokens": sum(v for v in manifest_tokens.values() if v) if manifest_tokens else None,
            "bytes_on_disk": {"shards": sum(s["bytes_on_disk"]["shards"] for s in per_source.values()),
                              "quarantine": sum(s["bytes_on_disk"]["quarantine"] for s in per_source.values()),
                              "folder": _folder_bytes(root)},
        },
        "failed_units": failed_units,
        "problems": problems,
    }
    lengths = {name: tally.lengths for name, tally in tallies.items()}
    return CorpusStats(root, numbers, lengths)


def summary_row(corpus_dir: Path) -> dict:
    """One line of the corpora list: cheap, from corpus.json and the ledger only."""
    corpus_json = _read_json(corpus_dir / CORPUS_JSON) or {}
    plan = _read_json(corpus_dir / PLAN_JSON) or {}
    ledger = _unit_files(corpus_dir / LEDGER_DIR)
    units_total = len(plan.get("units", [])) or len(ledger)
    tokens = sum((_read_json(p) or {}).get("tokens", 0) for p in ledger.values())
    sources = corpus_json.get("sources") or {}
    holder = build_holder(corpus_dir)
    return {
        "name": corpus_dir.name,
        "path": str(corpus_dir),
        "status": corpus_json.get("status", "planned"),
        "build_running": None if holder is None else bool(holder),
        "sources": len(sources) or len({u["source"] for u in plan.get("units", [])}),
        "units": {"total": units_total, "done": len(ledger)},
        "tokens": tokens,
        "bytes_on_disk": _folder_bytes(corpus_dir),
        "last_build": corpus_json.get("finished_at") or corpus_json.get("started_at"),
    }


def quarantine_examples(corpus_dir: str | Path, per_source: int = 3) -> dict[str, list[dict]]:
    """The first few quarantined records of each source, in unit order."""
    root = Path(corpus_dir) / QUARANTINE_DIR
    out: dict[str, list[dict]] = {}
    if not root.is_dir():
        return out
    for source_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        rows: list[dict] = []
        for path in sorted(source_dir.glob("*.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if len(rows) >= per_source:
                        break
                    rows.append(json.loads(line))
            if len(rows) >= per_source:
                break
        if rows:
            out[source_dir.name] = rows
    return out


# ---------------------------------------------------------------- the CLI

def cli_stats(args) -> int:
    from pipelines import views as stats_view
    if args.target is None:
        if args.report:
            raise ValueError("--report needs a corpus: elm-corpus stats NAME_OR_DIR --report DIR")
        rows = [summary_row(p) for p in list_corpus_dirs(args.data_dir)]
        if args.json:
            print(json.dumps({"schema_version": SCHEMA_VERSION, "corpora_dir": str(corpora_dir(args.data_dir)),
                              "corpora": rows}, indent=2))
        else:
            stats_view.print_corpora(rows, corpora_dir(args.data_dir))
        return 0
    stats = collect(resolve_corpus(args.target, args.data_dir))
    if args.json:
        print(json.dumps(stats.numbers, indent=2))
    else:
        stats_view.print_corpus(stats.numbers)
    if args.report:
        from corpus.inspection.report import write_report
        page = write_report(stats, args.report)
        print(f"report: {page}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cli_inspect(args) -> int:
    from pipelines import views as stats_view
    from corpus.inspection.chunks import chunk_at, sample_chunks
    if args.shard is not None:
        if args.index is None:
            raise ValueError("--shard needs --index I (the chunk number within that shard)")
        chunks = [chunk_at(args.shard, args.index)]
        stats_view.print_chunks(chunks, full=True)
        return 0
    if args.index is not None:
        raise ValueError("--index needs --shard FILE")
    if args.target is None:
        raise ValueError("inspect needs a corpus: elm-corpus inspect NAME [--source S] [-n K] [--seed N]")
    chunks = sample_chunks(resolve_corpus(args.target, args.data_dir), source=args.source, n=args.n,
                           seed=args.seed)
    stats_view.print_chunks(chunks, full=False)
    return 0

