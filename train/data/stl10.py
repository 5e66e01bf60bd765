"""STL-10 binary reader (``stl10_binary/{train,test,unlabeled}_X.bin``, ``{train,test}_y.bin``).

Images are uint8, 3 x 96 x 96 each, stored channel by channel in column-major order; labels are
uint8 in 1..10. The 100k unlabelled images are the pretraining split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import DataError, check_labels, require_dir, require_file

SIDE = 96
_BYTES = 3 * SIDE * SIDE


def _read_images(path: Path) -> np.ndarray:
    path = require_file(path, "STL-10 image file")
    size = path.stat().st_size
    if size % _BYTES:
        raise DataError(f"STL-10 image file {path} is truncated: {size} bytes is not a multiple of "
                        f"{_BYTES} (one 3x96x96 image)")
    raw = np.fromfile(path, dtype=np.uint8)
    # column-major planes: [N, C, W, H] -> [N, H, W, C]
    return raw.reshape(-1, 3, SIDE, SIDE).transpose(0, 3, 2, 1).copy()


def _read_labels(path: Path, n: int, images_path: Path) -> np.ndarray:
    path = require_file(path, "STL-10 label file")
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if len(labels) != n:
        raise DataError(f"STL-10 label file {path} has {len(labels)} labels but {images_path} has "
                        f"{n} images")
    wrong = np.flatnonzero((labels < 1) | (labels > 10))  # stored as 1..10
    if len(wrong):
        i = int(wrong[0])
        raise DataError(f"STL-10 label file {path}: label {labels[i]} at index {i} is outside 1..10 "
                        f"({len(wrong)} such label{'s' if len(wrong) > 1 else ''})")
    return check_labels(labels - 1, 10, f"STL-10 label file {path}")


def read_stl10(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 96, 96, 3], fine int64 [N], -1 for unlabelled) of ``split``:
    'train', 'test', 'unlabeled' or 'train+unlabeled'."""
    root = require_dir(Path(root), "STL-10 root")
    folder = root / "stl10_binary" if (root / "stl10_binary").is_dir() else root
    images, labels = [], []
    for part in split.split("+"):
        x = _read_images(folder / f"{part}_X.bin")
        if part == "unlabeled":
            y = np.full(len(x), -1, dtype=np.int64)
        else:
            y = _read_labels(folder / f"{part}_y.bin", len(x), folder / f"{part}_X.bin")
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)
