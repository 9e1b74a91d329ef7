"""A keyed pseudo-random permutation of ``[0, n)`` that is computed, not stored.

A 4-round Feistel network over the smallest even number of bits covering ``n``, with cycle walking (apply it again
until the value falls below ``n``) to make it a bijection of ``[0, n)``. Memory is O(1) whatever ``n``; a stored
permutation would cost every rank 4-8 bytes per sample.
"""

from __future__ import annotations

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fast, well-mixing bijection of 64-bit integers."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class FeistelPermutation:
    """A keyed pseudo-random bijection of ``[0, n)``, evaluated element-wise on int arrays."""

    ROUNDS = 4

    def __init__(self, n: int, key: int):
        self.n = int(n)
        bits = max(2, int(self.n - 1).bit_length())
        self.half = (bits + 1) // 2
        self.low_mask = np.uint64((1 << self.half) - 1)
        seq = np.random.SeedSequence(key).generate_state(self.ROUNDS, dtype=np.uint64)
        self.round_keys = [np.uint64(k) for k in seq]

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(self.half), x & self.low_mask
        for key in self.round_keys:
            left, right = right, left ^ (_mix(right ^ key) & self.low_mask)
        return (left << np.uint64(self.half)) | right

    def __call__(self, indices) -> np.ndarray:
        with np.errstate(over="ignore"):  # the mixing multiplies modulo 2**64 on purpose
            x = np.asarray(indices, dtype=np.uint64)
            out = self._encrypt(x)
            pending = out >= np.uint64(self.n)
            while pending.any():  # cycle walking: the domain is at most 4n, so few rounds are needed
                out[pending] = self._encrypt(out[pending])
                pending = out >= np.uint64(self.n)
        return out.astype(np.int64)
