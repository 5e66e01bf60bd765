"""The standard SSL losses against hand-written float64 formulas and known invariances."""

import math

import pytest
import torch

from hexfast import losses


def pair(batch=7, dim=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(batch, dim, generator=g, dtype=dtype)
    return z1, z1 + 0.7 * torch.randn(batch, dim, generator=g, dtype=dtype)


def unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def close(got, want, rel=1e-10):
    assert got.item() == pytest.approx(want, rel=rel, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# hand-written formulas (plain Python floats)


def test_infonce_formula():
    z1, z2 = pair()
    x = [unit(r) for r in torch.cat([z1, z2]).tolist()]
    n, b, t = len(x), len(x) // 2, 0.3
    total = 0.0
    for i in range(n):
        p = (i + b) % n
        den = sum(math.exp(dot(x[i], x[k]) / t) for k in range(n) if k != i)
        total += -math.log(math.exp(dot(x[i], x[p]) / t) / den)
    close(losses.infonce(z1, z2, t), total / n)


def test_nnclr_formula():
    nn, p = pair(seed=1)
    a, c, t = [unit(r) for r in nn.tolist()], [unit(r) for r in p.tolist()], 0.2
    total = 0.0
    for i in range(len(a)):
        den = sum(math.exp(dot(a[i], c[k]) / t) for k in range(len(c)))
        total += -(dot(a[i], c[i]) / t - math.log(den))
    close(losses.nnclr(nn, p, t), total / len(a))


def _standardised_columns(z):
    cols = list(zip(*z.tolist()))
    out = []
    for col in cols:
        mean = sum(col) / len(col)
        var = sum((v - mean) ** 2 for v in col) / len(col)  # biased, as BatchNorm normalises
        out.append([(v - mean) / math.sqrt(var + 1e-5) for v in col])
    return out  # [D][B]


def test_barlow_twins_formula():
    z1, z2 = pair(seed=2)
    a, b = _standardised_columns(z1), _standardised_columns(z2)
    batch, dim, lamb, scale = z1.shape[0], z1.shape[1], 0.0051, 0.1
    total = 0.0
    for i in range(dim):
        for j in range(dim):
            c = sum(a[i][n] * b[j][n] for n in range(batch)) / batch
            total += (1 - c) ** 2 if i == j else lamb * c * c
    close(losses.barlow_twins(z1, z2), scale * total)


def test_barlow_twins_matches_batchnorm():
    """solo-learn standardises with a fresh BatchNorm1d(affine=False) in training mode."""
    z1, z2 = pair(seed=3)
    bn = torch.nn.BatchNorm1d(z1.shape[1], affine=False).double()
    a, b = bn(z1), bn(z2)
    corr = a.T @ b / z1.shape[0]
    eye = torch.eye(z1.shape[1], dtype=torch.float64)
    cdif = (corr - eye).pow(2)
    cdif[~eye.bool()] *= 0.005
    close(losses.barlow_twins(z1, z2, lamb=0.005, scale_loss=0.025), 0.025 * cdif.sum().item())


def test_vicreg_formula():
    z1, z2 = pair(seed=4)
    batch, dim = z1.shape
    a, b = z1.tolist(), z2.tolist()
    sim = sum((a[n][d] - b[n][d]) ** 2 for n in range(batch) for d in range(dim)) / (batch * dim)

    def var_cov(z):
        cols = list(zip(*z))
        means = [sum(c) / batch for c in cols]
        cov = [[sum((cols[i][n] - means[i]) * (cols[j][n] - means[j]) for n in range(batch)) / (batch - 1)
                for j in range(dim)] for i in range(dim)]
        var = sum(max(0.0, 1 - math.sqrt(cov[d][d] + 1e-4)) for d in range(dim)) / dim
        off = sum(cov[i][j] ** 2 for i in range(dim) for j in range(dim) if i != j) / dim
        return var, off

    (v1, c1), (v2, c2) = var_cov(a), var_cov(b)
    want = 25 * sim + 25 * (v1 + v2) + 1 * (c1 + c2)
    close(losses.vicreg(z1, z2), want)
    close(losses.vicreg(z1, z2, sim_weight=1.0, var_weight=0.0, cov_weight=0.0), sim)


def test_byol_and_simsiam_formulas():
    p, z = pair(seed=5)
    cos = [dot(unit(a), unit(b)) for a, b in zip(p.tolist(), z.tolist())]
    close(losses.byol(p, z), 2 - 2 * sum(cos) / len(cos))
    close(losses.simsiam(p, z), -sum(cos) / len(cos))


def test_mocov2_formula():
    q, k = pair(seed=6)
    queue = torch.randn(13, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    t = 0.2
    Q, K, R = ([unit(r) for r in m.tolist()] for m in (q, k, queue))
    total = 0.0
    for i in range(len(Q)):
        logits = [dot(Q[i], K[i]) / t] + [dot(Q[i], r) / t for r in R]
        total += -(logits[0] - math.log(sum(math.exp(v) for v in logits)))
    close(losses.mocov2(q, k, queue, t), total / len(Q))


# ------------------------------------------------------------------------------------------------
# invariances and gradients


@pytest.mark.parametrize("scale", [1e-3, 7.0, 1e4])
def test_cosine_losses_ignore_row_scale(scale):
    z1, z2 = pair(seed=8)
    queue = torch.randn(9, 5, dtype=torch.float64)
    close(losses.infonce(z1 * scale, z2, 0.1), losses.infonce(z1, z2, 0.1).item())
    close(losses.nnclr(z1 * scale, z2 / scale, 0.1), losses.nnclr(z1, z2, 0.1).item())
    close(losses.byol(z1 * scale, z2), losses.byol(z1, z2).item())
    close(losses.simsiam(z1, z2 * scale), losses.simsiam(z1, z2).item())
    close(losses.mocov2(z1 * scale, z2, queue * scale, 0.2), losses.mocov2(z1, z2, queue, 0.2).item())


def test_symmetries():
    z1, z2 = pair(seed=9)
    close(losses.infonce(z2, z1), losses.infonce(z1, z2).item())
    close(losses.barlow_twins(z2, z1), losses.barlow_twins(z1, z2).item())
    close(losses.vicreg(z2, z1), losses.vicreg(z1, z2).item())
    perm = torch.randperm(z1.shape[0])
    close(losses.infonce(z1[perm], z2[perm]), losses.infonce(z1, z2).item())  # order of images
    close(losses.nnclr(z1[perm], z2[perm]), losses.nnclr(z1, z2).item())


def test_barlow_ignores_per_feature_affine_and_vicreg_common_shift():
    z1, z2 = pair(seed=10)
    gain = torch.rand(5, dtype=torch.float64) + 0.5
    shift = torch.randn(5, dtype=torch.float64)
    close(losses.barlow_twins(z1 + shift, z2), losses.barlow_twins(z1, z2).item())
    # a per-feature gain changes only how much the 1e-5 in the standardisation matters
    close(losses.barlow_twins(z1 * gain, z2), losses.barlow_twins(z1, z2).item(), rel=1e-4)
    close(losses.vicreg(z1 + shift, z2 + shift), losses.vicreg(z1, z2).item())


def test_byol_is_2_plus_2_simsiam_and_targets_get_no_gradient():
    p, z = pair(seed=11)
    close(losses.byol(p, z), 2 + 2 * losses.simsiam(p, z).item())
    for fn in (losses.byol, losses.simsiam):
        p1, z1 = p.clone().requires_grad_(), z.clone().requires_grad_()
        fn(p1, z1).backward()
        assert z1.grad is None and p1.grad is not None and p1.grad.abs().sum() > 0
    q, k, queue = (t.clone().requires_grad_() for t in (p, z, torch.randn(4, 5, dtype=torch.float64)))
    losses.mocov2(q, k, queue).backward()
    assert k.grad is None and queue.grad is None and q.grad is not None


def test_perfect_alignment_values():
    z = torch.eye(4, dtype=torch.float64)  # orthonormal rows, identical views
    close(losses.byol(z, z), 0.0)
    close(losses.simsiam(z, z), -1.0)
    # InfoNCE, tau = 1: each row sees its positive e^1 and six orthogonal negatives e^0
    close(losses.infonce(z, z, 1.0), -1 + math.log(math.e + 6))


@pytest.mark.parametrize("tau", [0.01, 0.05])
def test_small_temperature_is_stable(tau):
    z1, z2 = pair(seed=12, dtype=torch.float32)
    z1.requires_grad_()
    for value in (losses.infonce(z1, z2, tau), losses.nnclr(z1, z2, tau),
                  losses.mocov2(z1, z2, torch.randn(6, 5), tau)):
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(z1.grad).all()
    want = losses.infonce(z1.detach().double(), z2.double(), tau)
    torch.testing.assert_close(losses.infonce(z1.detach(), z2, tau).double(), want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("fn", [losses.infonce, losses.barlow_twins, losses.vicreg])
def test_gradcheck(fn):
    z1, z2 = pair(batch=5, dim=3, seed=13)
    assert torch.autograd.gradcheck(fn, (z1.requires_grad_(), z2.requires_grad_()))
