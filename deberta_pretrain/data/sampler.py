"""Which samples each rank reads at each step.

The run reads one global stream: position ``g`` is sample ``perm_e(g % N)`` of epoch ``e = g // N``, where
``perm_e`` is the order of epoch ``e`` (``windows.EpochOrder``: a pseudo-random permutation of ``[0, N)`` keyed by
``(seed, e)``, or with ``data.shuffle_window`` a shuffle of windows of shards). Step ``s`` consumes positions
``[s * global_batch, (s + 1) * global_batch)``; within them, micro-batch ``m`` of rank ``r`` takes the slice
``(m * world_size + r) * micro_batch`` of length ``micro_batch``. So every sample is read exactly once per epoch
across all ranks of all nodes, the samples of a step do not depend on the world size, and resuming at step ``s``
needs nothing but ``s``.

A mixture of sources (``data.sources``) divides the same stream among them (``mixture.Interleave``): position ``g``
is position ``k`` of one source, which reads ``perm_e(k % N_j)`` of its own epoch ``e = k // N_j`` (permutations
keyed by the source too). Each source starts its next epoch when it runs out, independently of the others, and all
of the above still holds.
"""

from __future__ import annotations

import numpy as np

from .mixture import Interleave
from .windows import EpochOrder


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
        shard_samples: per source, the samples of each of its shards (needed with ``window``).
        window: ``data.shuffle_window`` (shards per window), or None for one permutation of each whole source.
    """

    def __init__(self, sizes, seed: int, global_batch_size: int, micro_batch_size: int, world_size: int, rank: int,
                 shares=None, stream_keys=None, shard_samples=None, window: int | None = None):
        self.sizes = [int(sizes)] if np.isscalar(sizes) else [int(n) for n in sizes]
        if min(self.sizes) < 1:
            raise ValueError("the dataset has no samples")
        self.accumulation = accumulation_steps(global_batch_size, micro_batch_size, world_size)
        self.seed = seed
        self.global_batch, self.micro, self.world, self.rank = global_batch_size, micro_batch_size, world_size, rank
        self.interleave = Interleave(list(shares) if shares is not None else [1.0] * len(self.sizes))
        self.stream_keys = [tuple(k) for k in stream_keys] if stream_keys is not None else [()] * len(self.sizes)
        self.shard_samples = [list(s) for s in shard_samples] if shard_samples is not None else [[n] for n in
                                                                                                 self.sizes]
        if [sum(s) for s in self.shard_samples] != self.sizes:
            raise ValueError("shard_samples must add up to the sizes of the sources")
        self.window = window
        self._orders: dict[tuple[int, int], EpochOrder] = {}

    @property
    def num_samples(self) -> int:
        return sum(self.sizes)

    def epoch_order(self, source: int, epoch: int) -> EpochOrder:
        """The order of ``epoch`` of ``source`` (an index into the sizes)."""
        if (source, epoch) not in self._orders:
            if len(self._orders) >= 2 * len(self.sizes) + 2:  # a micro-batch mostly spans one or two epochs
                self._orders.pop(next(iter(self._orders)))
            self._orders[source, epoch] = EpochOrder(self.shard_samples[source], self.window,
                                                     [self.seed, epoch, *self.stream_keys[source]])
        return self._orders[source, epoch]

    def micro_batch(self, step: int, micro: int) -> list[tuple[int, int, int]]:
        """``[(source, epoch, sample index), ...]`` of this rank's micro-batch ``micro`` of step ``step``."""
        start = step * self.global_batch + (micro * self.world + self.rank) * self.micro
        sources, numbers = self.interleave.locate(np.arange(start, start + self.micro, dtype=np.int64))
        sizes = np.asarray(self.sizes, dtype=np.int64)[sources]
        epochs, offsets = np.divmod(numbers, sizes)
        samples = np.empty_like(offsets)
        for source, epoch in sorted(set(zip(sources.tolist(), epochs.tolist()))):
            chosen = (sources == source) & (epochs == epoch)
            samples[chosen] = self.epoch_order(source, epoch)(offsets[chosen])
        return [(int(s), int(e), int(i)) for s, e, i in zip(sources, epochs, samples)]

    def samples_per_source(self, step: int) -> list[int]:
        """Samples each source has fed after ``step`` steps."""
        return self.interleave.counts(step * self.global_batch)

    def epoch_of_step(self, step: int) -> float:
        """Epochs completed after ``step`` steps (fractional; of the whole data for one source, of the samples
        read over all samples for a mixture)."""
        return step * self.global_batch / self.num_samples
