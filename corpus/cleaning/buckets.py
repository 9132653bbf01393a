"""The pairs of documents that share a key, found by sorting numpy rows: LSH buckets and exact-hash groups.

Each key of a document is one fixed-size row (:data:`ROW`): its ``scope`` (-1 across the corpus, or the source's
index when duplicates count only within a source), its ``band`` (:data:`EXACT` for the 128-bit hash of the
normalised text, or the LSH band's index), the key itself (``k1``, and ``k2`` for the hash's low half) and the
document's id. Ids sort like the documents they name (source, unit, position), so "first" means the copy kept.

Rows with equal ``(scope, band, k1, k2)`` form a group. Sorting puts every group in one run, and each run's pairs
come out of a few vectorised passes: 32 bytes per key instead of a Python tuple and list entry (about 150), and no
Python loop per key. Rows split by ``k1 % shards`` keep every group whole in one shard, so the pairs of the
shards together are the pairs of all the rows, whatever the number of shards.

A large bucket (a template repeated across thousands of pages) has m(m-1)/2 pairs. Only its first
:data:`LEADERS` members are paired with every other member: a bucket of up to ``LEADERS + 1`` gives all its
pairs, a larger one ``LEADERS`` pairs per member. A member near-identical to the first ones is found all the
same; one that shares the band with the bucket's later members only is left to the other bands, where it and
they meet in smaller buckets. (datatrove and text-dedup pair a bucket's members with its first alone.)
"""
from __future__ import annotations

import numpy as np

ROW = np.dtype([("scope", "<i4"), ("band", "<i4"), ("k1", "<u8"), ("k2", "<u8"), ("doc", "<i8")])
EXACT = -1  # the band of a row that holds the exact hash of a document's normalised text
ANY_SOURCE = -1  # the scope of a row when duplicates count across sources
LEADERS = 32
_NO_PAIRS = np.empty((0, 2), np.int64)


def document_ids(unit_index: int, positions: np.ndarray) -> np.ndarray:
    """Ids of a unit's documents: the unit's index in key order (source in manifest order, then unit id) in the
    high 32 bits, the record's position in the low 32, so ids sort as their documents do."""
    positions = np.asarray(positions, np.int64)
    if positions.size and positions.max() >= 1 << 32:
        raise ValueError(f"a unit of more than 2^32 records cannot be named by a 64-bit id (unit {unit_index})")
    return (np.int64(unit_index) << 32) | positions


def unit_and_position(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`document_ids`."""
    ids = np.asarray(ids, np.int64)
    return ids >> 32, ids & 0xFFFF_FFFF


def key_rows(docs: np.ndarray, exact: np.ndarray | None = None, bands: np.ndarray | None = None,
             scope: int = ANY_SOURCE) -> np.ndarray:
    """The rows of documents ``docs``: one per exact hash (``exact``: (n, 2) uint64, high and low halves) and one
    per band key (``bands``: (n, b) uint64)."""
    docs = np.asarray(docs, np.int64)
    parts = []
    if exact is not None:
        rows = np.zeros(len(docs), ROW)
        rows["band"], rows["k1"], rows["k2"], rows["doc"] = EXACT, exact[:, 0], exact[:, 1], docs
        parts.append(rows)
    if bands is not None:
        n, count = bands.shape
        rows = np.zeros(n * count, ROW)
        rows["band"] = np.tile(np.arange(count, dtype=np.int32), n)
        rows["k1"], rows["doc"] = bands.reshape(-1), np.repeat(docs, count)
        parts.append(rows)
    out = np.concatenate(parts) if parts else np.zeros(0, ROW)
    out["scope"] = scope
    return out


def by_shard(rows: np.ndarray, shards: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` reordered so that each shard's are contiguous, and the (shards + 1) offsets of the shards."""
    shard = (rows["k1"] % np.uint64(shards)).astype(np.int64)
    order = np.argsort(shard, kind="stable")
    offsets = np.searchsorted(shard[order], np.arange(shards + 1))
    return rows[order], offsets


def group_pairs(rows: np.ndarray, leaders: int = LEADERS) -> np.ndarray:
    """``(first id, second id)`` pairs, first < second, one per pair of documents in a group with a leader among
    them (see the module docstring); unique and sorted. A document's rows in one group count once."""
    if len(rows) < 2:
        return _NO_PAIRS
    # sorted by (scope, band, k1, k2, doc), one column at a time (lexsort is several times faster than sorting
    # the records whole): groups are runs, each in document order
    rows = rows[np.lexsort((rows["doc"], rows["k2"], rows["k1"], rows["band"], rows["scope"]))]
    same = np.ones(len(rows) - 1, bool)
    for name in ("scope", "band", "k1", "k2"):
        same &= rows[name][1:] == rows[name][:-1]
    repeated = same & (rows["doc"][1:] == rows["doc"][:-1])  # a document's key given twice counts once
    if repeated.any():
        keep = np.r_[True, ~repeated]
        rows, same = rows[keep], same[keep[1:]]
    starts = np.flatnonzero(np.r_[True, ~same])
    lengths = np.diff(np.r_[starts, len(rows)])
    docs = rows["doc"]
    found = []
    for rank in range(min(leaders, int(lengths.max()) - 1)):
        follow = lengths - rank - 1  # members after the leader of this rank, in each group
        has = follow > 0
        counts, leader = follow[has], starts[has] + rank
        total = int(counts.sum())
        # the members of each group after its leader: leader + 1, leader + 2, ... as one flat index
        ends = np.cumsum(counts)
        members = np.arange(total) - np.repeat(ends - counts, counts) + np.repeat(leader + 1, counts)
        found.append(np.stack([np.repeat(docs[leader], counts), docs[members]], axis=1))
    if not found:
        return _NO_PAIRS  # every group has one member
    pairs = np.concatenate(found)
    return np.unique(pairs, axis=0)
