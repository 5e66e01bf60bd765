"""The in-memory description of a dataset that every reader returns and every loader consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A dataset file is missing, empty, truncated, corrupt or inconsistent with another file.

    The message always names the offending file, so that a bad path fails before training starts.
    """


# Per-channel statistics used for normalisation (the values the SSL literature uses).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageDataset:
    """Images (decoded arrays or encoded files) with fine and, where a hierarchy exists, coarse labels.

    Exactly one of ``images`` / ``files`` is set.

    images:  uint8 numpy [N, H, W, C] with C = 1 (grey) or 3 (RGB), or None.
    files:   list of N paths to encoded images (JPEG/PNG/...), or None.
    fine:    int64 numpy [N] fine labels (-1 = unlabelled sample), or None when none has a label.
    coarse:  int64 numpy [N] coarse labels (-1 = none), or None when the dataset has no hierarchy.
    image_size: the side the loaders produce by default (the native size for arrays).
    channels:   channels as stored (1 or 3); the loaders always emit 3 (grey is replicated so that
                standard backbones work unchanged).
    mean, std:  3 per-channel values in [0, 1] for normalising the 3-channel output.
    """

    name: str
    images: np.ndarray | None = None
    files: list[str] | None = None
    fine: np.ndarray | None = None
    coarse: np.ndarray | None = None
    num_classes: int = 0
    num_coarse: int = 0
    image_size: int = 32
    channels: int = 3
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: list[str] = field(default_factory=list)
    coarse_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if (self.images is None) == (self.files is None):
            raise ValueError(f"dataset {self.name!r}: give exactly one of images= or files=")
        n = len(self)
        if n == 0:
            raise DataError(f"dataset {self.name!r} has no samples")
        if self.images is not None:
            if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] not in (1, 3):
                raise ValueError(f"dataset {self.name!r}: images must be uint8 [N, H, W, 1|3], "
                                 f"got {self.images.dtype} {tuple(self.images.shape)}")
            self.channels = int(self.images.shape[3])
        for attr in ("fine", "coarse"):
            labels = getattr(self, attr)
            if labels is None:
                continue
            labels = np.asarray(labels)
            if labels.shape != (n,):
                raise DataError(f"dataset {self.name!r}: {attr} labels have shape {labels.shape}, "
                                f"expected ({n},) to match the images")
            # the readers check their files' labels (naming the file); this is the net for the rest
            classes = self.num_classes if attr == "fine" else self.num_coarse
            setattr(self, attr, check_labels(labels, classes or None, f"dataset {self.name!r}: {attr} labels",
                                             unlabelled_ok=True))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"dataset {self.name!r}: mean and std need 3 values (the output is RGB)")

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.files)

    @property
    def is_encoded(self) -> bool:
        return self.files is not None

    def subset(self, indices: np.ndarray) -> "ImageDataset":
        """The samples at ``indices`` (same metadata), e.g. for a held-out split of a folder."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageDataset(
            name=self.name,
            images=None if self.images is None else self.images[idx],
            files=None if self.files is None else [self.files[i] for i in idx],
            fine=None if self.fine is None else self.fine[idx],
            coarse=None if self.coarse is None else self.coarse[idx],
            num_classes=self.num_classes, num_coarse=self.num_coarse, image_size=self.image_size,
            channels=self.channels, mean=self.mean, std=self.std,
            class_names=list(self.class_names), coarse_names=list(self.coarse_names))


def grey_stats(mean: float, std: float) -> dict:
    """mean/std for a grey dataset whose single channel is replicated to RGB."""
    return {"mean": (mean,) * 3, "std": (std,) * 3}


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is an existing, non-empty file, else a DataError naming it and ``what`` it is."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"missing {what}: {path} does not exist")
    if not path.is_file():
        raise DataError(f"{what} {path} is not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{what} {path} is empty")
    return path


def check_labels(labels, classes: int | None, what: str, *, unlabelled_ok: bool = False) -> np.ndarray:
    """``labels`` as int64 [N], each in 0..classes-1 (>= 0 for classes=None; -1 too with
    ``unlabelled_ok``); else a DataError that starts with ``what`` (e.g. "label file F") and names
    the first offending index and value. Non-integer values (3.7, True, "a") are refused, not
    truncated."""
    arr = np.asarray(labels)
    if arr.size and not (np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_):
        if isinstance(labels, np.ndarray):
            flat = arr.reshape(-1)
            odd = np.flatnonzero(flat != np.round(flat)) if np.issubdtype(arr.dtype, np.floating) else []
            bad = int(odd[0]) if len(odd) else 0
            value = flat[bad].item()
        else:  # a list: report the element as stored, not as numpy promoted it
            flat = list(labels)
            bad = next((i for i, v in enumerate(flat)
                        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))), 0)
            value = flat[bad]
        raise DataError(f"{what}: labels must be integers, found {value!r} at index {bad}")
    arr = arr.astype(np.int64)
    low = -1 if unlabelled_ok else 0
    wrong = np.flatnonzero((arr < low) | (arr >= classes) if classes is not None else arr < low)
    if len(wrong):
        i = int(wrong[0])
        valid = f"0..{classes - 1}" if classes is not None else ">= 0"
        valid += " (or -1 = unlabelled)" if unlabelled_ok else ""
        raise DataError(f"{what}: label {int(arr[i])} at index {i} is outside {valid} "
                        f"({len(wrong)} such label{'s' if len(wrong) > 1 else ''})")
    return arr


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"missing {what}: {path} does not exist")
    if not path.is_dir():
        raise DataError(f"{what} {path} is not a directory")
    return path
