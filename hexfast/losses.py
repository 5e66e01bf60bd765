"""The standard self-supervised losses the eight methods use, as pure functions.

Each follows solo-learn's definition (the codebase the HEX experiments ran on, `solo/losses/*.py`);
every docstring says what matches and any deliberate difference. All are single-process: solo-learn
gathers embeddings (InfoNCE, NNCLR) or all-reduces the correlation matrix (Barlow Twins) across
processes; here the caller gathers. No `exp` is taken without subtracting a maximum
(`logsumexp`/`cross_entropy` do that), so large logits (small temperatures) stay finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# BatchNorm1d's default eps: solo-learn's Barlow Twins normalises with a fresh BatchNorm1d.
_BN_EPS = 1e-5
# solo-learn's VICReg variance term: std = sqrt(var + 1e-4).
_VICREG_VAR_EPS = 1e-4


def infonce(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent (SimCLR) over the 2B anchors of cat[z1, z2]; z1, z2 [B, D] -> 0-dim loss.

    l_i = -s_ip/t + log sum_{k != i} e^{s_ik/t}  (positive in the denominator, self excluded), mean
    over the 2B anchors, s the cosine similarities. Matches solo-learn `simclr_loss_func` with two
    views (`-mean log(pos / (pos + neg))`), computed as a log-sum-exp instead of a ratio of exps.
    """
    batch = z1.shape[0]
    x = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    logits = x @ x.T / temperature
    n = 2 * batch
    self_mask = torch.eye(n, dtype=torch.bool, device=x.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    targets = (torch.arange(n, device=x.device) + batch) % n
    return F.cross_entropy(logits, targets)


def nnclr(nn: Tensor, p: Tensor, temperature: float = 0.1) -> Tensor:
    """NNCLR, one direction: nn [B, D] nearest neighbours of view 1, p [B, D] predictions of view 2.

    Cross-entropy of the rows of normalize(nn) normalize(p)^T / t with target i for row i (the other
    p_k are the negatives). Matches solo-learn `nnclr_loss_func` without its `gather(p)`; the method
    symmetrises (nnclr(nn1, p2) + nnclr(nn2, p1)) / 2. Nothing is detached: nn comes from the
    support queue, which carries no gradient there.
    """
    nn = F.normalize(nn, dim=-1)
    p = F.normalize(p, dim=-1)
    logits = nn @ p.T / temperature
    return F.cross_entropy(logits, torch.arange(nn.shape[0], device=nn.device))


def barlow_twins(z1: Tensor, z2: Tensor, lamb: float = 0.0051, scale_loss: float = 0.1) -> Tensor:
    """Barlow Twins: z1, z2 [B, D] -> scale_loss * (sum_i (1 - C_ii)^2 + lamb * sum_{i != j} C_ij^2).

    C = z1n^T z2n / B, each view standardised per feature over the batch (biased variance, eps
    1e-5: what solo-learn's fresh `BatchNorm1d(D, affine=False)` in training mode does). Matches
    solo-learn `barlow_loss_func` (its defaults are lamb 5e-3, scale 0.025; ours are the HEX paper's
    CIFAR settings, lamb 0.0051, scale 0.1), without the all-reduce of C across processes.
    """
    batch = z1.shape[0]
    z1n = _standardise(z1)
    z2n = _standardise(z2)
    corr = z1n.T @ z2n / batch
    on_diag = (torch.diagonal(corr) - 1).pow(2).sum()
    off_diag = corr.pow(2).sum() - torch.diagonal(corr).pow(2).sum()
    return scale_loss * (on_diag + lamb * off_diag)


def _standardise(z: Tensor) -> Tensor:
    """Per-feature (z - mean) / sqrt(biased var + 1e-5) over the batch: BatchNorm1d without affine."""
    mean = z.mean(dim=0)
    var = z.var(dim=0, unbiased=False)
    return (z - mean) / torch.sqrt(var + _BN_EPS)


def vicreg(
    z1: Tensor, z2: Tensor, sim_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0
) -> Tensor:
    """VICReg: z1, z2 [B, D] -> sim_weight * MSE + var_weight * variance + cov_weight * covariance.

    invariance: mean((z1 - z2)^2); variance: sum over views of mean_j relu(1 - sqrt(var_j + 1e-4))
    (unbiased var); covariance: sum over views of sum_{i != j} Cov_ij^2 / D with Cov = zc^T zc / (B - 1).
    Matches solo-learn `vicreg_loss_func` term for term.
    """
    sim = F.mse_loss(z1, z2)
    var = _variance_term(z1) + _variance_term(z2)
    cov = _covariance_term(z1) + _covariance_term(z2)
    return sim_weight * sim + var_weight * var + cov_weight * cov


def _variance_term(z: Tensor) -> Tensor:
    return F.relu(1 - torch.sqrt(z.var(dim=0) + _VICREG_VAR_EPS)).mean()


def _covariance_term(z: Tensor) -> Tensor:
    batch, dim = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (batch - 1)
    off = cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()
    return off / dim


def byol(p: Tensor, z: Tensor) -> Tensor:
    """BYOL: p [B, D] online predictions, z [B, D] target projections -> 2 - 2 mean cos(p_i, z_i).

    z is detached (the EMA target). Matches solo-learn `byol_loss_func` (simplified form, which uses
    F.cosine_similarity and its eps 1e-8).
    """
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()


def simsiam(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam: p [B, D] predictions, z [B, D] projections of the other view -> -mean cos(p_i, z_i).

    z is detached (the stop-gradient). Matches solo-learn `simsiam_loss_func` (simplified form); the
    method symmetrises (simsiam(p1, z2) + simsiam(p2, z1)) / 2.
    """
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def mocov2(query: Tensor, key: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo v2: query [B, D], key [B, D] (its positive), queue [K, D] of past keys -> 0-dim loss.

    Cross-entropy of [q.k, q.queue^T] / t with the positive first, on L2-normalised rows. Matches
    solo-learn `mocov2plus_loss_func`, with two deliberate differences: the queue is [K, D] (rows,
    as for the HEX candidates cat[key, queue]; solo-learn stores [D, K]), and the rows are normalised
    here (solo-learn's method normalises its projector outputs and queue before the call: same
    values). key and queue are detached: they come from the momentum encoder.
    """
    q = F.normalize(query, dim=-1)
    k = F.normalize(key.detach(), dim=-1)
    bank = F.normalize(queue.detach(), dim=-1)
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ bank.T
    logits = torch.cat([pos, neg], dim=1) / temperature
    targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, targets)
