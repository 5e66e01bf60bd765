"""Factories: the pretraining loader (DALI or torchvision) and the deterministic evaluation loader."""
from __future__ import annotations

import importlib.util
import logging
from typing import Iterator

import numpy as np
import torch

from .augment import AugmentConfig
from .dataset import ImageDataset
from .loader_base import PretrainLoader, batch_labels

LOADERS = ("auto", "dali", "torchvision")
DEVICES = ("cpu", "cuda")
log = logging.getLogger(__name__)


def dali_available() -> bool:
    return importlib.util.find_spec("nvidia") is not None and \
        importlib.util.find_spec("nvidia.dali") is not None


def choose_loader(loader: str, device_type: str) -> str:
    """Resolve 'auto': DALI for a CUDA device when installed (else torchvision, with a one-line
    notice); torchvision on the CPU, where the batched torchvision backend is the faster for
    in-memory arrays and for image folders alike (bench/results/data_throughput_cpu.md, 2 cores:
    1.5x DALI's CPU operators at 32 px, 3.3x at 224 px JPEGs). Other names pass through."""
    if loader != "auto":
        return loader
    if device_type == "cpu":
        return "torchvision"
    if dali_available():
        return "dali"
    log.warning("NVIDIA DALI is not installed: using the torchvision data loader "
                "(pip install nvidia-dali-cuda130 for the DALI one)")
    return "torchvision"


def make_pretrain_loader(dataset: ImageDataset, aug: AugmentConfig, *, batch_size: int,
                         loader: str = "auto", device: str = "cpu", seed: int = 0, rank: int = 0,
                         world_size: int = 1, num_workers: int | None = None) -> PretrainLoader:
    """A PretrainLoader (see loader_base.PretrainLoader for what it yields and how it resumes).

    loader: 'dali', 'torchvision', or 'auto' (see choose_loader).
    device: 'cpu' or 'cuda' ('cuda:N' too): where the views are made.
    num_workers: torchvision DataLoader workers / DALI threads (default: all cores, at most 16 / 8).
    """
    if loader not in LOADERS:
        raise ValueError(f"unknown loader {loader!r}; choose one of {LOADERS}")
    dev = torch.device(device)
    if dev.type not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {DEVICES} (or 'cuda:N')")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but no CUDA device is available; use device='cpu'")
    loader = choose_loader(loader, dev.type)
    kwargs = dict(batch_size=batch_size, device=device, seed=seed, rank=rank,
                  world_size=world_size, num_workers=num_workers)
    if loader == "dali":
        if not dali_available():
            raise ValueError("loader='dali' requested but NVIDIA DALI is not installed "
                             "(pip install nvidia-dali-cuda130), or use loader='torchvision'")
        from .dali_loader import DaliLoader
        return DaliLoader(dataset, aug, **kwargs)
    from .torch_loader import TorchvisionLoader
    return TorchvisionLoader(dataset, aug, **kwargs)


class EvalLoader:
    """Deterministic batches (images [B, 3, S, S] normalised, fine [B], coarse [B]) in dataset order.

    Arrays are resized to ``image_size`` (bilinear, antialiased; no-op at the native size); files
    are resized so the short side is image_size / 0.875 and centre-cropped (the ImageNet protocol).
    The last, smaller batch is kept.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, device: str, image_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.ds, self.batch_size, self.device, self.size = dataset, batch_size, torch.device(device), image_size
        self._mean = torch.tensor(dataset.mean)[None, :, None, None]
        self._std = torch.tensor(dataset.std)[None, :, None, None]

    def __len__(self) -> int:
        return -(-len(self.ds) // self.batch_size)

    def _images(self, idx: np.ndarray) -> torch.Tensor:
        import torch.nn.functional as F

        from .torch_aug import to_float_rgb
        if self.ds.images is not None:
            x = to_float_rgb(torch.from_numpy(self.ds.images[idx]))
            if x.shape[-1] != self.size or x.shape[-2] != self.size:
                x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                                  align_corners=False)
            return x
        from torchvision.transforms.v2 import functional as TF

        from .torch_loader import decode_file
        out = []
        for i in idx:
            im = decode_file(self.ds.files[i]).permute(2, 0, 1)
            im = TF.resize(im, int(round(self.size / 0.875)), antialias=True)
            out.append(TF.center_crop(im, [self.size, self.size]))
        return torch.stack(out).float().div_(255)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.ds), self.batch_size):
            idx = np.arange(start, min(start + self.batch_size, len(self.ds)))
            x = (self._images(idx) - self._mean) / self._std
            fine, coarse = batch_labels(self.ds, idx)
            yield (x.to(self.device), torch.from_numpy(fine).to(self.device),
                   torch.from_numpy(coarse).to(self.device))


def make_eval_loader(dataset: ImageDataset, *, batch_size: int, device: str = "cpu",
                     image_size: int | None = None) -> EvalLoader:
    """An EvalLoader at ``image_size`` (default: the dataset's image_size)."""
    return EvalLoader(dataset, batch_size, device, image_size or dataset.image_size)
