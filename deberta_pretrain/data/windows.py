"""The order of one source's samples in one epoch: one permutation of the whole dataset, or a windowed shuffle
(``data.shuffle_window``).

With a window of ``W`` shards, the epoch first permutes the source's shards; consecutive groups of ``W`` shards of
that permutation form the epoch's windows (the last one may hold fewer), read one after another; within a window
its samples are permuted. So at any moment a run reads from one window (and the next, once the step crosses into
it): a few files instead of the whole dataset, which is what lets a node stream a dataset larger than its disk
through a bounded cache. All permutations are ``FeistelPermutation``s keyed by the run's seed, the epoch, the
source and the window, so the order stays a pure function of the sample's position: resuming needs only the step,
and another world size reads the same samples.

Without a window (``None``), or with a window of at least the number of shards, the epoch is one permutation of
the whole dataset, keyed exactly as before windows existed, so the order is unchanged bit for bit.
"""

from __future__ import annotations

import numpy as np

from .permutation import FeistelPermutation

SHARD_ORDER_TAG = 0x73686172  # key material that keeps the shard and window permutations apart from the others
WINDOW_TAG = 0x77696E64


class EpochOrder:
    """The samples of one epoch of one source, in reading order.

    Args:
        shard_samples: the number of samples of each shard of the source, in the manifest's order.
        window: ``data.shuffle_window`` (shards per window), or None for the whole dataset.
        key: the epoch's key (seed, epoch and the source's stream key).

    ``order(offsets)`` maps positions within the epoch to sample indices of the dataset; ``windows`` lists the
    shards of each window and ``window_starts`` the epoch position where each begins.
    """

    def __init__(self, shard_samples, window: int | None, key: list[int]):
        self.counts = np.asarray(shard_samples, dtype=np.int64)
        self.shard_starts = np.concatenate([[0], np.cumsum(self.counts)])  # dataset index of each shard's first
        total, num_shards = int(self.shard_starts[-1]), len(self.counts)
        self.key = list(key)
        self.whole = window is None or window >= num_shards
        if self.whole:
            self._permutation = FeistelPermutation(total, self.key)
            self.windows = [np.arange(num_shards)]
        else:
            shard_order = FeistelPermutation(num_shards, [*self.key, SHARD_ORDER_TAG])(np.arange(num_shards))
            self.windows = [shard_order[i: i + window] for i in range(0, num_shards, window)]
        sizes = [int(self.counts[shards].sum()) for shards in self.windows]
        self.window_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._within: dict[int, FeistelPermutation] = {}

    @property
    def num_samples(self) -> int:
        return int(self.window_starts[-1])

    def window_of(self, offsets) -> np.ndarray:
        """The window of each position of the epoch."""
        return np.searchsorted(self.window_starts, np.asarray(offsets, dtype=np.int64), side="right") - 1

    def _window_permutation(self, window: int) -> FeistelPermutation:
        if window not in self._within:
            if len(self._within) >= 4:  # a step reads from one or two windows at a time
                self._within.pop(next(iter(self._within)))
            size = int(self.window_starts[window + 1] - self.window_starts[window])
            self._within[window] = FeistelPermutation(size, [*self.key, WINDOW_TAG, window])
        return self._within[window]

    def __call__(self, offsets) -> np.ndarray:
        """Dataset sample indices of the epoch positions ``offsets``."""
        offsets = np.asarray(offsets, dtype=np.int64)
        if self.whole:
            return self._permutation(offsets)
        windows = self.window_of(offsets)
        out = np.empty_like(offsets)
        for window in np.unique(windows).tolist():
            chosen = windows == window
            local = self._window_permutation(window)(offsets[chosen] - self.window_starts[window])
            shards = self.windows[window]
            inner = np.concatenate([[0], np.cumsum(self.counts[shards])])
            position = np.searchsorted(inner, local, side="right") - 1
            out[chosen] = self.shard_starts[shards[position]] + local - inner[position]
        return out
