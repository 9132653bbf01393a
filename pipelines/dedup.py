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
2. Search, on Ray in two steps. One task per unit reads its file once and turns its keys (the exact hash, and
   the band keys with ``near``) into fixed-size rows ordered by shard (``key mod shards``;
   corpus/cleaning/buckets.py), left in Ray's object store. One task per shard then takes its slice of every
   unit's rows, so no task holds every signature and no file is read once per shard. Sorting the rows puts
   equal keys together: equal hashes are exact duplicates; equal band keys are candidates, confirmed on the
   full signatures (at least ``threshold`` of the values agree; only the candidates' rows of a signatures file
   are read) before they count. A bucket falls wholly in one shard, so the pairs found do not depend on the
   number of shards or workers.
3. Resolution in the driver, from pairs only (arrays of document ids, :func:`corpus.cleaning.buckets.document_ids`):
   an exact duplicate goes as a copy of the smallest id with its text; the rest are joined by near pairs
   (connected components) and each cluster keeps its smallest id. ``scope: source`` keeps only pairs within a
   source.
   -> ``dedup/removed/<source>/<unit>.json`` for each unit that loses documents, then
   ``dedup/result.json`` last: its presence says the search is done (a killed search is redone
   whole, and writes the same files).
The token pass (pipelines/unit.py) then skips the removed records and counts them.
"""
from __future__ import annotations

import hashlib
import io
import os
import resource
import struct
import time
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import xxhash

from corpus.cleaning.bands import bands_for
from corpus.cleaning.buckets import (ANY_SOURCE, EXACT as EXACT_BAND, ROW, by_shard, document_ids, group_pairs,
                                     key_rows, unit_and_position)
from corpus.cleaning.clusters import kept_copies
from corpus.cleaning.minhash import SCHEME, agreeing, band_keys, signatures
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
_SIGN_BATCH = 256  # records signed per rensa call
# Signed documents per search shard: a shard holds about 17 rows of 32 bytes per document (16 bands and the exact
# hash), 270 MB at 500,000 documents, and sorting them takes about as much again.
DOCS_PER_SHARD = 500_000
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
    units: tuple[tuple[str, str], ...] = ()  # the search's: (source, unit) in key order, named by their index

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

def partition_unit(job: DedupJob, task: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """The Ray task that opens pass 2 for one unit (``(index in key order, shards)``): its keys as rows
    (:mod:`corpus.cleaning.buckets`) ordered by shard, kept in the object store for the shard tasks, which take
    their slice of it; and a small record of the shards' offsets in it and the file's sha256 (what `verify`
    checks). Each file is read once, whatever the number of shards."""
    index, shards = task
    source, unit = job.units[index]
    s = job.sources.index(source)
    hashes: dict[str, str] = {}
    arrays = ("positions", "exact") + (("band_keys",) if job.dedup.near is not None else ())
    data = _load(CorpusDir(job.out_dir), source, unit, arrays, hashes)
    rows = key_rows(document_ids(index, data["positions"]), data["exact"] if job.dedup.exact else None,
                    data.get("band_keys"), s if job.dedup.scope == "source" else ANY_SOURCE)
    rows, offsets = by_shard(rows, shards)
    return rows, {"offsets": offsets.tolist(), "sha256": hashes, "peak_rss_mb": _peak_rss_mb()}


def find_in_shard(job: DedupJob, task: tuple[int, list]) -> dict:
    """The Ray task of pass 2 for shard ``shard``: from ``parts``, ``(rows ref, start, end)`` per unit with keys in
    the shard, its exact pairs and confirmed near pairs, each an (n, 2) array of ``(kept id, removed id)``
    document ids in order."""
    import ray
    shard, parts = task
    objects = ray.get([ref for ref, _, _ in parts])  # zero-copy views of the object store on the same node
    rows = np.concatenate([rows[start:end] for rows, (_, start, end) in zip(objects, parts)]) if parts \
        else np.zeros(0, ROW)
    exact = rows["band"] == EXACT_BAND
    exact_pairs = group_pairs(rows[exact], leaders=1)  # equal texts: every copy against the first is enough
    near_pairs = group_pairs(rows[~exact]) if job.dedup.near is not None else np.empty((0, 2), np.int64)
    if len(near_pairs):
        near_pairs = near_pairs[_agree(CorpusDir(job.out_dir), job, near_pairs)]
    return {"exact": exact_pairs, "near": near_pairs, "peak_rss_mb": _peak_rss_mb()}


def _agree(corpus: CorpusDir, job: DedupJob, candidates: np.ndarray) -> np.ndarray:
    """Which candidates' full signatures agree on at least ``threshold`` of their values: one band in common is
    weak evidence, and unconfirmed pairs chained into clusters would remove documents that are not alike.
    Only the candidates' rows of each signatures file are read (:func:`_signature_rows`)."""
    docs, inverse = np.unique(candidates, return_inverse=True)
    units, positions = unit_and_position(docs)
    signature = np.empty((len(docs), job.dedup.near.permutations), np.uint32)
    for index in np.unique(units).tolist():
        mine = np.flatnonzero(units == index)
        source, unit = job.units[index]
        signature[mine] = _signature_rows(corpus.signatures_path(source, unit), positions[mine])
    pairs = inverse.reshape(-1, 2)
    return agreeing(signature[pairs[:, 0]], signature[pairs[:, 1]], job.dedup.near.threshold)


