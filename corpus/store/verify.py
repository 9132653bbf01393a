"""Is a built corpus what its records say? `elm-corpus verify` (every byte) and the cheap check `stats` runs.

Each unit's files are held against three records, all written by the build: the shard's
sidecar, the unit's ledger entry and its line in corpus.json (sha256 of ``.bin`` and
``.idx``, token and chunk counts). :func:`verify` re-hashes both files, opens the shard
(its ``.idx`` must agree with its ``.bin``), checks that every token id is below the
tokenizer's vocabulary (corpus.json), and looks for units the ledger and the files
disagree about: shard files without a ledger entry, ledger entries without their files.
:func:`quick_check` does what needs no token data (existence, byte sizes, the records
against each other) and is what `elm-corpus stats` shows.

``verify(..., repair=True)`` makes every damaged unit pending again: its ledger entry is
removed first, then its shard, sidecar and quarantine files, then corpus.json is rewritten
from the ledger, so a crash at any point leaves units the next build redoes (a rerun of
the repair finishes the job). The same ``elm-corpus build`` then recomputes exactly those
units, byte for byte.

Every read, listing and removal goes through the few functions under "file access", which
go through :mod:`corpus.store.location`: a corpus on an object store (``s3://...``) is
verified the same way, each object streamed through the hash, never downloaded whole.
"""
from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from corpus.manifest import Manifest
from corpus.store import location
from corpus.store.counts import UnitCounts
from corpus.store.index import corpus_index, plan_units
from corpus.store.layout import CORPUS_JSON, DEDUP_DIR, PLAN_JSON, SHARDS_DIR, CorpusDir, NotACorpus
from corpus.store.location import ObjectPath, StorePath
from corpus.store.shards import TOKEN_DTYPE, Shard, ShardIndex, read_index

_BLOCK = 8 << 20  # bytes read at a time when hashing; even, so uint16 ids never straddle two blocks
_SHARD_SUFFIXES = (".bin", ".idx", ".json")


# ---------------------------------------------------------------- file access

def _size(path: StorePath) -> int | None:
    """Bytes in a file, or None when it is absent."""
    return location.size(path)


def _blocks(path: StorePath) -> Iterator[bytes]:
    return location.blocks(path, _BLOCK)


def _shard_stems(root: StorePath) -> set[tuple[str, str]]:
    """``(source, unit)`` of every shard file under shards/ (a unit counts if any of its three files is there)."""
    out = set()
    for rel in location.list_files(root / SHARDS_DIR):
        parts = rel.split("/")
        if len(parts) == 2 and not parts[1].startswith("."):
            name = Path(parts[1])
            if name.suffix in _SHARD_SUFFIXES:
                out.add((parts[0], name.stem))
    return out


def _open_shard(stem: StorePath) -> Shard | ShardIndex:
    # a local shard is memory-mapped as every reader opens it; an object's index is read, its tokens are not
    return Shard.open(stem) if isinstance(stem, Path) else read_index(stem)


# ---------------------------------------------------------------- results

