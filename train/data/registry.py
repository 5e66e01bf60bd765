"""The dataset registry: one reader function per name, all returning an ImageDataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import hierarchy as H
from .cifar import read_cifar10, read_cifar100
from .dataset import DataError, ImageDataset, grey_stats, require_dir
from .download import SOURCES, default_root, download as fetch
from .folders import read_flat_folder, read_image_folder
from .idx import read_idx_split
from .stl10 import read_stl10

EMBEDDED_ROOT = Path(__file__).resolve().parent / "embedded" / "fashion-mnist-small"


def _fashion(name: str, root: Path, split: str, **_) -> ImageDataset:
    images, fine = read_idx_split(root, split, num_classes=10)
    return ImageDataset(name=name, images=images, fine=fine, coarse=H.FASHION_MNIST_COARSE[fine],
                        num_classes=10, num_coarse=len(H.FASHION_MNIST_COARSE_NAMES), image_size=28,
                        class_names=list(H.FASHION_MNIST_CLASSES),
                        coarse_names=list(H.FASHION_MNIST_COARSE_NAMES),
                        **grey_stats(0.2860, 0.3530))


def _mnist(name: str, root: Path, split: str, **_) -> ImageDataset:
    images, fine = read_idx_split(root, split, num_classes=10)
    return ImageDataset(name=name, images=images, fine=fine, num_classes=10, image_size=28,
                        class_names=list(H.MNIST_CLASSES), **grey_stats(0.1307, 0.3081))


def _cifar10(name: str, root: Path, split: str, **_) -> ImageDataset:
    images, fine, names = read_cifar10(root, split)
    return ImageDataset(name=name, images=images, fine=fine, num_classes=10, image_size=32,
                        class_names=names or list(H.CIFAR10_CLASSES),
                        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))


def _cifar100(name: str, root: Path, split: str, **_) -> ImageDataset:
    images, fine, coarse, names, coarse_names = read_cifar100(root, split)
    return ImageDataset(name=name, images=images, fine=fine, coarse=coarse, num_classes=100,
                        num_coarse=20, image_size=32, class_names=names, coarse_names=coarse_names,
                        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))


def _stl10(name: str, root: Path, split: str, **_) -> ImageDataset:
    images, fine = read_stl10(root, split)
    return ImageDataset(name=name, images=images, fine=None if (fine < 0).all() else fine,
                        num_classes=10, image_size=96, class_names=list(H.STL10_CLASSES),
                        mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713))


def _split_dir(root: Path, split: str) -> Path:
    """``root/<split>`` when it exists (ImageNet's train/ val/ layout), else ``root`` itself."""
    root = require_dir(root, "image folder")
    return root / split if (root / split).is_dir() else root


def _imagefolder(name: str, root: Path, split: str, image_size: int = 224, verify: str = "auto"):
    files, labels, classes = read_image_folder(_split_dir(root, split), verify)
    return ImageDataset(name=name, files=files, fine=np.array(labels), num_classes=len(classes),
                        image_size=image_size, class_names=classes)


def _flatfolder(name: str, root: Path, split: str, image_size: int = 224, verify: str = "auto"):
    files = read_flat_folder(_split_dir(root, split), verify)
    return ImageDataset(name=name, files=files, image_size=image_size)


# name -> (reader, splits it accepts). The embedded subset is the default: it needs no path.
DATASETS = {
    "fashion-mnist-small": (_fashion, ("train", "test")),
    "fashion-mnist": (_fashion, ("train", "test")),
    "mnist": (_mnist, ("train", "test")),
    "cifar10": (_cifar10, ("train", "test")),
    "cifar100": (_cifar100, ("train", "test")),
    "stl10": (_stl10, ("train", "test", "unlabeled", "train+unlabeled")),
    "imagefolder": (_imagefolder, None),   # any split name that is a sub-folder, or the root itself
    "flatfolder": (_flatfolder, None),
}
DEFAULT_DATASET = "fashion-mnist-small"
_FOLDER_OPTIONS = ("image_size", "verify")


def load_dataset(name: str = DEFAULT_DATASET, root: str | Path | None = None, split: str = "train",
                 *, download: bool = False, **options) -> ImageDataset:
    """Read dataset ``name`` from ``root`` (see DATASETS for names and splits).

    root: the folder with the dataset's files; None = the embedded copy for 'fashion-mnist-small',
          else $HEXFAST_DATA/<name> or ~/.cache/hexfast/<name>.
    download: fetch the standard archives into root first (needs internet; MD5-checked).
    options: for 'imagefolder' / 'flatfolder' only: image_size (default 224), verify
             ('auto' | 'full' | 'header' | 'none', see folders.verify_files).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    reader, splits = DATASETS[name]
    if splits is not None and split not in splits:
        raise ValueError(f"dataset {name!r} has no split {split!r}; choose one of {list(splits)}")
    if splits is None:
        bad = set(options) - set(_FOLDER_OPTIONS)
    else:
        bad = set(options)
    if bad:
        raise ValueError(f"unknown option(s) {sorted(bad)} for dataset {name!r}"
                         + (f"; valid: {list(_FOLDER_OPTIONS)}" if splits is None else " (it takes none)"))
    if root is None:
        if name == "fashion-mnist-small":
            root = EMBEDDED_ROOT
        elif name in ("imagefolder", "flatfolder"):
            raise ValueError(f"dataset {name!r} needs root= (the folder holding the images)")
        else:
            root = default_root(name)
    root = Path(root).expanduser()
    if download:
        fetch(name, root)
    elif not root.exists():
        # both routes exist: the trainer's data.download config key and this function's argument
        hint = (" (add data.download=true to the train.pretrain command line, or pass download=True to "
                "load_dataset, to fetch it; needs internet)" if name in SOURCES else "")
        raise DataError(f"missing dataset folder for {name!r}: {root} does not exist{hint}")
    return reader(name, root, split, **options)