def _signature_rows(path: StorePath, positions: np.ndarray) -> np.ndarray:
    """The signatures of the records at ``positions`` (ascending) of a unit's file, read row by row.

    A shard confirms candidates from most units, and a unit's signatures are most of its file (512 of about 660
    bytes a document): reading them whole in every shard would read the corpus's signatures once per shard.
    np.savez stores its arrays uncompressed, so a row sits at a fixed offset in the zip: the member's local
    header, then the .npy header, then the rows. (Python 3.11's zip members seek by reading up to the offset.)
    """
    with location.open_input(path) as f:
        with zipfile.ZipFile(f) as archive:
            with archive.open("positions.npy") as member:
                stored = np.lib.format.read_array(member)
            info = archive.getinfo("signatures.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"{path}: signatures are compressed; only np.savez's stored members are read by row")
        f.seek(info.header_offset)
        header = f.read(30)
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        header_of = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = header_of(f)
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: unexpected signatures array {shape} (fortran order {fortran})")
        start, width = f.tell(), shape[1] * dtype.itemsize
        rows = np.searchsorted(stored, positions)
        if not np.array_equal(stored[np.minimum(rows, len(stored) - 1)], positions):
            raise ValueError(f"{path}: some candidate positions have no signature")
        out = np.empty((len(positions), shape[1]), dtype)
        for i, row in enumerate(rows.tolist()):
            f.seek(start + row * width)
            out[i] = np.frombuffer(f.read(width), dtype)
    return out


# ---------------------------------------------------------------- pass 3: resolution

def resolve(exact_pairs: np.ndarray, near_pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(removed, reason, kept)`` arrays over the removed documents' ids, ascending: ``reason`` is 0 for an exact
    copy and 1 for a near one, ``kept`` the id of the copy kept. The same for the same pairs in any order."""
    exact_removed, exact_kept = kept_copies(exact_pairs)
    near_pairs = np.asarray(near_pairs, np.int64).reshape(-1, 2)
    # an exact copy stands for its kept twin in the near pairs, so a near cluster keeps one of the kept texts
    at = np.searchsorted(exact_removed, near_pairs)
    found = at < len(exact_removed)
    found[found] = exact_removed[at[found]] == near_pairs[found]
    standing = np.where(found, exact_kept[np.minimum(at, max(len(exact_kept) - 1, 0))], near_pairs) \
        if len(exact_removed) else near_pairs
    near_removed, near_kept = kept_copies(standing[standing[:, 0] != standing[:, 1]])
    removed = np.concatenate([exact_removed, near_removed])
    order = np.argsort(removed, kind="stable")
    reason = np.concatenate([np.zeros(len(exact_removed), np.int8), np.ones(len(near_removed), np.int8)])
    return removed[order], reason[order], np.concatenate([exact_kept, near_kept])[order]


def removal_files(resolved: tuple[np.ndarray, np.ndarray, np.ndarray], units: tuple[tuple[str, str], ...]
                  ) -> dict[tuple[str, str], dict]:
    """Per unit that loses documents, its removal record: ``[position, reason, source of the kept copy]`` rows.
    ``units``: the ``(source, unit)`` of each unit index of the ids."""
    removed, reason, kept = resolved
    unit_of, position_of = unit_and_position(removed)
    kept_unit, _ = unit_and_position(kept)
    out: dict[tuple[str, str], list] = {}
    for index, position, why, other in zip(unit_of.tolist(), position_of.tolist(), reason.tolist(),
                                           kept_unit.tolist()):
        out.setdefault(units[index], []).append([position, (EXACT, NEAR)[why], units[other][0]])
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
    job = replace(job, units=tuple(sorted(((u.source, u.unit_id) for u in units),
                                          key=lambda k: (order[k[0]], k[1]))))
    signed_at, shards, search_peak = time.perf_counter(), search_shards(corpus, workers), 0.0
    # each unit's keys are read once, split by shard and left in Ray's object store (spilled to disk when it
    # fills); shard s then takes slice s of every unit's rows. Ray moves each object to a node once.
    parts: list[list] = [[] for _ in range(shards)]
    signature_hashes: dict[str, str] = {}
    for index, (rows_ref, summary_ref) in in_flight(partition_unit, job, range(len(job.units)),
                                                    lambda i: (i, shards), workers, env=store_env or None,
                                                    returns=2):
        summary = ray.get(summary_ref)
        signature_hashes.update(summary["sha256"])
        search_peak = max(search_peak, summary["peak_rss_mb"])
        offsets = summary["offsets"]
        for shard in range(shards):
            if offsets[shard + 1] > offsets[shard]:
                parts[shard].append((rows_ref, offsets[shard], offsets[shard + 1]))
    exact_pairs, near_pairs = [], []
    for _, ref in in_flight(find_in_shard, job, range(shards), lambda s: (s, parts[s]), workers,
                            env=store_env or None):
        found = ray.get(ref)
        exact_pairs.append(found["exact"])
        near_pairs.append(found["near"])
        search_peak = max(search_peak, found["peak_rss_mb"])
    parts.clear()  # the rows leave the object store once no task holds them
    removed = resolve(np.concatenate(exact_pairs), np.concatenate(near_pairs))
    removal_hashes = {}
    for (source, unit), record in removal_files(removed, job.units).items():
        location.write_json(corpus.removed_path(source, unit), record)
        removal_hashes[f"{source}/{unit}"] = hashlib.sha256(json_bytes(record)).hexdigest()
    reasons = Counter((EXACT, NEAR)[why] for why in removed[1].tolist())
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
