"""Which samples each rank reads at each step.

The run reads one global stream: position ``g`` is sample ``perm_e(g % N)`` of epoch ``e = g // N``, where
``perm_e`` is a pseudo-random permutation of ``[0, N)`` keyed by ``(seed, e)``. Step ``s`` consumes positions
``[s * global_batch, (s + 1) * global_batch)``; within them, micro-batch ``m`` of rank ``r`` takes the slice
``(m * world_size + r) * micro_batch`` of length ``micro_batch``. So every sample is read exactly once per epoch
across all ranks of all nodes, the samples of a step do not depend on the world size, and resuming at step ``s``
needs nothing but ``s``.

A mixture of sources (``data.sources``) divides the same stream among them (``mixture.Interleave``): position ``g``
is position ``k`` of one source, which reads ``perm_e(k % N_j)`` of its own epoch ``e = k // N_j`` (permutations
keyed by the source too). Each source starts its next epoch when it runs out, independently of the others, and all
of the above still holds.

The permutation is computed, not stored: a 4-round Feistel network over the smallest even number of bits covering
``N``, with cycle walking (apply it again until the value falls below ``N``) to make it a bijection of ``[0, N)``.
Memory is O(1) whatever the corpus size; a stored permutation would cost every rank 4-8 bytes per sample.
"""

from __future__ import annotations

import numpy as np

from .mixture import Interleave

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


def accumulation_steps(global_batch_size: int, micro_batch_size: int, world_size: int,
                       global_key: str = "train.global_batch_size") -> int:
    """Micro-batches each process runs per optimizer step (global = micro x world size x accumulation): the one
    place of this arithmetic, for the sampler and the engine. ``ValueError`` naming the keys where it does not
    divide; ``global_key`` names the setting that gave the global batch."""
    if micro_batch_size < 1 or global_batch_size % (micro_batch_size * world_size):
        raise ValueError(f"{global_key} ({global_batch_size}) must be a multiple of train.micro_batch_size "
                         f"x world size ({micro_batch_size} x {world_size})")
    return global_batch_size // (micro_batch_size * world_size)


class StepSampler:
    """This rank's samples of every step, for one source or a mixture (see the module docstring).

    Args:
        sizes: the number of samples of the source, or of each source of a mixture.
        shares: each source's share of the stream (a mixture; see ``mixture.Interleave``); None for one source.
        stream_keys: per source, extra key material for its permutations (``mixture.stream_key``).
    """

    def __init__(self, sizes, seed: int, global_batch_size: int, micro_batch_size: int, world_size: int, rank: int,
                 shares=None, stream_keys=None):
        self.sizes = [int(sizes)] if np.isscalar(sizes) else [int(n) for n in sizes]
        if min(self.sizes) < 1:
            raise ValueError("the dataset has no samples")
        self.accumulation = accumulation_steps(global_batch_size, micro_batch_size, world_size)
        self.seed = seed
        self.global_batch, self.micro, self.world, self.rank = global_batch_size, micro_batch_size, world_size, rank
        self.interleave = Interleave(list(shares) if shares is not None else [1.0] * len(self.sizes))
        self.stream_keys = [tuple(k) for k in stream_keys] if stream_keys is not None else [()] * len(self.sizes)
        self._permutations: dict[tuple[int, int], FeistelPermutation] = {}

    @property
    def num_samples(self) -> int:
        return sum(self.sizes)

    def permutation(self, source: int, epoch: int) -> FeistelPermutation:
        if (source, epoch) not in self._permutations:
            if len(self._permutations) >= 2 * len(self.sizes) + 2:  # a micro-batch mostly spans one or two epochs
                self._permutations.pop(next(iter(self._permutations)))
            self._permutations[source, epoch] = FeistelPermutation(self.sizes[source],
                                                                   [self.seed, epoch, *self.stream_keys[source]])
        return self._permutations[source, epoch]

    def micro_batch(self, step: int, micro: int) -> list[tuple[int, int, int]]:
        """``[(source, epoch, sample index), ...]`` of this rank's micro-batch ``micro`` of step ``step``."""
        start = step * self.global_batch + (micro * self.world + self.rank) * self.micro
        sources, numbers = self.interleave.locate(np.arange(start, start + self.micro, dtype=np.int64))
        sizes = np.asarray(self.sizes, dtype=np.int64)[sources]
        epochs, offsets = np.divmod(numbers, sizes)
        samples = np.empty_like(offsets)
        for source, epoch in sorted(set(zip(sources.tolist(), epochs.tolist()))):
            chosen = (sources == source) & (epochs == epoch)
            samples[chosen] = self.permutation(source, epoch)(offsets[chosen])
        return [(int(s), int(e), int(i)) for s, e, i in zip(sources, epochs, samples)]

    def samples_per_source(self, step: int) -> list[int]:
        """Samples each source has fed after ``step`` steps."""
        return self.interleave.counts(step * self.global_batch)

    def epoch_of_step(self, step: int) -> float:
        """Epochs completed after ``step`` steps (fractional; of the whole data for one source, of the samples
        read over all samples for a mixture)."""
        return step * self.global_batch / self.num_samples
