"""Which samples each rank reads at each step.

The run reads one global stream: position ``g`` is sample ``perm_e[g % N]`` of epoch ``e = g // N``, where
``perm_e`` is a permutation seeded with ``(seed, e)``. Step ``s`` consumes positions
``[s * global_batch, (s + 1) * global_batch)``; within them, micro-batch ``m`` of rank ``r`` takes the slice
``(m * world_size + r) * micro_batch`` of length ``micro_batch``. So every sample is read exactly once per epoch
across all ranks of all nodes, the samples of a step do not depend on the world size, and resuming at step ``s``
needs nothing but ``s``.
"""

from __future__ import annotations

import numpy as np


class StepSampler:
    def __init__(self, num_samples: int, seed: int, global_batch_size: int, micro_batch_size: int,
                 world_size: int, rank: int):
        if num_samples < 1:
            raise ValueError("the dataset has no samples")
        per_pass = micro_batch_size * world_size
        if micro_batch_size < 1 or global_batch_size % per_pass:
            raise ValueError(f"train.global_batch_size ({global_batch_size}) must be a multiple of "
                             f"train.micro_batch_size ({micro_batch_size}) x world size ({world_size})")
        self.num_samples, self.seed = num_samples, seed
        self.global_batch, self.micro, self.world, self.rank = global_batch_size, micro_batch_size, world_size, rank
        self.accumulation = global_batch_size // per_pass
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # a micro-batch spans at most two epochs
                self._perms.pop(min(self._perms))
            dtype = np.uint32 if self.num_samples < 2**32 else np.int64
            rng = np.random.default_rng([self.seed, epoch])
            self._perms[epoch] = rng.permutation(self.num_samples).astype(dtype)
        return self._perms[epoch]

    def micro_batch(self, step: int, micro: int) -> list[tuple[int, int]]:
        """``[(epoch, sample index), ...]`` of this rank's micro-batch ``micro`` of step ``step``."""
        start = step * self.global_batch + (micro * self.world + self.rank) * self.micro
        out = []
        for position in range(start, start + self.micro):
            epoch, offset = divmod(position, self.num_samples)
            out.append((epoch, int(self.permutation(epoch)[offset])))
        return out

    def epoch_of_step(self, step: int) -> float:
        """Epochs completed after ``step`` steps (fractional)."""
        return step * self.global_batch / self.num_samples
