"""Readers on small files written here in each real format, the embedded dataset, and bad data."""
import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from train.data import DATASETS, DataError, ImageDataset, load_dataset
from train.data.hierarchy import FASHION_MNIST_COARSE
from train.data.idx import read_idx, write_idx

REPO = Path(__file__).resolve().parent.parent
FULL_FASHION = REPO.parent / "shared" / "data" / "fashion-mnist"


# ---------------------------------------------------------------- writers of the real formats
def write_mnist_layout(root: Path, n_train=12, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        ext = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", y)
        data[prefix] = (x, y)
    return data


def write_cifar_batch(path: Path, images: np.ndarray, **labels):
    """images uint8 [N, 32, 32, 3] stored as CIFAR's R, G, B planes; bytes keys like the originals."""
    d = {b"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1)}
    d.update({k.encode(): list(map(int, v)) for k, v in labels.items()})
    path.write_bytes(pickle.dumps(d, protocol=2))


def known_images(n, seed):
    """Images whose pixel (y, x, c) encodes sample, row, column and channel, plus randomness."""
    x = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    x[:, 0, 0, :] = np.arange(n)[:, None]  # sample number in the top-left pixel
    x[:, 1, 2, 0], x[:, 1, 2, 1], x[:, 1, 2, 2] = 11, 22, 33  # channel order marker at row 1, col 2
    return x


def write_stl10(root: Path, n_train=4, n_test=3, n_unl=5, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = {}
    for part, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unl)):
        hwc = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        hwc.transpose(0, 3, 2, 1).tofile(folder / f"{part}_X.bin")  # column-major planes
        y = None
        if part != "unlabeled":
            y = rng.integers(1, 11, n).astype(np.uint8)
            y.tofile(folder / f"{part}_y.bin")
        out[part] = (hwc, y)
    return out


def write_png(path: Path, h, w, seed=0):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


# ---------------------------------------------------------------- readers
@pytest.mark.parametrize("gz", [True, False])
def test_idx_mnist_and_fashion(tmp_path, gz):
    data = write_mnist_layout(tmp_path, gz=gz)
    for name in ("mnist", "fashion-mnist"):
        for split, prefix in (("train", "train"), ("test", "t10k")):
            ds = load_dataset(name, tmp_path, split)
            x, y = data[prefix]
            assert ds.images.shape == (len(x), 28, 28, 1) and ds.channels == 1
            np.testing.assert_array_equal(ds.images[..., 0], x)
            np.testing.assert_array_equal(ds.fine, y)
            assert len(ds.mean) == 3 and ds.mean[0] == ds.mean[2]  # grey replicated to RGB
    fm = load_dataset("fashion-mnist", tmp_path, "train")
    np.testing.assert_array_equal(fm.coarse, FASHION_MNIST_COARSE[fm.fine])
    assert fm.num_coarse == 6 and load_dataset("mnist", tmp_path).coarse is None


def test_fashion_coarse_groups():
    groups = {name: [c for c in range(10) if FASHION_MNIST_COARSE[c] == g]
              for g, name in enumerate(["tops", "bottoms", "dresses", "outerwear", "bags", "shoes"])}
    assert groups == {"tops": [0, 2, 6], "bottoms": [1], "dresses": [3], "outerwear": [4],
                      "bags": [8], "shoes": [5, 7, 9]}


def test_cifar10_known_pixels(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = []
    for i in range(1, 6):
        x = known_images(3, seed=i)
        write_cifar_batch(folder / f"data_batch_{i}", x, labels=[i, i + 1, i + 2])
        batches.append(x)
    write_cifar_batch(folder / "test_batch", known_images(2, 9), labels=[0, 9])
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"] * 10}, protocol=2))
    ds = load_dataset("cifar10", tmp_path, "train")
    assert ds.images.shape == (15, 32, 32, 3) and ds.coarse is None and ds.num_classes == 10
    np.testing.assert_array_equal(ds.images, np.concatenate(batches))
    assert tuple(ds.images[0, 1, 2]) == (11, 22, 33)
    assert ds.fine.tolist() == [v for i in range(1, 6) for v in (i, i + 1, i + 2)]
    test = load_dataset("cifar10", folder, "test")  # the batches folder itself works too
    assert test.fine.tolist() == [0, 9]


def test_cifar100_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x = known_images(4, 1)
    write_cifar_batch(folder / "train", x, fine_labels=[0, 99, 50, 7], coarse_labels=[4, 19, 0, 3])
    write_cifar_batch(folder / "test", known_images(2, 2), fine_labels=[1, 2], coarse_labels=[5, 6])
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    ds = load_dataset("cifar100", tmp_path, "train")
    np.testing.assert_array_equal(ds.images, x)
    assert ds.fine.tolist() == [0, 99, 50, 7] and ds.coarse.tolist() == [4, 19, 0, 3]
    assert ds.num_classes == 100 and ds.num_coarse == 20
    assert ds.class_names[99] == "f99" and ds.coarse_names[19] == "c19"


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    (folder / "train").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_dataset("cifar100", tmp_path)


def test_stl10_splits(tmp_path):
    data = write_stl10(tmp_path)
    tr = load_dataset("stl10", tmp_path, "train")
    np.testing.assert_array_equal(tr.images, data["train"][0])
    np.testing.assert_array_equal(tr.fine, data["train"][1].astype(np.int64) - 1)
    unl = load_dataset("stl10", tmp_path, "unlabeled")
    assert unl.fine is None and len(unl) == 5
    both = load_dataset("stl10", tmp_path, "train+unlabeled")
    assert len(both) == 9 and (both.fine[4:] == -1).all() and (both.fine[:4] >= 0).all()
    assert both.image_size == 96


def test_image_folder_and_flat_folder(tmp_path):
    a = write_png(tmp_path / "train" / "cat" / "1.png", 20, 30)
    write_png(tmp_path / "train" / "cat" / "2.png", 17, 17, seed=1)
    write_png(tmp_path / "train" / "dog" / "x.png", 40, 25, seed=2)
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset("imagefolder", tmp_path, "train", image_size=64)
    assert ds.is_encoded and len(ds) == 3 and ds.fine.tolist() == [0, 0, 1]
    assert ds.class_names == ["cat", "dog"] and ds.image_size == 64 and ds.coarse is None
    from PIL import Image
    np.testing.assert_array_equal(np.asarray(Image.open(ds.files[0])), a)
    flat = load_dataset("flatfolder", tmp_path / "train")
    assert len(flat) == 3 and flat.fine is None


def test_embedded_dataset():
    tr = load_dataset()  # the default: no path, no download
    te = load_dataset("fashion-mnist-small", split="test")
    assert tr.name == "fashion-mnist-small" and len(tr) == 5000 and len(te) == 1000
    assert tr.images.shape == (5000, 28, 28, 1) and tr.images.dtype == np.uint8
    assert np.bincount(tr.fine).tolist() == [500] * 10  # stratified
    assert np.bincount(te.fine).tolist() == [100] * 10
    np.testing.assert_array_equal(tr.coarse, FASHION_MNIST_COARSE[tr.fine])
    folder = REPO / "train" / "data" / "embedded" / "fashion-mnist-small"
    assert "Permission is hereby granted" in (folder / "LICENSE").read_text()
    assert sum(f.stat().st_size for f in folder.iterdir()) < 5_000_000


@pytest.mark.skipif(not FULL_FASHION.exists(), reason="full Fashion-MNIST not at ../shared/data")
def test_embedded_is_a_subset_of_full_and_rebuilds(tmp_path):
    import json
    import subprocess
    import sys
    folder = REPO / "train" / "data" / "embedded" / "fashion-mnist-small"
    full = load_dataset("fashion-mnist", FULL_FASHION, "test")
    assert len(full) == 10000
    small = load_dataset("fashion-mnist-small", split="test")
    idx = json.loads((folder / "source-indices.json").read_text())["test"]
    np.testing.assert_array_equal(small.images, full.images[idx])
    np.testing.assert_array_equal(small.fine, full.fine[idx])
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_embedded_dataset.py"),
                    str(FULL_FASHION), "--out", str(tmp_path)], check=True, capture_output=True)
    for f in folder.iterdir():
        if f.name != "README.md":
            assert (tmp_path / f.name).read_bytes() == f.read_bytes(), f.name  # byte-identical


