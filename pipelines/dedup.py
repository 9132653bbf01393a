"""Deduplication in the build: which documents the token pass leaves out, found on Ray before it runs.

A document is named by its key ``(source index in the manifest, unit id, position)``, where the
position counts the records the unit's reader yields (bad records included), so the signature pass
and the token pass, reading the same slice, agree on it. Of a set of duplicates the smallest key is
kept: the copy in the source listed first, then in the earliest unit, then the earliest position.

1. Signatures, one Ray task per work unit (resumable: each unit's file is written whole): every
   record with at least one word gets the 128-bit hash of its normalised words (exact) and, with
   ``near``, its MinHash signature and band keys (corpus/cleaning/minhash.py). The text is the
   record's as the token pass reads it (NFC as the manifest says); filters come later, per chunk.
   -> ``dedup/signatures/<source>/<unit>.npz``
2. Search, one Ray task per shard: shard s reads every unit's file and keeps only the exact hashes
   and band keys that fall in it (value mod shards), so no task holds every signature. Equal
   hashes are exact duplicates; equal band keys are candidates, confirmed on the full signatures
   (at least ``threshold`` of the values agree) before they count. A bucket falls wholly in one
   shard, so the pairs found do not depend on the number of shards or workers.
3. Resolution in the driver, from pairs only: an exact duplicate goes as a copy of the smallest key
   with its text; the rest are joined by near pairs (union-find) and each cluster keeps its
   smallest key. ``scope: source`` keeps only pairs within a source.
   -> ``dedup/removed/<source>/<unit>.json`` for each unit that loses documents, then
   ``dedup/result.json`` last: its presence says the search is done (a killed search is redone
   whole, and writes the same files).
The token pass (pipelines/unit.py) then skips the removed records and counts them.
"""
from __future__ import annotations

import hashlib
import io
import resource
import time
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import xxhash

from corpus.cleaning.bands import bands_for
from corpus.cleaning.clusters import duplicate_of
from corpus.cleaning.minhash import SCHEME, band_keys, bucket_pairs, signatures, similarity
from corpus.cleaning.words import normalised
from corpus.manifest import Dedup, Manifest
from corpus.store import location
from corpus.store.counts import DUPLICATE_EXACT, DUPLICATE_NEAR
from corpus.store.files import json_bytes
from corpus.store.layout import DEDUP_DIR, CorpusDir
from corpus.store.location import StorePath
from corpus.text.readers import BadRecord, read_slice
from corpus.text.rules import CoreNetRules
from pipelines.plan import WorkUnit

EXACT, NEAR = DUPLICATE_EXACT, DUPLICATE_NEAR  # the drop reasons the token pass counts
Key = tuple[int, str, int]  # (source index, unit id, position)
_SIGN_BATCH = 256  # records signed per rensa call
# Signed documents per search shard: a shard holds about 17 keys per document (16 bands and the exact hash) in
# Python structures of about 150 bytes each, so 200,000 documents keep a search task near half a gigabyte.
DOCS_PER_SHARD = 200_000
# What a signed document adds to its unit's file at the defaults (8 position, 16 exact, 512 signature, 128 band
# keys): an estimate, to size the shards from the files' sizes alone.
_BYTES_PER_DOCUMENT = 664


class DedupFailed(RuntimeError):
    """Some unit could not be signed: removals are decided over every unit, so no unit is tokenized yet."""


@dataclass(frozen=True)
class DedupJob:
    """What a dedup task needs: the settings, the sources in manifest order, the text rules, where the corpus is."""
    dedup: Dedup
    sources: tuple[str, ...]
    text_fields: tuple[str, ...]
    rules: CoreNetRules
    out_dir: str

    @classmethod
    def of(cls, manifest: Manifest, out_dir: str) -> "DedupJob":
        return cls(manifest.dedup, tuple(s.name for s in manifest.sources),
                   tuple(s.text_field for s in manifest.sources), CoreNetRules(manifest.text), out_dir)


# ---------------------------------------------------------------- pass 1: signatures per unit

