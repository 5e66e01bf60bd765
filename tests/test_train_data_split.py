"""Pretraining on a split with unlabelled images (STL-10's train+unlabeled): the kNN bank keeps the
labelled ones only."""
import pytest

from train import config as C
from train.pretrain import RunData, resolve

from tests.test_data_readers import write_stl10


def test_stl10_pretrains_on_unlabelled_images_and_banks_the_labelled(tmp_path):
    write_stl10(tmp_path, n_train=4, n_test=3, n_unl=5)
    cfg = C.from_dict({"data": {"dataset": "stl10", "root": str(tmp_path), "train_split": "train+unlabeled"},
                       "train": {"batch_size": 4}})
    data = RunData(cfg)
    assert len(data.train) == 9 and len(data.bank) == 4 and (data.bank.fine >= 0).all()
    assert data.steps_per_epoch == 9 // 4


def test_unknown_train_split_is_a_setup_error(tmp_path):
    write_stl10(tmp_path)
    with pytest.raises(C.ConfigError, match="stl10"):
        RunData(resolve(["--dataset", "stl10", "--data-dir", str(tmp_path), "data.train_split=everything"]))
