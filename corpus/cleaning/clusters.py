"""Clusters of near-duplicate documents from pairs, and which document of each cluster is kept.

Documents are named by sortable keys, ``(source order index, unit id, position)`` in the build, so
"first" means the source listed first in the manifest, then the earliest unit, then the earliest
position. Union-find joins the two documents of every pair; in each cluster the smallest key is
kept and every other document is removed as a duplicate of it. The root of every set is always its
smallest key, so the clusters, the kept documents and the mapping are the same whatever the order
of the pairs, and whichever worker found them.

The pairs should be verified ones (:func:`corpus.cleaning.minhash.verified_pairs`): union-find is
transitive, so one false candidate merges two whole clusters.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Hashable, TypeVar

Key = TypeVar("Key", bound=Hashable)


class UnionFind:
    """Disjoint sets of keys whose root is always the set's smallest key."""

    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, key: Key) -> Key:
        parent = self.parent
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]  # path halving: later finds take fewer steps
            key = parent[key]
        return key

    def union(self, a: Key, b: Key) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the larger root goes under the smaller: the root stays each set's smallest key
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo


def duplicate_of(pairs: Iterable[tuple[Key, Key]]) -> dict[Key, Key]:
    """Each document to remove, mapped to the document kept in its cluster (the cluster's smallest key)."""
    sets = UnionFind()
    for a, b in pairs:
        sets.union(a, b)
    return {key: root for key in sorted(sets.parent) if (root := sets.find(key)) != key}


def clusters(pairs: Iterable[tuple[Key, Key]]) -> list[list[Key]]:
    """The clusters of two or more documents, each sorted (the kept document first), in order of their kept document."""
    members: dict[Key, list[Key]] = {}
    for removed, kept in duplicate_of(pairs).items():
        members.setdefault(kept, [kept]).append(removed)
    return [sorted(group) for _, group in sorted(members.items())]
