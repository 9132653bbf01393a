"""A keyed pseudo-random permutation of ``0..n-1`` that is computed, never stored.

The sampler shuffles hundreds of millions of chunk ids per source and epoch; holding
those orders as arrays would cost gigabytes per DataLoader worker. A four-round
(unbalanced) Feistel network over the smallest power-of-two domain that covers ``n``,
with cycle walking back into ``[0, n)``, is a bijection that any position can be
evaluated at, vectorised over numpy arrays.
"""
from __future__ import annotations

import hashlib

import numpy as np

_ROUNDS = 4
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def derive_key(*parts: object) -> int:
    """A 64-bit key from any printable parts, stable across runs and machines."""
    blob = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little")


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over uint64 arrays: every input bit flips about half the output bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def unit_hash(key: int, i: int) -> float:
    """A keyed hash of ``i`` in [0, 1)."""
    x = (np.array([i], dtype=np.uint64) * _GOLDEN) ^ np.uint64(key)
    return int(splitmix64(x)[0] >> np.uint64(11)) / float(1 << 53)


class KeyedPermutation:
    """``perm(positions)`` maps positions in ``[0, n)`` to distinct values in ``[0, n)``."""

    def __init__(self, n: int, key: int):
        if n < 0:
            raise ValueError(f"a permutation needs n >= 0, got {n}")
        self.n = int(n)
        bits = max(2, int(self.n - 1).bit_length())
        # Halves of a and b bits swap widths every round, so the domain is 2**bits < 2n.
        self._a, self._b = (bits + 1) // 2, bits // 2
        keys = np.array([derive_key(key, r) for r in range(_ROUNDS)], dtype=np.uint64)
        self._keys = [keys[r] for r in range(_ROUNDS)]

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        a, b = self._a, self._b
        left, right = x >> np.uint64(b), x & np.uint64((1 << b) - 1)
        for k in self._keys:
            # (left: a bits, right: b bits) -> (right: b bits, left ^ F(right): a bits)
            left, right = right, left ^ (splitmix64(right ^ k) & np.uint64((1 << a) - 1))
            a, b = b, a
        return (left << np.uint64(b)) | right

    def __call__(self, positions: np.ndarray | int) -> np.ndarray:
        pos = np.asarray(positions, dtype=np.uint64)
        if pos.size and int(pos.max()) >= self.n:
            raise IndexError(f"position {int(pos.max())} outside a permutation of {self.n}")
        if self.n <= 1:
            return pos.astype(np.int64)
        out = self._encrypt(pos)
        # Cycle walking: re-encrypt values that landed outside [0, n) until they land inside.
        n = np.uint64(self.n)
        walk = np.flatnonzero(out >= n)
        while walk.size:
            values = self._encrypt(out[walk])
            out[walk] = values
            walk = walk[values >= n]
        return out.astype(np.int64)
