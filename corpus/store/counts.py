"""What happened to every record of a work unit: one counts type for the unit, its sidecar and ledger entry,
corpus.json's totals and ``elm-corpus stats``.

For every unit, documents read = kept + dropped (by reason) + quarantined (by reason);
chunks split = kept + dropped (by reason). ``drop_details`` holds the finer reasons an
extra filter gives (``<filter>:<reason>``); ``tokens_dropped`` the tokens of encoded chunks
that a later rule dropped, by reason. A document deduplication removed is dropped as
``duplicate_exact`` or ``duplicate_near`` with all its tokens, and counted in ``duplicate_of``
(``duplicate_tokens_of``) under the source of the copy that was kept; one decontamination removed
(it shares a word n-gram with a task item) is dropped as ``contaminated`` with all its tokens.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields

DUPLICATE_EXACT, DUPLICATE_NEAR = "duplicate_exact", "duplicate_near"
DUPLICATE_REASONS = (DUPLICATE_EXACT, DUPLICATE_NEAR)  # drop whole documents, before they are split into chunks

_TALLIES = ("documents_read", "kept", "quarantined", "chunks_split", "chunks_kept", "tokens")
_BY_REASON = ("dropped", "quarantined_by_reason", "chunks_dropped", "drop_details", "tokens_dropped",
              "duplicate_of", "duplicate_tokens_of")


@dataclass
class UnitCounts:
    documents_read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    quarantined: int = 0
    quarantined_by_reason: Counter = field(default_factory=Counter)
    chunks_split: int = 0
    chunks_kept: int = 0
    chunks_dropped: Counter = field(default_factory=Counter)
    drop_details: Counter = field(default_factory=Counter)
    tokens: int = 0
    tokens_dropped: Counter = field(default_factory=Counter)  # tokens of encoded chunks dropped, by reason
    # documents (and their tokens) removed as duplicates, by the source of the copy kept: the cross-source overlap
    duplicate_of: Counter = field(default_factory=Counter)
    duplicate_tokens_of: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        """The keys a sidecar, a ledger entry and corpus.json's totals carry; reasons sorted."""
        return {f.name: dict(sorted(getattr(self, f.name).items())) if f.name in _BY_REASON
                else getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "UnitCounts":
        """Counts from a sidecar or ledger entry; keys an older build did not write count as zero."""
        return cls(**{k: d.get(k, 0) for k in _TALLIES}, **{k: Counter(d.get(k, {})) for k in _BY_REASON})

    def add(self, other: "UnitCounts") -> None:
        for name in _TALLIES:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in _BY_REASON:
            getattr(self, name).update(getattr(other, name))
