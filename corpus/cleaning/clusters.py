"""Clusters of near-duplicate documents from pairs, and which document of each cluster is kept.

Documents are named by ids that sort like the documents (:func:`corpus.cleaning.buckets.document_ids`: source in
manifest order, then unit, then position), so "first" means the copy in the source listed first, then the earliest
unit and position. The two documents of every pair are joined; in each cluster the smallest id is kept and every
other document is removed as a duplicate of it. That depends on the clusters alone, so the result is the same
whatever the order of the pairs, and whichever worker found them.

The clusters are the connected components of the graph whose edges are the pairs, found by scipy's
``connected_components`` on a sparse matrix: arrays in and out, no Python object per document.

The pairs should be verified ones (:func:`corpus.cleaning.minhash.verified_pairs`): joining is transitive, so one
false candidate merges two whole clusters.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Hashable, TypeVar

import numpy as np

Key = TypeVar("Key", bound=Hashable)


def kept_copies(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(removed, kept)``: each id to remove, ascending, and the id kept in its cluster (the cluster's smallest)."""
    # imported here: only the driver resolves clusters, and scipy.sparse adds about 24 MB to each Ray worker
    # that imports the build's dedup module to sign or search
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    if not len(pairs):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    ids, edges = np.unique(pairs, return_inverse=True)  # node i is the i-th smallest id
    edges = edges.reshape(-1, 2)
    graph = coo_array((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(len(ids), len(ids)))
    _, label = connected_components(graph, directed=False)
    first = np.full(label.max() + 1, len(ids))
    np.minimum.at(first, label, np.arange(len(ids)))  # each cluster's smallest node, hence its smallest id
    removed = np.flatnonzero(first[label] != np.arange(len(ids)))
    return ids[removed], ids[first[label[removed]]]


def duplicate_of(pairs: Iterable[tuple[Key, Key]]) -> dict[Key, Key]:
    """:func:`kept_copies` for any sortable keys: each key to remove, mapped to the key kept in its cluster."""
    pairs = list(pairs)
    keys = sorted({k for pair in pairs for k in pair})
    rank = {k: i for i, k in enumerate(keys)}
    removed, kept = kept_copies(np.array([(rank[a], rank[b]) for a, b in pairs], np.int64))
    return {keys[r]: keys[k] for r, k in zip(removed.tolist(), kept.tolist())}


def clusters(pairs: Iterable[tuple[Key, Key]]) -> list[list[Key]]:
    """The clusters of two or more documents, each sorted (the kept document first), in order of their kept document."""
    members: dict[Key, list[Key]] = {}
    for removed, kept in duplicate_of(pairs).items():
        members.setdefault(kept, [kept]).append(removed)
    return [sorted(group) for _, group in sorted(members.items())]
