"""What both pretraining backends share: position bookkeeping, resume, labels and parameter draws."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .augment import AugmentConfig
from .dataset import ImageDataset
from .params import ViewParams, batch_rng, draw_view
from .sampler import EpochSampler


def batch_labels(ds: ImageDataset, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fine, coarse) int64 [B] for dataset indices ``idx``; -1 where the dataset has none."""
    missing = np.full(len(idx), -1, dtype=np.int64)
    fine = missing if ds.fine is None else ds.fine[idx]
    coarse = missing if ds.coarse is None else ds.coarse[idx]
    return fine, coarse


def draw_params(aug: AugmentConfig, heights, widths, seed: int, rank: int, epoch: int,
                step: int) -> list[ViewParams]:
    """One ViewParams per view of the batch at (epoch, step): the same draws for both backends."""
    rng = batch_rng(seed, rank, epoch, step)
    return [draw_view(v, heights, widths, rng) for v in aug.views]


class PretrainLoader:
    """Iterable over augmented multi-view batches; ``len()`` = steps per epoch (drop_last, exact).

    Each batch is a dict: ``views`` list of float32 [B, 3, S, S] normalised tensors (one per
    recipe), ``fine`` / ``coarse`` long [B] (-1 where none), ``index`` long [B] dataset indices.

    Position: ``epoch`` and ``step`` (batches of this epoch already yielded). Iterating starts at
    the current position; after a finished epoch the next iteration moves to the next epoch by
    itself, and ``set_epoch(e)`` jumps to the start of epoch e. ``state_dict()`` taken after any
    batch, loaded into a fresh loader, continues with exactly the remaining batches (same order,
    same augmentation draws).
    """

    backend = "base"

    def __init__(self, dataset: ImageDataset, aug: AugmentConfig, *, batch_size: int, device: str,
                 seed: int, rank: int, world_size: int) -> None:
        if not isinstance(aug, AugmentConfig):
            raise TypeError(f"aug must be an AugmentConfig, got {type(aug).__name__}")
        self.dataset, self.aug, self.device = dataset, aug, torch.device(device)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.sampler = EpochSampler(len(dataset), batch_size, seed=seed, rank=rank,
                                    world_size=world_size)
        self.batch_size = batch_size
        self.epoch, self.step = 0, 0

    def __len__(self) -> int:
        return self.sampler.steps

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first batch, unless we are already part-way through it."""
        if epoch != self.epoch or self.step >= len(self):
            self.epoch, self.step = int(epoch), 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "batch_size": self.batch_size,
                "num_samples": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "rank", "world_size", "batch_size", "num_samples"):
            mine = self.state_dict()[key]
            if state.get(key) != mine:
                raise ValueError(f"cannot resume: checkpoint has {key}={state.get(key)!r}, this loader "
                                 f"has {mine!r} (the sample order would differ)")
        if not 0 <= state["step"] <= len(self):
            raise ValueError(f"cannot resume: step {state['step']} outside 0..{len(self)}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def __iter__(self) -> Iterator[dict]:
        if self.step >= len(self):
            self.epoch, self.step = self.epoch + 1, 0
        epoch = self.epoch
        for step, batch in enumerate(self._batches(epoch, self.step), start=self.step):
            self.step = step + 1  # counted as consumed before the caller sees it: resume skips it
            yield batch

    def _batches(self, epoch: int, start: int) -> Iterator[dict]:
        raise NotImplementedError
