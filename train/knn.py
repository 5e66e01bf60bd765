"""Evaluation: cosine kNN classifier (temperature-weighted, as solo-learn) and feature extraction.

kNN (Wu et al. 2018, solo-learn `WeightedKNNClassifier`): for each test feature, the k most cosine-
similar train features vote for their labels with weight exp(sim / T); the prediction is the label
with the largest total. Accuracies are top-1 over test samples with a label (>= 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def extract(backbone: nn.Module, loader, device):
    """(features [N, F] float32, fine [N], coarse [N]) of an eval loader, backbone in eval mode."""
    feats, fines, coarses = [], [], []
    was_training = backbone.training
    backbone.eval()
    for images, fine, coarse in loader:
        f = backbone(images.to(device, non_blocking=True)).float()
        feats.append(f)
        fines.append(fine.to(device))
        coarses.append(coarse.to(device))
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(fines), torch.cat(coarses)


@torch.no_grad()
def knn_accuracy(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 k: int = 20, temperature: float = 0.07, chunk: int = 512) -> float:
    """Top-1 accuracy of the weighted cosine kNN (NaN when no test sample has a label)."""
    keep_train = train_labels >= 0
    keep_test = test_labels >= 0
    if not keep_train.any() or not keep_test.any():
        return float("nan")
    bank = F.normalize(train_feats[keep_train], dim=1)
    bank_labels = train_labels[keep_train]
    queries = F.normalize(test_feats[keep_test], dim=1)
    labels = test_labels[keep_test]
    num_classes = int(max(bank_labels.max(), labels.max())) + 1
    k = min(k, bank.shape[0])
    correct = 0
    for start in range(0, queries.shape[0], chunk):
        q = queries[start : start + chunk]
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        votes.scatter_add_(1, bank_labels[idx], weights)
        correct += int((votes.argmax(dim=1) == labels[start : start + chunk]).sum())
    return correct / queries.shape[0]


@torch.no_grad()
def probe_accuracy(probe: nn.Module, feats: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of a linear probe on features (NaN when no sample has a label)."""
    keep = labels >= 0
    if not keep.any():
        return float("nan")
    return float((probe(feats[keep]).argmax(dim=1) == labels[keep]).float().mean())
