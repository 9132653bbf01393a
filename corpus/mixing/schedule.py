"""The mixture schedule: which source the next training sequence comes from.

Sequences are dealt one at a time to the source that is most urgently owed tokens,
measured in tokens rather than examples (in pack mode every sequence carries the same
number of tokens; in corenet mode a sequence carries one truncated chunk). The rule is
the quota method (Balinski and Young) generalised to items of unequal size:

- a source is *eligible* while its target after the next sequence would still exceed
  what it has received, ``w_s * (T + c_s) > t_s``;
- among eligible sources, the one whose next sequence falls due first,
  ``(t_s + c_s) / w_s`` smallest, wins; ties go to the earlier source.

With equal sizes this keeps every source's token count strictly within one sequence of
``w_s * T`` after every prefix (the plain largest-deficit rule can lag by more than one
sequence with many skewed weights); the tests check the same bound for unequal sizes.

The schedule is a pure function of its counters and the sizes of the items offered, so
it can be replayed, snapshotted and resumed exactly. When weights change, a new
*segment* starts: the segment's counters restart at zero while the per-source item
counters (where each source's data stream stands) carry on, so no data is replayed.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class TokenMixture:
    names: list[str]
    raw_weights: list[float]      # segment targets as given; normalised once, the same way on every resume
    items: list[int] = field(default_factory=list)          # sequences served per source, all segments
    tokens: list[int] = field(default_factory=list)         # tokens served per source, all segments
    segment_tokens: list[int] = field(default_factory=list)
    segment_start: int = 0        # global sequence index at which these weights took effect
    sequences: int = 0            # global sequences dealt so far

    def __post_init__(self):
        n = len(self.names)
        given = dict(zip(self.names, self.raw_weights))
        if len(self.raw_weights) != n:
            raise ValueError(f"{n} sources but {len(self.raw_weights)} weights")
        if any(not w >= 0 for w in self.raw_weights):
            raise ValueError(f"mixture weights must be >= 0, got {given}")
        total = float(sum(self.raw_weights))
        if total <= 0:
            raise ValueError(f"mixture weights sum to zero: {given}")
        self.weights = [float(w) / total for w in self.raw_weights]
        for name in ("items", "tokens", "segment_tokens"):
            if not getattr(self, name):
                setattr(self, name, [0] * n)
        self._active = [i for i, w in enumerate(self.weights) if w > 0]
        self.segment_total = sum(self.segment_tokens)

    def pick(self, costs: list[int]) -> int:
        """The source of the next sequence; ``costs[s]`` is the token count of source s's next sequence."""
        total, weights, have = self.segment_total, self.weights, self.segment_tokens
        best, best_due = -1, math.inf
        for s in self._active:
            w, h, c = weights[s], have[s], costs[s]
            if w * (total + c) > h:
                due = (h + c) / w
                if due < best_due:
                    best, best_due = s, due
        if best < 0:
            # Unreachable in exact arithmetic (the eligibility margins sum to a positive number);
            # float rounding at a boundary falls back to the largest deficit.
            best = max(self._active, key=lambda s: self.weights[s] * total - self.segment_tokens[s])
        return best

    def commit(self, s: int, cost: int) -> None:
        self.items[s] += 1
        self.tokens[s] += cost
        self.segment_tokens[s] += cost
        self.segment_total += cost
        self.sequences += 1

    def reweighted(self, weights: list[float]) -> "TokenMixture":
        """The same stream positions under new targets, starting a fresh segment here."""
        return TokenMixture(self.names, list(weights), list(self.items), list(self.tokens),
                            [0] * len(self.names), self.sequences, self.sequences)

    def copy(self) -> "TokenMixture":
        return TokenMixture(self.names, list(self.raw_weights), list(self.items), list(self.tokens),
                            list(self.segment_tokens), self.segment_start, self.sequences)

    def state(self) -> dict:
        return {"weights": dict(zip(self.names, self.raw_weights)),
                "items": dict(zip(self.names, self.items)),
                "tokens": dict(zip(self.names, self.tokens)),
                "segment_tokens": dict(zip(self.names, self.segment_tokens)),
                "segment_start": self.segment_start, "sequences": self.sequences}

    @classmethod
    def from_state(cls, names: list[str], state: dict) -> "TokenMixture":
        def column(key):
            return [state[key].get(n, 0) for n in names]
        return cls(names, [float(x) for x in column("weights")], column("items"), column("tokens"),
                   column("segment_tokens"), int(state["segment_start"]), int(state["sequences"]))


# ---------------------------------------------------------------- dealing sequences to sources and consumers

def next_costs(mix: TokenMixture, readers: list) -> list[int]:
    """Token cost of each source's next sequence (0 for sources that are never dealt)."""
    return [r.cost(mix.items[s]) if r is not None and mix.weights[s] > 0 else 0 for s, r in enumerate(readers)]


def deal(mix: TokenMixture, readers: list, equal_costs: bool, block: int, rank: int, world: int,
         worker: int, workers: int) -> Iterator[tuple[int, int, int]]:
    """Deal every global index from ``mix`` on; yield ``(index, source, k)`` for those one consumer owns.

    Counting from where ``mix`` stands, block ``b`` of ``block`` indices belongs to rank
    ``b % world`` and, within it, to worker ``(b // world) % workers``. Each sequence is
    committed to the mixture before it is handed out, so ``mix`` always describes the
    stream just after the last sequence yielded. ``equal_costs``: every sequence costs the
    same (pack mode), so costs are never looked up again.
    """
    start = mix.sequences
    costs = next_costs(mix, readers)
    stale = -1
    while True:
        if stale >= 0:
            # Looked up only now: a live stream forgets a chunk once the next one is read.
            costs[stale] = readers[stale].cost(mix.items[stale])
        g = mix.sequences
        s = mix.pick(costs)
        k = mix.items[s]
        b = (g - start) // block
        mix.commit(s, costs[s])
        stale = -1 if equal_costs else s
        if b % world == rank and (b // world) % workers == worker:
            yield g, s, k


def replay(mix: TokenMixture, readers: list, n: int, equal_cost: int | None) -> None:
    """Advance ``mix`` to global index ``n`` by its counters alone (no tokens are read).

    ``equal_cost``: the cost of every sequence (pack mode), else each is looked up in ``readers``.
    """
    if mix.sequences >= n:
        return
    costs = next_costs(mix, readers) if equal_cost is None else [equal_cost] * len(readers)
    while mix.sequences < n:
        s = mix.pick(costs)
        mix.commit(s, costs[s])
        if equal_cost is None:
            costs[s] = readers[s].cost(mix.items[s])