# ---------------------------------------------------------------- bad data
def test_missing_paths(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        load_dataset("cifar10", tmp_path / "nope")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DataError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DataError, match="train_X.bin"):
        load_dataset("stl10", tmp_path)


def test_empty_folders(tmp_path):
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset("imagefolder", tmp_path)
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError, match="cat holds no images"):
        load_dataset("imagefolder", tmp_path)
    with pytest.raises(DataError, match="holds no images"):
        load_dataset("flatfolder", tmp_path)
    (tmp_path / "cat" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="a.png"):
        load_dataset("flatfolder", tmp_path)


def test_truncated_and_corrupt_idx(tmp_path):
    write_mnist_layout(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated"):
        load_dataset("mnist", tmp_path)
    p.write_bytes(b"\x12\x34\x08\x03" + bytes(20))
    with pytest.raises(DataError, match="bad magic"):
        read_idx(p, 3)
    g = tmp_path / "cut.gz"
    g.write_bytes(gzip.compress(bytes(1000))[:30])
    with pytest.raises(DataError, match="cut.gz"):
        read_idx(g, 1)


def test_label_file_not_matching_images(tmp_path):
    write_mnist_layout(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz has 7 labels.*has 12 images"):
        load_dataset("fashion-mnist", tmp_path)
    data = write_stl10(tmp_path / "stl")
    np.zeros(2, np.uint8).tofile(tmp_path / "stl" / "stl10_binary" / "test_y.bin")
    with pytest.raises(DataError, match="test_y.bin has 2 labels"):
        load_dataset("stl10", tmp_path / "stl", "test")
    assert data
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar_batch(folder / "train", known_images(3, 0), fine_labels=[1, 2], coarse_labels=[0, 0, 0])
    with pytest.raises(DataError, match="train: 2 fine_labels for 3 images"):
        load_dataset("cifar100", tmp_path)


def test_truncated_cifar_and_stl(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar_batch(folder / "train", known_images(3, 0), fine_labels=[1, 2, 3], coarse_labels=[0] * 3)
    raw = (folder / "train").read_bytes()
    (folder / "train").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="cannot read CIFAR pickle .*train"):
        load_dataset("cifar100", tmp_path)
    write_stl10(tmp_path / "s")
    x = tmp_path / "s" / "stl10_binary" / "train_X.bin"
    x.write_bytes(x.read_bytes()[:-5])
    with pytest.raises(DataError, match="train_X.bin is truncated"):
        load_dataset("stl10", tmp_path / "s")


def test_corrupt_image_in_folder(tmp_path):
    write_png(tmp_path / "cat" / "good.png", 20, 20)
    raw = (tmp_path / "cat" / "good.png").read_bytes()
    (tmp_path / "cat" / "cut.png").write_bytes(raw[: len(raw) // 2])  # truncated
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "junk.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", tmp_path)
    assert "cut.png" in str(e.value) and "junk.jpg" in str(e.value) and "good.png" not in str(e.value)
    ok = load_dataset("imagefolder", tmp_path, verify="none")  # explicitly unchecked
    assert len(ok) == 3


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*cifar10"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="no split 'val'.*'train', 'test'"):
        load_dataset("fashion-mnist-small", split="val")
    with pytest.raises(ValueError, match="unknown option"):
        load_dataset("cifar10", tmp_path, image_size=32)
    with pytest.raises(ValueError, match="needs root="):
        load_dataset("imagefolder")
    write_png(tmp_path / "a" / "x.png", 8, 8)
    with pytest.raises(ValueError, match="verify='fast' is not one of"):
        load_dataset("imagefolder", tmp_path, verify="fast")
    with pytest.raises(DataError, match="shape"):
        ImageDataset(name="x", images=np.zeros((3, 4, 4, 1), np.uint8), fine=np.zeros(2))
    assert set(DATASETS) >= {"fashion-mnist-small", "fashion-mnist", "mnist", "cifar10", "cifar100",
                             "stl10", "imagefolder", "flatfolder"}


def test_download_checks_md5_and_extracts(tmp_path, monkeypatch):
    """download=True fetches the archive (a local file:// URL here: tests never go online)."""
    import hashlib
    import tarfile
    import train.data.download as dl
    src = tmp_path / "src"
    folder = src / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(folder / name, known_images(2, 0), labels=[3, 4])
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(dl.SOURCES, "cifar10", [(archive.as_uri(), digest, "tar")])
    ds = load_dataset("cifar10", tmp_path / "cache", "test", download=True)
    assert ds.fine.tolist() == [3, 4] and (tmp_path / "cache" / "cifar-10-python.tar.gz").exists()
    monkeypatch.setitem(dl.SOURCES, "cifar10", [(archive.as_uri(), "0" * 32, "tar")])
    with pytest.raises(DataError, match="wrong MD5"):
        load_dataset("cifar10", tmp_path / "other", download=True)
    with pytest.raises(DataError, match="pass download=True"):
        load_dataset("cifar10", tmp_path / "absent")