def sign_unit(job: DedupJob, unit_dict: dict) -> dict:
    """The Ray task of pass 1: write the unit's signatures file; return a small summary."""
    os.environ.setdefault("RAYON_NUM_THREADS", "1")  # a one-CPU task: rensa must not spread over every core
    unit = WorkUnit.from_dict(unit_dict)
    near = job.dedup.near
    positions, exact, texts, signed = [], [], [], []
    for position, record in enumerate(read_slice(unit.slice, job.text_fields[job.sources.index(unit.source)])):
        if isinstance(record, BadRecord):
            continue  # quarantined by the token pass; never a duplicate
        text = normalised(job.rules.normalize(record.text))
        if not text:
            continue  # no words: nothing to compare (CoreNet's rules drop it anyway)
        digest = xxhash.xxh3_128_intdigest(text.encode())
        positions.append(position)
        exact.append((digest >> 64, digest & 0xFFFF_FFFF_FFFF_FFFF))
        if near is not None:
            texts.append(text)
            if len(texts) == _SIGN_BATCH:  # signed as they come: a unit's texts are never held all at once
                signed.append(signatures(texts, near.permutations, near.ngram))
                texts = []
    arrays = {"positions": np.asarray(positions, np.int64), "exact": np.asarray(exact, np.uint64).reshape(-1, 2)}
    if near is not None:
        sigs = np.concatenate(signed + [signatures(texts, near.permutations, near.ngram)])
        arrays["signatures"] = sigs
        arrays["band_keys"] = band_keys(sigs, bands_for(near.threshold, near.permutations)).reshape(len(sigs), -1)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    location.write_bytes(CorpusDir(job.out_dir).signatures_path(unit.source, unit.unit_id), buffer.getvalue())
    return {"source": unit.source, "unit": unit.unit_id, "documents": len(positions), "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """The peak resident memory of this (worker) process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load(corpus: CorpusDir, source: str, unit: str, arrays: tuple[str, ...],
          hashes: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """``arrays`` of a unit's signatures file. Only those are read (an .npz is a zip: each array is a member that
    a seekable file yields alone, locally or by range requests), unless ``hashes`` asks for the file's sha256 (by
    ``source/unit``), which takes it whole."""
    path = corpus.signatures_path(source, unit)
    if hashes is not None:
        data = location.read_bytes(path)
        hashes[f"{source}/{unit}"] = hashlib.sha256(data).hexdigest()
        opened = io.BytesIO(data)
    else:
        opened = location.open_input(path)
    with opened, np.load(opened) as held:
        return {k: held[k] for k in arrays}


# ---------------------------------------------------------------- pass 2: the search, sharded

def find_in_shard(job: DedupJob, task: tuple[int, int, list[tuple[str, str]]]) -> dict:
    """The Ray task of pass 2: shard ``shard`` of ``shards``, over ``units`` in key order; its exact pairs and
    confirmed near pairs, each ``(smaller key, larger key)``."""
    shard, shards, units = task
    corpus = CorpusDir(job.out_dir)
    by_source = job.dedup.scope == "source"
    exact_seen: dict[tuple, Key] = {}
    exact_pairs: list[tuple[Key, Key]] = []
    buckets: dict[tuple[int, int], list[Key]] = {}
    hashes: dict[str, str] | None = {} if shard == 0 else None  # one shard records what every file held
    arrays = ("positions", "exact") + (("band_keys",) if job.dedup.near is not None else ())
    for source, unit in units:  # in key order, so the first key seen in a bucket is its smallest
        s = job.sources.index(source)
        data = _load(corpus, source, unit, arrays, hashes)
        positions = data["positions"].tolist()
        exact = data["exact"]
        if job.dedup.exact:
            for i in np.flatnonzero(exact[:, 1] % shards == shard).tolist():
                digest = (s if by_source else -1, int(exact[i, 0]), int(exact[i, 1]))
                key = (s, unit, positions[i])
                if digest in exact_seen:
                    exact_pairs.append((exact_seen[digest], key))
                else:
                    exact_seen[digest] = key
        if job.dedup.near is not None:
            keys = data["band_keys"]
            for i, band in zip(*np.nonzero(keys % shards == shard)):
                bucket = (s if by_source else -1, int(band), int(keys[i, band]))
                buckets.setdefault(bucket, []).append((s, unit, positions[i]))
    near_pairs: list[tuple[Key, Key]] = []
    if job.dedup.near is not None:
        near_pairs = _confirmed(corpus, job, bucket_pairs(buckets.values()))
    return {"exact": exact_pairs, "near": near_pairs, "sha256": hashes, "peak_rss_mb": _peak_rss_mb()}


def _confirmed(corpus: CorpusDir, job: DedupJob, candidates: set[tuple[Key, Key]]) -> list[tuple[Key, Key]]:
    """The candidates whose full signatures agree on at least ``threshold`` of their values: one band in common
    is weak evidence, and unconfirmed pairs chained by union-find would remove documents that are not alike."""
    wanted: dict[tuple[str, str], set[int]] = {}
    for pair in candidates:
        for s, unit, position in pair:
            wanted.setdefault((job.sources[s], unit), set()).add(position)
    signature_of: dict[Key, np.ndarray] = {}
    for (source, unit), needed in sorted(wanted.items()):
        data = _load(corpus, source, unit, ("positions", "signatures"))
        s = job.sources.index(source)
        for i, position in enumerate(data["positions"].tolist()):
            if position in needed:
                signature_of[(s, unit, position)] = data["signatures"][i]
    threshold = job.dedup.near.threshold
    return sorted(p for p in candidates if similarity(signature_of[p[0]], signature_of[p[1]]) >= threshold)


# ---------------------------------------------------------------- pass 3: resolution

def resolve(exact_pairs: Iterable[tuple[Key, Key]], near_pairs: Iterable[tuple[Key, Key]]
            ) -> dict[Key, tuple[str, Key]]:
    """``removed key -> (reason, key of the copy kept)``; the same for the same pairs in any order."""
    removed = {key: (EXACT, kept) for key, kept in duplicate_of(exact_pairs).items()}

    def standing_for(key: Key) -> Key:  # an exact copy stands for its kept twin
        return removed[key][1] if key in removed else key
    joined = ((standing_for(a), standing_for(b)) for a, b in near_pairs)
    removed.update((key, (NEAR, kept)) for key, kept in duplicate_of((a, b) for a, b in joined if a != b).items())
    return removed


def removal_files(removed: dict[Key, tuple[str, Key]], sources: tuple[str, ...]) -> dict[tuple[str, str], dict]:
    """Per unit that loses documents, its removal record: ``[position, reason, source of the kept copy]`` rows."""
    out: dict[tuple[str, str], list] = {}
    for (s, unit, position), (reason, (kept_s, _, _)) in sorted(removed.items()):
        out.setdefault((sources[s], unit), []).append([position, reason, sources[kept_s]])
    return {key: {"removed": rows} for key, rows in out.items()}


def read_removals(corpus: CorpusDir, source: str, unit: str) -> dict[int, tuple[str, str]]:
    """``position -> (reason, source of the kept copy)`` of a unit's removed records (none when it has no file)."""
    record = location.read_json(corpus.removed_path(source, unit))
    return {} if record is None else {int(p): (reason, kept) for p, reason, kept in record["removed"]}


def dedup_done(corpus: CorpusDir) -> dict | None:
    return location.read_json(corpus.dedup_result_path)


class NoRemovals(ValueError):
    """A live stream of a deduplicating manifest finds no finished deduplication of its units."""


def live_removals(manifest: Manifest, fingerprint: str, folder: StorePath, units: Iterable[WorkUnit]) -> str:
    """The folder whose removals a live stream of ``manifest`` applies: where `elm-corpus dedup` searched the same
    units (same fingerprint, same slices), so streamed units leave out what the built corpus leaves out."""
    corpus = CorpusDir(folder)
    plan = corpus.read_plan()
    command = f"elm-corpus dedup {manifest.path or 'MANIFEST'}"
    if plan is None or dedup_done(corpus) is None:
        raise NoRemovals(f"manifest {manifest.name} removes duplicates, which a live stream reads from a finished "
                         f"deduplication in {folder}; run '{command}' (with --sample for a sample stream) first")
    if plan["fingerprint"] != fingerprint:
        raise NoRemovals(f"{folder} was deduplicated for another version of manifest {manifest.name}; run "
                         f"'{command} --force' to search again")
    planned = {(u["source"], u["unit"]): u for u in plan["units"]}
    for unit in units:
        if planned.get((unit.source, unit.unit_id)) != unit.to_dict():
            raise NoRemovals(f"{folder} was deduplicated with other work units than the stream's (its unit "
                             f"{unit.key} differs): give --stream-unit-bytes {plan['unit_bytes']}")
    return str(folder)


def search_shards(corpus: CorpusDir, workers: int) -> int:
    """How many shards the search is cut into: one per worker, or more when the corpus is large, so that a shard
    holds the keys of about :data:`DOCS_PER_SHARD` documents whatever the corpus's size. The removals are the
    same for any number (a bucket falls wholly in one shard), so the count is free to follow the size. The
    documents are counted from the signature files' sizes (one listing), not read."""
    sizes = location.files_under(corpus.root / DEDUP_DIR / "signatures")
    documents = sum(sizes.values()) // _BYTES_PER_DOCUMENT
    return max(1, workers, -(-documents // DOCS_PER_SHARD))


def run_dedup(manifest: Manifest, corpus: CorpusDir, units: list[WorkUnit], workers: int, store_env: dict,
              progress=None, measures: dict | None = None) -> dict:
    """Passes 1 to 3 for the plan's ``units`` (Ray already started); returns ``dedup/result.json``'s record.

    ``measures`` (when given) receives what this run took: seconds and the peak memory of the workers per pass,
    and the shards of the search (none of it goes into the corpus, whose files must not depend on the run).

    Raises :class:`DedupFailed` when a unit could not be signed (after every other unit is): removals must be
    decided over every unit, and a unit tokenized before a rerun could sign the rest would keep its duplicates.
    """
    from pipelines.runner import in_flight
    import ray
    done = dedup_done(corpus)
    if done is not None:
        return done
    job = DedupJob.of(manifest, str(corpus.root))
    signed = corpus.signed_units()
    todo = [u for u in units if (u.source, u.unit_id) not in signed]
    failures, sign_peak, started = [], 0.0, time.perf_counter()
    for unit, ref in in_flight(sign_unit, job, todo, WorkUnit.to_dict, workers, env=store_env or None):
        try:
            sign_peak = max(sign_peak, ray.get(ref)["peak_rss_mb"])
        except Exception as e:  # noqa: BLE001 - a unit's own error: reported with the rest, after the others finish
            failures.append(f"{unit.key}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        if progress is not None:
            progress()
    if failures:
        raise DedupFailed(f"deduplication could not read {len(failures)} unit(s); fix them and rerun the same "
                           f"build (signed units are kept): " + "; ".join(failures[:5]))
    order = {name: i for i, name in enumerate(job.sources)}
    in_key_order = sorted(((u.source, u.unit_id) for u in units), key=lambda k: (order[k[0]], k[1]))
    signed_at, shards, search_peak = time.perf_counter(), search_shards(corpus, workers), 0.0
    exact_pairs, near_pairs, signature_hashes = [], [], {}
    for _, ref in in_flight(find_in_shard, job, range(shards), lambda s: (s, shards, in_key_order), workers,
                            env=store_env or None):
        found = ray.get(ref)
        exact_pairs += found["exact"]
        near_pairs += found["near"]
        signature_hashes.update(found["sha256"] or {})
        search_peak = max(search_peak, found["peak_rss_mb"])
    removed = resolve(exact_pairs, near_pairs)
    removal_hashes = {}
    for (source, unit), record in removal_files(removed, job.sources).items():
        location.write_json(corpus.removed_path(source, unit), record)
        removal_hashes[f"{source}/{unit}"] = hashlib.sha256(json_bytes(record)).hexdigest()
    reasons = Counter(reason for reason, _ in removed.values())
    # No time in it: a killed search redone writes the same bytes. The hashes are what `elm-corpus verify` checks.
    result = {"settings": manifest.dedup.model_dump(mode="json"), "scheme": SCHEME, "units": len(units),
              "removed": dict(sorted(reasons.items())), "signatures_sha256": dict(sorted(signature_hashes.items())),
              "removals_sha256": dict(sorted(removal_hashes.items()))}
    location.write_json(corpus.dedup_result_path, result)
    if measures is not None:
        measures.update(units_signed=len(todo), sign_seconds=round(signed_at - started, 2),
                        sign_peak_rss_mb=round(sign_peak, 1), shards=shards,
                        search_seconds=round(time.perf_counter() - signed_at, 2),
                        search_peak_rss_mb=round(search_peak, 1))
    return result
