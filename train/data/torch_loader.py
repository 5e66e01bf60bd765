"""The torchvision backend: a torch DataLoader whose workers build whole batches.

Each worker item is one batch (the sampler hands out positions, not samples), so augmentation runs
batched. On the CPU the workers do all of it; with device='cuda' they only gather (and for encoded
files decode and crop) uint8 data, and the colour work runs batched on the GPU, which is faster.
"""
from __future__ import annotations

import io
import os
import sys
import warnings
from typing import Iterator

import numpy as np
import torch

from .augment import AugmentConfig
from .dataset import DataError, ImageDataset
from .loader_base import PretrainLoader, batch_labels, draw_params
from .torch_aug import crop_images, crop_resize_flip, photometric, photometric_chunks, to_float_rgb


def decode_file(path: str) -> torch.Tensor:
    """uint8 [H, W, 3] of an encoded image file; DataError naming the file when it cannot be read.

    JPEGs with one or three components are decoded by torchvision.io.decode_jpeg (libjpeg-turbo,
    straight into a tensor: the same pixels as PIL's decoder, without PIL's two copies); every
    other file (PNG, CMYK JPEG, ...) by PIL, converted to RGB."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:3] == b"\xff\xd8\xff":
            im = _decode_jpeg(data)
            if im is not None:
                return im
        with Image.open(io.BytesIO(data)) as im:
            return torch.from_numpy(np.asarray(im.convert("RGB")).copy())
    except Exception as e:  # corrupt / truncated since the up-front check, or deleted
        raise DataError(f"cannot decode image file {path}: {e}") from e


def _decode_jpeg(data: bytes) -> torch.Tensor | None:
    """uint8 [H, W, 3] by libjpeg-turbo, or None (PIL then decodes it): no torchvision image ops
    (torchvision 0.29 deprecates them), a JPEG with other than 1 or 3 components, a decoding error
    (PIL then names it)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            im = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    except Exception:
        return None
    if im.shape[0] == 1:
        return im[0, :, :, None].expand(-1, -1, 3).contiguous()
    if im.shape[0] == 3:
        return im.permute(1, 2, 0).contiguous()  # [3, H, W] over HWC memory: no copy
    return None


class _BatchMaker(torch.utils.data.Dataset):
    """Item ``(epoch, step)`` = the batch at that position, built in a worker."""

    def __init__(self, loader: "TorchvisionLoader") -> None:
        self.ds, self.aug = loader.dataset, loader.aug
        self.sampler, self.seed, self.rank = loader.sampler, loader.seed, loader.rank
        self.finish_here = loader.device.type == "cpu"

    def __len__(self) -> int:
        return self.sampler.steps

    def __getitem__(self, position: tuple[int, int]) -> dict:
        epoch, step = position
        idx = self.sampler.batch(epoch, step)
        fine, coarse = batch_labels(self.ds, idx)
        out = {"fine": torch.from_numpy(fine), "coarse": torch.from_numpy(coarse),
               "index": torch.from_numpy(idx)}
        if self.ds.images is not None:
            raw = torch.from_numpy(self.ds.images[idx])
            n, h, w = raw.shape[:3]
            params = draw_params(self.aug, [h] * n, [w] * n, self.seed, self.rank, epoch, step)
            if not self.finish_here:  # the GPU crops and colours the raw batch
                return {**out, "raw": raw, "params": params}
            x = to_float_rgb(raw)
            geo = [crop_resize_flip(x, p, r.size) for p, r in zip(params, self.aug.views)]
        else:
            imgs = [decode_file(self.ds.files[i]) for i in idx]
            params = draw_params(self.aug, [im.shape[0] for im in imgs], [im.shape[1] for im in imgs],
                                 self.seed, self.rank, epoch, step)
            # sizes differ: each crop is cut and resized on its own uint8 pixels
            geo = [crop_images(imgs, p, r.size) for p, r in zip(params, self.aug.views)]
            if not self.finish_here:  # ship uint8 crops, colour on the GPU
                return {**out, "crops": geo, "params": params}
        # on the CPU, a few samples at a time (in cache); uint8 crops become float chunk by chunk
        out["views"] = [photometric_chunks(g, p, r, self.ds.mean, self.ds.std)
                        for g, p, r in zip(geo, params, self.aug.views)]
        return out


class _Positions:
    """The DataLoader's sampler: positions (epoch, step) from ``start`` to the end of ``epoch``."""

    def __init__(self) -> None:
        self.epoch, self.start, self.steps = 0, 0, 0

    def __iter__(self):
        return iter([(self.epoch, s) for s in range(self.start, self.steps)])

    def __len__(self) -> int:
        return self.steps - self.start


class TorchvisionLoader(PretrainLoader):
    backend = "torchvision"

    def __init__(self, dataset: ImageDataset, aug: AugmentConfig, *, batch_size: int,
                 device: str = "cpu", seed: int = 0, rank: int = 0, world_size: int = 1,
                 num_workers: int | None = None) -> None:
        super().__init__(dataset, aug, batch_size=batch_size, device=device, seed=seed, rank=rank,
                         world_size=world_size)
        self.num_workers = default_workers() if num_workers is None else num_workers
        self._positions = _Positions()
        workers = self.num_workers > 0
        # Workers persist across epochs (the positions carry the epoch). Forking a process that
        # runs DALI's threads can deadlock the child, so spawn when DALI is loaded here.
        context = "spawn" if workers and "nvidia.dali" in sys.modules else None
        self._loader = torch.utils.data.DataLoader(
            _BatchMaker(self), batch_size=None, sampler=self._positions,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None, persistent_workers=workers,
            multiprocessing_context=context)

    def _batches(self, epoch: int, start: int) -> Iterator[dict]:
        self._positions.epoch, self._positions.start, self._positions.steps = epoch, start, len(self)
        for item in self._loader:
            yield self._finish(item)

    def _finish(self, item: dict) -> dict:
        dev = self.device
        batch = {k: item[k].to(dev, non_blocking=True) for k in ("fine", "coarse", "index")}
        if "views" in item:
            batch["views"] = [v.to(dev, non_blocking=True) for v in item["views"]]
            return batch
        params, views = item["params"], []
        if "raw" in item:
            x = to_float_rgb(item["raw"].to(dev, non_blocking=True))
            geo = [crop_resize_flip(x, p, r.size) for p, r in zip(params, self.aug.views)]
        else:
            geo = [c.to(dev, non_blocking=True).float().div_(255) for c in item["crops"]]
        for g, p, r in zip(geo, params, self.aug.views):
            views.append(photometric(g, p, r, self.dataset.mean, self.dataset.std))
        batch["views"] = views
        return batch


def default_workers() -> int:
    """All CPU cores this process may use, at most 16."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(16, n))
