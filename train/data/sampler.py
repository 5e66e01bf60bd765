"""The sample order: a seeded permutation per epoch, sharded by rank, remainder dropped, resumable.

Both backends take their batches from here rather than from a framework's own epoch logic, so every
epoch has exactly ``steps`` batches on every rank, no sample appears twice in an epoch (across all
ranks), and a position (epoch, step) fully determines the batch.
"""
from __future__ import annotations

import numpy as np


class EpochSampler:
    """Batches of dataset indices for rank ``rank`` of ``world_size``.

    Epoch e uses permutation(N) from a generator seeded with (seed, e); the first
    steps * batch_size * world_size entries are kept (the remainder is dropped, as drop_last does)
    and rank r takes every world_size-th of them starting at r (DistributedSampler's layout).
    """

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.steps = n // (batch_size * world_size)
        if self.steps == 0:
            raise ValueError(f"{n} samples are fewer than one batch of {batch_size} per process "
                             f"x {world_size} processes: lower batch_size")
        self._cache: tuple[int, np.ndarray] | None = None

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """int64 [steps, batch_size]: this rank's batches of epoch ``epoch``."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        kept = order[: self.steps * self.batch_size * self.world_size]
        mine = kept[self.rank::self.world_size].reshape(self.steps, self.batch_size).astype(np.int64)
        self._cache = (epoch, mine)
        return mine

    def batch(self, epoch: int, step: int) -> np.ndarray:
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} outside 0..{self.steps - 1}")
        return self.epoch_indices(epoch)[step]
