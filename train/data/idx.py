"""IDX reader (the MNIST / Fashion-MNIST format), gzipped or not.

Layout: 2 zero bytes, a type byte (0x08 = uint8), a byte with the number of dimensions, then one
big-endian uint32 per dimension, then the data in C order.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .dataset import DataError, check_labels, require_file

_UBYTE = 0x08


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """uint8 array stored in the IDX file ``path`` (``.gz`` is decompressed), checked to have ``ndim`` dims."""
    path = require_file(Path(path), "IDX file")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as e:  # a truncated or corrupt gzip stream
        raise DataError(f"cannot decompress IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != _UBYTE:
        raise DataError(f"{path}: IDX element type 0x{raw[2]:02x} is not supported (only uint8, 0x08)")
    if raw[3] != ndim:
        raise DataError(f"{path}: IDX file has {raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header incomplete)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path} is truncated or padded: header says {shape} = {expected} bytes of "
                        f"data, file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def find_idx(root: Path, stem: str) -> Path:
    """``root/stem`` or ``root/stem.gz``, whichever exists (DataError naming both when neither)."""
    for name in (stem + ".gz", stem):
        if (root / name).exists():
            return root / name
    raise DataError(f"missing IDX file: neither {root / stem}.gz nor {root / stem} exists")


SIDE = 28  # MNIST-format images are 28 x 28


def read_idx_split(root: str | Path, split: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28, 1], labels int64 [N] in 0..num_classes-1) of the MNIST-layout
    ``split`` ('train' | 'test'); images of another size and labels out of range are refused."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = Path(root)
    img_path = find_idx(root, f"{prefix}-images-idx3-ubyte")
    lab_path = find_idx(root, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(img_path, 3)
    if images.shape[1:] != (SIDE, SIDE):
        raise DataError(f"IDX image file {img_path} holds {images.shape[1]}x{images.shape[2]} images; the MNIST "
                        f"format's are {SIDE}x{SIDE}")
    labels = check_labels(read_idx(lab_path, 1), num_classes, f"IDX label file {lab_path}")
    if len(labels) != len(images):
        raise DataError(f"label file {lab_path} has {len(labels)} labels but image file {img_path} "
                        f"has {len(images)} images")
    return images[..., None], labels


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write uint8 ``array`` as an IDX file (gzipped, byte-reproducible, when ``path`` ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
            f.write(data)
    else:
        path.write_bytes(data)
