"""CIFAR-10 / CIFAR-100 readers for the official "python version" pickles.

CIFAR-10: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``; CIFAR-100:
``cifar-100-python/{train, test, meta}`` with its 20 coarse labels (the superclasses) next to the
100 fine ones. Each batch is a dict with ``data`` uint8 [N, 3072] (R plane, G plane, B plane of a
32x32 image, row-major) and the label lists.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .dataset import DataError, check_labels, require_dir, require_file


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a dataset file cannot run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_pickle(path: Path) -> dict:
    """The dict in a CIFAR pickle, with str keys (the files were written by Python 2 with bytes keys)."""
    path = require_file(path, "CIFAR pickle")
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="latin1").load()
    except Exception as e:  # truncated, corrupt or not a pickle at all
        raise DataError(f"cannot read CIFAR pickle {path}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR pickle {path} holds a {type(obj).__name__}, expected a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _images(batch: dict, path: Path) -> np.ndarray:
    if "data" not in batch:
        raise DataError(f"CIFAR pickle {path} has no 'data' entry (keys: {sorted(batch)})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:  # converting would wrap e.g. 300.0 to 44
        kind = f"a {data.dtype} array" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        raise DataError(f"CIFAR pickle {path}: data is {kind}; the CIFAR format stores a uint8 array "
                        "[N, 3072]")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"CIFAR pickle {path}: data has shape {data.shape}, expected [N, 3072] "
                        "(3 planes of 32x32 per row)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _labels(batch: dict, key: str, n: int, path: Path, classes: int) -> np.ndarray:
    if key not in batch:
        raise DataError(f"CIFAR pickle {path} has no {key!r} entry (keys: {sorted(batch)})")
    raw = batch[key]
    if np.ndim(raw) != 1 or len(raw) != n:
        raise DataError(f"CIFAR pickle {path}: {np.size(raw)} {key} for {n} images")
    return check_labels(raw, classes, f"CIFAR pickle {path}: {key}")


def _same_group(fine: np.ndarray, coarse: np.ndarray, path: Path) -> None:
    """Every fine class lies in one coarse group (CIFAR-100's 100 classes in 20 superclasses)."""
    first = {}
    for i, (f, c) in enumerate(zip(fine.tolist(), coarse.tolist())):
        j = first.setdefault(f, (i, c))
        if j[1] != c:
            raise DataError(f"CIFAR pickle {path}: fine label {f} has coarse label {j[1]} at index {j[0]} "
                            f"but {c} at index {i}; each class belongs to one superclass")


def _folder(root: Path, name: str) -> Path:
    """``root`` itself if it holds the batches, else ``root/name`` (the archive's folder)."""
    root = require_dir(Path(root), "CIFAR root")
    return root / name if (root / name).is_dir() else root


def _names(meta_path: Path, key: str) -> list[str]:
    if not meta_path.exists():
        return []
    names = load_pickle(meta_path).get(key, [])
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_cifar10(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 [N, 32, 32, 3], fine int64 [N], class names) of CIFAR-10 ``split``."""
    folder = _folder(Path(root), "cifar-10-batches-py")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = folder / name
        batch = load_pickle(path)
        x = _images(batch, path)
        images.append(x)
        labels.append(_labels(batch, "labels", len(x), path, 10))
    return np.concatenate(images), np.concatenate(labels), _names(folder / "batches.meta", "label_names")


def read_cifar100(root: str | Path, split: str):
    """(images uint8 [N, 32, 32, 3], fine [N], coarse [N], fine names, coarse names) of CIFAR-100."""
    folder = _folder(Path(root), "cifar-100-python")
    path = folder / split
    batch = load_pickle(path)
    x = _images(batch, path)
    fine = _labels(batch, "fine_labels", len(x), path, 100)
    coarse = _labels(batch, "coarse_labels", len(x), path, 20)
    _same_group(fine, coarse, path)
    meta = folder / "meta"
    return (x, fine, coarse, _names(meta, "fine_label_names"), _names(meta, "coarse_label_names"))
