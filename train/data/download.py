"""Optional download of the standard archives into a cache folder (only when asked: download=True).

Nothing in the tests downloads; a machine without internet points ``root`` at existing files.
Every file is checked against its published MD5 before it is used.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
from pathlib import Path

from .dataset import DataError

_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# name -> list of (url, md5, archive to extract or None)
SOURCES = {
    "fashion-mnist": [
        (_FASHION + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", None),
        (_FASHION + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", None),
        (_FASHION + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", None),
        (_FASHION + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", None)],
    "mnist": [
        (_MNIST + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", None),
        (_MNIST + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", None),
        (_MNIST + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", None),
        (_MNIST + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", None)],
    "cifar10": [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                 "c58f30108f718f92721af3b95e74349a", "tar")],
    "cifar100": [("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                  "eb9058c3a382ffc7106e4002c42a8d85", "tar")],
    "stl10": [("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
               "91f7769df0f17e558f3565bffb0c7dfb", "tar")],
}


def default_root(name: str) -> Path:
    """Where a dataset lives when no root is given: $HEXFAST_DATA/<name>, else ~/.cache/hexfast/<name>."""
    base = os.environ.get("HEXFAST_DATA") or Path.home() / ".cache" / "hexfast"
    return Path(base) / name


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(name: str, root: str | Path) -> Path:
    """Fetch ``name``'s archives into ``root`` (skipping files already there with the right MD5)."""
    if name not in SOURCES:
        raise ValueError(f"no download known for {name!r}; downloadable: {sorted(SOURCES)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for url, digest, archive in SOURCES[name]:
        target = root / url.rsplit("/", 1)[1]
        if not (target.exists() and md5(target) == digest):
            tmp = target.with_suffix(target.suffix + ".part")
            try:
                urllib.request.urlretrieve(url, tmp)
            except OSError as e:
                raise DataError(f"cannot download {url} to {target}: {e}") from e
            if md5(tmp) != digest:
                tmp.unlink()
                raise DataError(f"download of {url} has the wrong MD5 (expected {digest}); removed")
            tmp.replace(target)
        if archive == "tar":
            with tarfile.open(target) as tar:
                tar.extractall(root, filter="data")
    return root