@dataclass
class UnitDamage:
    source: str
    unit: str
    shard: str                     # the shard's stem relative to the corpus folder: shards/<source>/<unit>
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Verification:
    path: StorePath
    units_checked: int = 0         # units with a ledger entry, plus those found damaged without one
    tokens_checked: int = 0        # token ids compared with the vocabulary
    bytes_hashed: int = 0
    vocab_size: int | None = None  # None: corpus.json records no tokenizer, so ids were not checked
    damaged: list[UnitDamage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # about the folder, not one unit: corpus.json, plan.json
    locked: bool = False           # the folder's build lock was held while checking (no build could write)
    repaired: list[str] = field(default_factory=list)   # files removed by --repair, relative to the folder
    pending: int = 0               # units of plan.json without a ledger entry and not damaged: a build's work left
    dedup_damaged: list[str] = field(default_factory=list)  # deduplication's files that differ from its result
    planned: int = 0               # units plan.json holds (0: no plan)
    next_command: str | None = None                      # what to run after a repair, or for the pending units

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems

    def to_dict(self) -> dict:
        return {"path": str(self.path), "ok": self.ok, "units_checked": self.units_checked,
                "tokens_checked": self.tokens_checked, "bytes_hashed": self.bytes_hashed,
                "vocab_size": self.vocab_size, "locked": self.locked,
                "damaged": [d.to_dict() for d in self.damaged], "problems": self.problems, "repaired": self.repaired,
                "pending": self.pending, "planned": self.planned, "next_command": self.next_command}


# ---------------------------------------------------------------- checks

def _records(root: StorePath,
             problems: list[str] | None = None) -> tuple[dict, dict | None, dict[tuple[str, str], dict]]:
    """corpus.json (or {}), plan.json (or None) and corpus.json's shard lines by ``(source, unit)``.

    A record that does not parse counts as absent, and is named in ``problems``.
    """
    records = []
    for name in (CORPUS_JSON, PLAN_JSON):
        try:
            records.append(location.read_json(root / name))
        except ValueError as e:
            records.append(None)
            if problems is not None:
                problems.append(f"{name} is {e}")
    corpus_json, plan = records[0] or {}, records[1]
    listed = {(name, s["unit"]): s for name, src in (corpus_json.get("sources") or {}).items()
              for s in src.get("shards") or [] if "unit" in s}
    return corpus_json, plan, listed


def _entry_problems(corpus: CorpusDir, source: str, unit: str, entry: dict, sidecar: dict | None,
                    listed: dict | None) -> list[str]:
    """What the files' presence and sizes, and the three records, say without reading a token."""
    stem = corpus.shard_stem(source, unit)
    name = stem.name
    problems = []
    if entry.get("shard") not in (None, corpus.relative(stem)):
        problems.append(f"the ledger entry names shard {entry.get('shard')!r}, not {corpus.relative(stem)!r}")
    sizes = {suffix: _size(stem.with_suffix(suffix)) for suffix in _SHARD_SUFFIXES}
    for suffix, size in sizes.items():
        if size is None:
            problems.append(f"{name}{suffix} is missing")
    tokens = entry.get("tokens")
    if sizes[".bin"] is not None and isinstance(tokens, int) and sizes[".bin"] != tokens * TOKEN_DTYPE.itemsize:
        problems.append(f"{name}.bin is {sizes['.bin']:,} bytes, but the ledger's {tokens:,} tokens make "
                        f"{tokens * TOKEN_DTYPE.itemsize:,}")
    quarantine = entry.get("quarantine")
    if quarantine and _size(corpus.root / quarantine) is None:
        problems.append(f"the quarantine file {quarantine} the ledger names is missing")
    for record, label in ((sidecar, "sidecar"), (listed, "corpus.json")):
        if record is None:
            continue
        for key in ("sha256_bin", "sha256_idx", "chunks", "tokens"):
            if key in record and record[key] != entry.get(key):
                problems.append(f"the {label} records {key} {record[key]!r}, the ledger entry {entry.get(key)!r}")
    if sidecar is not None and UnitCounts.from_dict(sidecar).to_dict() != UnitCounts.from_dict(entry).to_dict():
        problems.append("the sidecar's document, chunk and drop counts differ from the ledger entry's")
    return problems


def _hash_and_max(path: StorePath, vocab_size: int | None) -> tuple[str, int, int, tuple[int, int] | None]:
    """sha256, bytes read, token ids compared, and the first id outside the vocabulary as (offset, id), in one pass."""
    h, size, tokens, first_bad = hashlib.sha256(), 0, 0, None
    carry = b""
    for block in _blocks(path):
        h.update(block)
        size += len(block)
        if vocab_size is None or first_bad is not None:
            continue
        data = carry + block if carry else block  # an odd byte left over only from a damaged, odd-sized block
        usable = len(data) - len(data) % TOKEN_DTYPE.itemsize
        ids = np.frombuffer(data, dtype=TOKEN_DTYPE, count=usable // TOKEN_DTYPE.itemsize)
        carry = data[usable:]
        if ids.size and int(ids.max()) >= vocab_size:
            at = int(np.argmax(ids >= vocab_size))
            first_bad = (tokens + at, int(ids[at]))
        tokens += ids.size
    return h.hexdigest(), size, tokens, first_bad


def _deep_problems(corpus: CorpusDir, source: str, unit: str, entry: dict, sidecar: dict | None,
                   listed: dict | None, vocab_size: int | None, result: Verification) -> list[str]:
    """The shard opened and both files re-hashed against every record; token ids against the vocabulary."""
    stem = corpus.shard_stem(source, unit)
    problems = []
    try:
        shard = _open_shard(stem)
    except FileNotFoundError:
        shard = None  # already reported as missing
    except ValueError as e:
        shard = None
        detail = str(e)
        for path in (stem.with_suffix(".idx"), stem.with_suffix(".bin")):  # the shard is named already
            detail = detail.removeprefix(f"{path}: ")
        problems.append(f"{stem.name}.idx does not agree with {stem.name}.bin: {detail}")
    if shard is not None:
        if len(shard) != entry.get("chunks"):
            problems.append(f"{stem.name}.idx holds {len(shard):,} chunks, the ledger entry {entry.get('chunks')!r}")
        if shard.num_tokens != entry.get("tokens"):
            problems.append(f"{stem.name}.idx ends at token {shard.num_tokens:,}, the ledger entry records "
                            f"{entry.get('tokens')!r} tokens")
    for suffix, key in ((".bin", "sha256_bin"), (".idx", "sha256_idx")):
        path = stem.with_suffix(suffix)
        if _size(path) is None:
            continue
        digest, size, tokens, bad = _hash_and_max(path, vocab_size if suffix == ".bin" else None)
        result.bytes_hashed += size
        result.tokens_checked += tokens
        wrong = [label for record, label in ((entry, "ledger entry"), (sidecar, "sidecar"), (listed, "corpus.json"))
                 if record is not None and key in record and record[key] != digest]
        if wrong:
            names = " and ".join([", ".join(wrong[:-1]), wrong[-1]] if len(wrong) > 1 else wrong)
            problems.append(f"{path.name} has sha256 {digest[:16]}..., not the one its {names} "
                            f"record{'s' if len(wrong) == 1 else ''}")
        if bad is not None:
            problems.append(f"{path.name}: token id {bad[1]} at token offset {bad[0]:,} is outside the tokenizer's "
                            f"vocabulary ({vocab_size:,} ids)")
    return problems


def _unit_damage(corpus: CorpusDir, source: str, unit: str, listed: dict | None, deep: bool,
                 vocab_size: int | None, result: Verification) -> UnitDamage | None:
    """What is wrong with one finished unit (one with a ledger entry), or None."""
    stem = corpus.shard_stem(source, unit)
    damage = UnitDamage(source, unit, corpus.relative(stem))
    try:
        entry = location.read_json(corpus.ledger_path(source, unit))
    except ValueError as e:
        entry = {}
        damage.problems.append(f"the ledger entry is {e}")
    try:
        sidecar = location.read_json(stem.with_suffix(".json"))
    except ValueError as e:
        sidecar = None
        damage.problems.append(f"the sidecar {stem.name}.json is {e}")
    damage.problems += _entry_problems(corpus, source, unit, entry, sidecar, listed)
    if deep:
        damage.problems += _deep_problems(corpus, source, unit, entry, sidecar, listed, vocab_size, result)
    return damage if damage.problems else None


def _unledgered_damage(corpus: CorpusDir, source: str, unit: str, listed: dict | None,
                       planned: set[tuple[str, str]] | None) -> UnitDamage | None:
    """A unit without a ledger entry is pending, unless files or corpus.json say it was finished."""
    stem = corpus.shard_stem(source, unit)
    present = [f"{stem.name}{suffix}" for suffix in _SHARD_SUFFIXES if _size(stem.with_suffix(suffix)) is not None]
    problems = []
    if present:
        problems.append(f"shard files exist ({', '.join(present)}) but the unit has no ledger entry "
                        f"(a deleted entry, or files left by an interrupted build)")
    if listed is not None:
        problems.append("corpus.json lists this shard, but the unit has no ledger entry")
    if planned is not None and (source, unit) not in planned and problems:
        problems.append("it is not a work unit of plan.json")
    return UnitDamage(source, unit, corpus.relative(stem), problems) if problems else None


def _inspect(root: StorePath, deep: bool, progress: Callable[[int, int], None] | None = None) -> Verification:
    corpus = CorpusDir(root)
    problems: list[str] = []
    corpus_json, plan, listed = _records(root, problems)
    vocab_size = (corpus_json.get("tokenizer") or {}).get("vocab_size")
    result = Verification(root, vocab_size=int(vocab_size) if vocab_size else None, problems=problems)
    ledger = corpus.ledger_units()
    for n, (source, unit) in enumerate(sorted(ledger), start=1):
        result.units_checked += 1
        damage = _unit_damage(corpus, source, unit, listed.get((source, unit)), deep, result.vocab_size, result)
        if damage is not None:
            result.damaged.append(damage)
        if progress is not None:
            progress(n, len(ledger))
    if deep and plan is not None:  # without a plan (a folder no build wrote) the ledger alone says what is finished
        planned = {(u["source"], u["unit"]) for u in plan.get("units", [])}
        for source, unit in sorted((_shard_stems(root) | set(listed)) - set(ledger)):
            damage = _unledgered_damage(corpus, source, unit, listed.get((source, unit)), planned)
            if damage is not None:
                result.units_checked += 1
                result.damaged.append(damage)
        _check_dedup(corpus, corpus_json, bool(ledger), result)
        damaged = {(d.source, d.unit) for d in result.damaged}
        result.planned = len(planned)
        result.pending = len(planned - set(ledger) - damaged)
        if result.pending or result.dedup_damaged:
            result.next_command = rebuild_command(root, corpus_json, plan)
    return result


def _check_dedup(corpus: CorpusDir, corpus_json: dict, any_done: bool, result: Verification) -> None:
    """Deduplication's files against the hashes its result recorded (signatures per unit, removals per unit).

    Damage there is the folder's, not a unit's: the removals were decided over every unit at once. A repair removes
    the damaged files and the result; the next build signs the missing units and searches again, which writes the
    same removals, so the finished shards stay valid.
    """
    dedup = ((corpus_json.get("manifest") or {}).get("dump") or {}).get("dedup")
    try:
        record = location.read_json(corpus.dedup_result_path)
    except ValueError as e:
        record, problem = None, f"{corpus.relative(corpus.dedup_result_path)} is {e}"
        result.problems.append(problem)
        result.dedup_damaged.append(corpus.relative(corpus.dedup_result_path))
    if record is None:
        if dedup and any_done and not result.dedup_damaged:
            result.problems.append(f"{corpus.relative(corpus.dedup_result_path)} is missing, but units were "
                                   f"tokenized with its removals")
            result.dedup_damaged.append(corpus.relative(corpus.dedup_result_path))
        return
    recorded = [(corpus.signatures_path(*key.split("/")), sha) for key, sha in record["signatures_sha256"].items()]
    recorded += [(corpus.removed_path(*key.split("/")), sha) for key, sha in record["removals_sha256"].items()]
    for path, sha in recorded:
        if _size(path) is None:
            found = "is missing"
        else:
            digest = hashlib.sha256()
            for block in _blocks(path):
                digest.update(block)
                result.bytes_hashed += len(block)
            found = None if digest.hexdigest() == sha else f"has sha256 {digest.hexdigest()[:12]}, not {sha[:12]}"
        if found:
            result.problems.append(f"{corpus.relative(path)} {found} (as dedup/result.json records)")
            result.dedup_damaged.append(corpus.relative(path))
    stray = set(location.list_files(corpus.root / DEDUP_DIR / "removed")) - {
        f"{key}.json" for key in record["removals_sha256"]}
    for rel in sorted(r for r in stray if not r.rsplit("/", 1)[-1].startswith(".")):
        result.problems.append(f"{DEDUP_DIR}/removed/{rel} is not in dedup/result.json")
        result.dedup_damaged.append(f"{DEDUP_DIR}/removed/{rel}")
    if result.dedup_damaged:
        result.dedup_damaged.append(corpus.relative(corpus.dedup_result_path))


def _require_corpus(root: StorePath) -> None:
    if not CorpusDir(root).is_corpus():
        raise NotACorpus(f"{root} is not a corpus folder: it has neither {CORPUS_JSON} nor {PLAN_JSON}")


def quick_check(corpus_dir: str | Path | ObjectPath) -> list[UnitDamage]:
    """Finished units whose files are missing, have the wrong size, or whose records disagree: no token is read.

    Units without a ledger entry are left out (a build may be writing them now); :func:`verify` looks at those.
    """
    root = location.at(corpus_dir)
    _require_corpus(root)
    return _inspect(root, deep=False).damaged


# ---------------------------------------------------------------- verify and repair

@contextmanager
def _held(corpus: CorpusDir, required: bool) -> Iterator[bool]:
    """Hold the build lock, so no build writes while we read or repair; yields whether it is held.

    A running build raises CorpusBusy. A folder we may not write to (a read-only copy) cannot
    be locked: it is verified unlocked, and refused for a repair.
    """
    stack = ExitStack()
    try:
        stack.enter_context(corpus.exclusive())
        locked = True
    except OSError:  # not CorpusBusy, a RuntimeError: no lock file can be made here
        if required:
            raise
        locked = False
    with stack:
        yield locked


def verify(corpus_dir: str | Path | ObjectPath, repair: bool = False,
           progress: Callable[[int, int], None] | None = None) -> Verification:
    """Check every unit of a corpus folder (see the module docstring); with ``repair``, make the damaged ones pending.

    Holds the folder's build lock throughout: raises CorpusBusy while a build writes the folder.
    ``progress(done, total)`` is called after each finished unit is checked.
    """
    root = location.at(corpus_dir)
    _require_corpus(root)
    corpus = CorpusDir(root)
    with _held(corpus, required=repair) as locked:
        result = _inspect(root, deep=True, progress=progress)
        result.locked = locked
        if repair and not result.ok:
            _repair(corpus, result)
    return result


def _repair(corpus: CorpusDir, result: Verification) -> None:
    for rel in dict.fromkeys(result.dedup_damaged):
        if location.remove(corpus.root / rel):
            result.repaired.append(rel)
    for damage in result.damaged:
        if corpus.is_done(damage.source, damage.unit):
            removed = corpus.forget_unit(damage.source, damage.unit)
        else:
            removed = corpus.discard_unit_files(damage.source, damage.unit)
        result.repaired += [corpus.relative(p) for p in removed]
    corpus_json, plan, _ = _records(corpus.root)
    dump = (corpus_json.get("manifest") or {}).get("dump")
    if plan is not None and dump and corpus_json.get("tokenizer"):
        # corpus.json again from the ledger: it no longer lists the removed shards, and says the build is unfinished
        manifest = Manifest.model_validate(dump).model_copy(update={"path": corpus_json["manifest"].get("path")})
        corpus.write_index(corpus_index(manifest, corpus_json["tokenizer"], plan, plan_units(plan), corpus,
                                        "partial", corpus_json.get("started_at"), corpus_json.get("finished_at")))
    result.next_command = rebuild_command(corpus.root, corpus_json, plan)


def rebuild_command(root: StorePath, corpus_json: dict, plan: dict | None) -> str:
    """The `elm-corpus build` that resumes this folder (its plan fixes the units, so the same command redoes them)."""
    manifest = (corpus_json.get("manifest") or {}).get("path") or "MANIFEST"
    sample = corpus_json.get("sample", (plan or {}).get("sample"))
    return " ".join(["elm-corpus", "build", shlex.quote(str(manifest)), *(["--sample"] if sample else []),
                     "--out", shlex.quote(str(root))])
