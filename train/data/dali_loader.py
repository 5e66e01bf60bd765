"""The DALI backend: the pipeline of dali_pipeline.py driven by our own sampler.

The source is an endless stream of positions (epoch, step) -> (epoch, step + 1) -> ... -> (epoch + 1, 0),
so DALI never sees an epoch boundary and cannot skip or repeat one (its own reader epoch logic with
a dropped last batch has skipped alternate epochs elsewhere). The loader pulls exactly len(loader)
batches per epoch and checks that each carries the position it expects; when the wanted position is
not the stream's next one (a jump with set_epoch, a resume, a loop left early) the pipeline is
rebuilt to start there, dropping whatever DALI had prefetched.
"""
from __future__ import annotations

import io
import os
from typing import Iterator

import numpy as np
import torch

from .augment import AugmentConfig
from .dataset import DataError, ImageDataset
from .dali_pipeline import HEAD, build_pipeline, view_fields
from .loader_base import PretrainLoader, batch_labels, draw_params


def _image_size(path: str, data: np.ndarray) -> tuple[int, int]:
    """(height, width) from an encoded image's header (bytes already in memory)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            w, h = im.size
    except Exception as e:
        raise DataError(f"cannot read image header of {path}: {e}") from e
    return h, w


class _Stream:
    """DALI external_source callable: returns the next batch of the position stream."""

    def __init__(self, loader: "DaliLoader", epoch: int, step: int) -> None:
        self.loader, self.epoch, self.step = loader, epoch, step

    def __call__(self):
        ld = self.loader
        epoch, step = self.epoch, self.step
        self.step += 1
        if self.step == len(ld):
            self.epoch, self.step = self.epoch + 1, 0
        ds = ld.dataset
        idx = ld.sampler.batch(epoch, step)
        fine, coarse = batch_labels(ds, idx)
        if ds.images is None:
            images = []
            for i in idx:
                try:
                    images.append(np.fromfile(ds.files[i], dtype=np.uint8))
                except OSError as e:
                    raise DataError(f"cannot read image file {ds.files[i]}: {e}") from e
            sizes = np.array([_image_size(ds.files[i], d) for i, d in zip(idx, images)])
            heights, widths = sizes[:, 0], sizes[:, 1]
        else:
            images = ds.images[idx]
            if images.shape[3] == 1:  # grey: replicate to RGB (documented policy)
                images = np.repeat(images, 3, axis=3)
            heights = np.full(len(idx), images.shape[1])
            widths = np.full(len(idx), images.shape[2])
        position = np.tile(np.array([epoch, step], dtype=np.int64), (len(idx), 1))
        outs = [images, fine, coarse, idx, position]
        params = draw_params(ld.aug, heights, widths, ld.seed, ld.rank, epoch, step)
        for p, recipe in zip(params, ld.aug.views):
            y0, x0 = p.top / heights, p.left / widths
            y1, x1 = (p.top + p.height) / heights, (p.left + p.width) / widths
            xs, xe = np.where(p.flip, x1, x0), np.where(p.flip, x0, x1)  # start > end flips
            fields = {
                "roi_start": lambda: np.stack([y0, xs], 1).astype(np.float32),
                "roi_end": lambda: np.stack([y1, xe], 1).astype(np.float32),
                "brightness": lambda: p.brightness, "contrast": lambda: p.contrast,
                # grayscale = zero saturation: DALI's twist scales the YIQ chroma, which commutes
                # with its hue rotation, so this is the grey of the jittered image
                "saturation": lambda: np.where(p.gray, np.float32(0), p.saturation).astype(np.float32),
                "hue": lambda: (p.hue * 360.0).astype(np.float32),  # turns -> degrees
                "sigma": lambda: np.maximum(p.sigma, np.float32(1e-3)),  # ~delta; DALI reads 0 as auto
                "solarize_threshold": lambda: np.where(p.solarize, np.float32(127.5), np.float32(256)),
            }
            outs += [fields[name]() for name in view_fields(recipe)]
        return tuple(outs)


class DaliLoader(PretrainLoader):
    backend = "dali"

    def __init__(self, dataset: ImageDataset, aug: AugmentConfig, *, batch_size: int,
                 device: str = "cpu", seed: int = 0, rank: int = 0, world_size: int = 1,
                 num_workers: int | None = None) -> None:
        super().__init__(dataset, aug, batch_size=batch_size, device=device, seed=seed, rank=rank,
                         world_size=world_size)
        self.num_threads = num_workers or max(1, min(8, len(os.sched_getaffinity(0))))
        self._iter = None
        self._next_pos: tuple[int, int] | None = None  # what the live pipeline yields next

    def _start(self, epoch: int, step: int) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self._iter = None  # drop the old pipeline (and its prefetched batches) first
        dev = self.device
        device_id = None
        if dev.type == "cuda":
            device_id = dev.index if dev.index is not None else torch.cuda.current_device()
        pipe = build_pipeline(_Stream(self, epoch, step), self.aug, self.dataset.mean,
                              self.dataset.std, encoded=self.dataset.is_encoded,
                              batch_size=self.batch_size, num_threads=self.num_threads,
                              device_id=device_id)
        names = [f"view{v}" for v in range(self.aug.num_views)] + list(HEAD[1:])
        self._names = names
        self._iter = DALIGenericIterator([pipe], output_map=names, auto_reset=False,
                                         prepare_first_batch=False)
        self._next_pos = (epoch, step)

    def _batches(self, epoch: int, start: int) -> Iterator[dict]:
        if self._iter is None or self._next_pos != (epoch, start):
            self._start(epoch, start)
        for step in range(start, len(self)):
            out = next(self._iter)[0]
            got = tuple(int(v) for v in out["position"][0])
            if got != (epoch, step):  # would mean a skipped or repeated batch: never silently
                raise RuntimeError(f"DALI stream out of step: expected batch {(epoch, step)}, got {got}")
            self._next_pos = (epoch, step + 1) if step + 1 < len(self) else (epoch + 1, 0)
            # on a GPU everything but the position already lives there (no copy, no sync)
            dev = self.device
            yield {"views": [out[f"view{v}"].to(dev, non_blocking=True) for v in range(self.aug.num_views)],
                   **{k: out[k].to(dev, non_blocking=True).long() for k in ("fine", "coarse", "index")}}
