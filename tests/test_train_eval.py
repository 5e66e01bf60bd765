"""kNN classifier, LARS, the lr schedule, AllReduceBatchNorm single-process, and train.linear."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from train import pretrain
from train.distributed import convert_batchnorm
from train.knn import knn_accuracy
from train.linear import balanced_fraction
from train.linear import main as linear_main
from train.optim import LARS, warmup_cosine


def test_knn_weighted_vote_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    # k = 2: neighbours 0 (label 0, cos ~1.0) and 1 (label 1, cos ~0.99): label 0 wins by weight
    assert knn_accuracy(bank, labels, query, torch.tensor([0]), k=2, temperature=0.07) == 1.0
    # k = 3: label 1 gets two votes; the weighted sum decides (computed here by hand)
    sims = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    w = (sims / 0.07).exp()[0]
    expected = 0 if w[0] > w[1] + w[2] else 1
    assert knn_accuracy(bank, labels, query, torch.tensor([expected]), k=3, temperature=0.07) == 1.0
    assert math.isnan(knn_accuracy(bank, labels, query, torch.tensor([-1])))


def test_lars_step_by_hand():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))   # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))          # 1-D: plain SGD, no decay
    opt = LARS([w, b], lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.02)
    w.grad = torch.tensor([[0.0, 2.0]])            # ||g|| = 2
    b.grad = torch.tensor([0.5])
    opt.step()
    ratio = 0.02 * 5 / (2 + 0.1 * 5)
    weight = torch.tensor([[3.0, 4.0]])
    expected = weight - 0.5 * ratio * (torch.tensor([[0.0, 2.0]]) + 0.1 * weight)
    torch.testing.assert_close(w.detach(), expected)
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.5 * 0.5]))


def test_warmup_cosine():
    assert warmup_cosine(0, 10, 100) == 0.0
    assert warmup_cosine(5, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100, min_factor=0.1) == pytest.approx(0.1)


def test_allreduce_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.BatchNorm1d(5))
    x = torch.randn(6, 3, 6, 6)
    ref = net(x)
    converted = convert_batchnorm(net)
    torch.testing.assert_close(converted(x), ref)


def test_balanced_fraction_keeps_every_class():
    labels = np.repeat(np.arange(5), 100)
    idx = balanced_fraction(labels, 0.01, seed=0)
    assert len(idx) == 5 and set(labels[idx]) == set(range(5))
    assert len(balanced_fraction(labels, 0.1, seed=0)) == 50


def test_linear_eval_of_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--backbone", "tiny", "--batch-size", "64", "--kernel", "torch", "--loader", "torchvision",
            "--epochs", "1", "--max-steps", "2", "--out", str(out), "model.tiny_width=4", "data.train_subset=256",
            "data.eval_subset=128", "data.num_workers=0", "train.progress_bar=false",
            "simclr.proj_hidden_dim=32", "simclr.proj_output_dim=16"]
    assert pretrain.main(args) == 0
    assert linear_main(["--ckpt", str(out / "checkpoints" / "last.ckpt"), "--fraction", "0.1", "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "linear_fine" in printed and "linear_coarse" in printed
    assert (out / "linear_0.1.json").is_file()
    assert linear_main(["--ckpt", str(out / "nope.ckpt")]) == 2
