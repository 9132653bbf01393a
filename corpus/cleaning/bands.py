"""How a MinHash signature is cut into LSH bands: b bands of r values, chosen so that the chance of
two documents becoming a candidate pair, 1 - (1 - s^r)^b for Jaccard similarity s, rises at the
threshold. Plain arithmetic, apart from the hashing, so the manifest can check a setting on load.
"""
from __future__ import annotations

from dataclasses import dataclass

# bands_for accepts a split whose S-curve reaches 1/2 at most this far below the threshold. Wide
# enough that 128 permutations (or any power of two from 128) have a split for every threshold from 0.01;
# narrow enough to refuse a prime number of them above 0.3 (1-row bands make most pairs candidates).
RISE_WINDOW = 0.3

@dataclass(frozen=True)
class Bands:
    """How a signature is cut for LSH: ``count`` bands of ``rows`` values each."""
    count: int
    rows: int

    def probability(self, s: float) -> float:
        """The chance that two documents of Jaccard similarity ``s`` share at least one band."""
        return 1.0 - (1.0 - s ** self.rows) ** self.count

    def midpoint(self) -> float:
        """The similarity at which the S-curve crosses 1/2."""
        return (1.0 - 0.5 ** (1.0 / self.count)) ** (1.0 / self.rows)


def bands_for(threshold: float, permutations: int) -> Bands:
    """The split b x r == ``permutations`` whose S-curve crosses 1/2 closest below ``threshold``.

    Below, not at: a pair LSH misses is lost for good, while a candidate below the threshold only
    costs a comparison of signatures. Raises ValueError naming the setting when ``threshold`` is
    outside (0, 1] or no split of ``permutations`` rises within :data:`RISE_WINDOW` below it.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if permutations < 1:
        raise ValueError(f"permutations must be a positive number, got {permutations}")
    best = _best_split(threshold, permutations)
    if best is None:
        around = sorted(range(max(1, permutations - 32), permutations + 33), key=lambda p: abs(p - permutations))
        near = [p for p in around if _best_split(threshold, p)][:3]
        splits = ", ".join(f"{b.count}x{b.rows} at {b.midpoint():.3f}" for b in _splits(permutations))
        raise ValueError(f"permutations: {permutations} cannot be split into bands whose S-curve rises at threshold "
                         f"{threshold} (splits rise at: {splits}); nearby values that can: "
                         f"{', '.join(map(str, sorted(near)))}")
    return best


def _splits(permutations: int) -> list[Bands]:
    return [Bands(permutations // r, r) for r in range(1, permutations + 1) if permutations % r == 0]


def _best_split(threshold: float, permutations: int) -> Bands | None:
    fitting = [b for b in _splits(permutations) if threshold - RISE_WINDOW <= b.midpoint() <= threshold]
    return max(fitting, key=Bands.midpoint, default=None)
