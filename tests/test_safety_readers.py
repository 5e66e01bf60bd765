"""Readers check values, not only shapes: labels within the dataset's classes, coarse labels within
its groups, image dtype and size as the format defines; each error names the file and the first
offending index and value. Every bad input is written here in its real format."""
import pickle

import numpy as np
import pytest

from tests.test_data_readers import known_images, write_cifar_batch, write_mnist_layout, write_stl10
from train import pretrain
from train.data import DataError, ImageDataset, load_dataset
from train.data.idx import write_idx


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_label_outside_the_classes(tmp_path, name):
    write_mnist_layout(tmp_path)
    labels = np.zeros(12, np.uint8)
    labels[3], labels[7] = 200, 10
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(path, labels)
    with pytest.raises(DataError) as e:
        load_dataset(name, tmp_path, "train")
    msg = str(e.value)
    assert str(path) in msg and "label 200 at index 3 is outside 0..9" in msg and "2 such labels" in msg


def test_idx_images_of_the_wrong_size(tmp_path):
    write_mnist_layout(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(path, np.zeros((5, 5, 5), np.uint8))  # a valid IDX file of 5x5 images
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", tmp_path, "test")
    assert str(path) in str(e.value) and "5x5" in str(e.value) and "28x28" in str(e.value)


def cifar100(tmp_path, fine, coarse, images=None):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    images = known_images(len(fine), 0) if images is None else images
    write_cifar_batch(folder / "train", images, fine_labels=fine, coarse_labels=coarse)
    return folder / "train"


def test_cifar100_fine_label_outside_100(tmp_path):
    path = cifar100(tmp_path, [4, 500, 7], [1, 2, 3])
    with pytest.raises(DataError) as e:
        load_dataset("cifar100", tmp_path)
    assert str(path) in str(e.value) and "fine_labels: label 500 at index 1 is outside 0..99" in str(e.value)


def test_cifar100_coarse_label_outside_20(tmp_path):
    """Coarse labels of -3 used to train to the end with --hex superclass, every row 'empty'."""
    path = cifar100(tmp_path, [4, 5, 7], [-3, 2, 3])
    with pytest.raises(DataError) as e:
        load_dataset("cifar100", tmp_path)
    assert str(path) in str(e.value) and "coarse_labels: label -3 at index 0 is outside 0..19" in str(e.value)


def test_cifar100_class_in_two_superclasses(tmp_path):
    path = cifar100(tmp_path, [4, 5, 4], [1, 2, 3])
    with pytest.raises(DataError) as e:
        load_dataset("cifar100", tmp_path)
    assert str(path) in str(e.value)
    assert "fine label 4 has coarse label 1 at index 0 but 3 at index 2" in str(e.value)


def test_cifar10_label_outside_10(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", known_images(2, i), labels=[0, 10 if i == 4 else 1])
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path)
    assert str(folder / "data_batch_4") in str(e.value) and "label 10 at index 1 is outside 0..9" in str(e.value)


def test_cifar_labels_must_be_integers(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images = known_images(3, 0)
    batch = {b"data": images.transpose(0, 3, 1, 2).reshape(3, -1), b"fine_labels": [1, 2, 3.5],
             b"coarse_labels": [0, 0, 0]}
    (folder / "train").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError) as e:
        load_dataset("cifar100", tmp_path)
    assert str(folder / "train") in str(e.value) and "must be integers, found 3.5 at index 2" in str(e.value)


def test_cifar_float_images_do_not_wrap(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = known_images(3, 0).transpose(0, 3, 1, 2).reshape(3, -1).astype(np.float64) + 100.0  # 355 would wrap to 99
    batch = {b"data": data, b"fine_labels": [1, 2, 3], b"coarse_labels": [0, 0, 0]}
    (folder / "train").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError) as e:
        load_dataset("cifar100", tmp_path)
    assert str(folder / "train") in str(e.value) and "float64" in str(e.value) and "uint8" in str(e.value)


def test_stl10_label_outside_1_to_10(tmp_path):
    write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "test_y.bin"
    np.array([3, 4, 11], np.uint8).tofile(path)
    with pytest.raises(DataError) as e:
        load_dataset("stl10", tmp_path, "test")
    assert str(path) in str(e.value) and "label 11 at index 2 is outside 1..10" in str(e.value)


def test_in_memory_dataset_labels_are_checked_too():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(DataError, match=r"'toy': coarse labels: label 5 at index 2 is outside 0\.\.2"):
        ImageDataset(name="toy", images=images, fine=np.array([0, 1, 2, 3]), coarse=np.array([0, 1, 5, -1]),
                     num_classes=4, num_coarse=3)
    with pytest.raises(DataError, match=r"label -2 at index 1 is outside >= 0 \(or -1 = unlabelled\)"):
        ImageDataset(name="toy", images=images, fine=np.array([0, -2, 1, 1]))
    ok = ImageDataset(name="toy", images=images, fine=np.array([0, -1, 3, 3]), num_classes=4)
    assert ok.fine.dtype == np.int64


def test_the_trainer_reports_the_bad_file_before_training(tmp_path, capsys):
    cifar100(tmp_path / "data", [4, 5, 7] * 30, [-3, 2, 3] * 30, images=known_images(90, 1))
    out = tmp_path / "run"
    assert pretrain.main(["--dataset", "cifar100", "--data-dir", str(tmp_path / "data"), "--hex", "superclass",
                          "--batch-size", "16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "data" / "cifar-100-python" / "train") in err and "label -3 at index 0" in err
    assert not out.exists()


@pytest.mark.parametrize("verify", ["full", "header"])
def test_image_folder_refuses_16_bit_images(tmp_path, verify):
    """A 16-bit PNG would be clipped to white by the RGB conversion: refused, naming the file."""
    from PIL import Image

    from tests.test_data_readers import write_png

    write_png(tmp_path / "cat" / "ok.png", 8, 8)
    (tmp_path / "dog").mkdir()
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "dog" / "deep.png")
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", tmp_path, verify=verify)
    assert str(tmp_path / "dog" / "deep.png") in str(e.value) and "mode I;16" in str(e.value)
    assert "ok.png" not in str(e.value)
