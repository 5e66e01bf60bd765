"""fp32 inputs on the tensor cores: the dot named by kernels/config.py FP32_DOT ("tf32x3").

1. The choice, by emulation (numpy, no GPU): the candidate fp32 dots -- tf32, tf32x3 (the split the
   kernel writes out, kernels/_tiles.py: dot_f32acc), Triton's chained tf32x3, bf16x3, bf16x6 --
   with round-to-nearest splits a = hi + lo, the products each scheme keeps and a sequential fp32
   accumulation (one rounding per product, as an FMA), against an fp64 matmul of the same
   normalised fp32 rows, next to the plain fp32 dot ("ieee"). The chosen scheme must stay within
   ERROR_FACTOR of fp32's error on random and clustered unit rows at D = 128 and 256; tf32 and bf16x3
   do not, so a wrong choice fails. `python tests/test_kernel_fp32_dot.py` prints the table.
2. The kernel's own tf32x3 path through the interpreter (HEXFAST_FP32_DOT=tf32x3: its three dots of
   tf32 parts then run as numpy fp32 matmuls; the GPU's tensor cores compute the same products and
   differ in accumulation order only): what holds bit for bit (s_ik = s_ki; eps = the mean of
   kthvalue of the kernel's own similarities) and the fp32 tolerances against the reference.
The default under the interpreter stays "ieee" (it ignores input_precision): the other CPU tests'
numbers do not change with FP32_DOT.
"""
import numpy as np
import pytest
import torch

from kernels.config import FP32_DOT

ERROR_FACTOR = 1.5  # max and mean |s - s_fp64| of the chosen dot over those of the fp32 dot
_U = np.uint32


def _tf32(x):
    """Round to tf32 (10 explicit mantissa bits), to nearest, ties away (PTX cvt.rna.tf32.f32)."""
    return ((x.astype(np.float32).view(_U) + _U(0x1000)) & _U(0xFFFFE000)).view(np.float32)


def _tf32_trunc(x):
    """What a tensor core reads from an fp32 register given as tf32: the low 13 bits dropped."""
    return (x.astype(np.float32).view(_U) & _U(0xFFFFE000)).view(np.float32)


def _bf16(x):
    """Round to bf16 (7 explicit mantissa bits), to nearest even."""
    b = x.astype(np.float32).view(_U)
    return ((b + _U(0x7FFF) + ((b >> _U(16)) & _U(1))) & _U(0xFFFF0000)).view(np.float32)


def _dot(a, b, acc=None):
    """acc + a @ b.T in fp32, accumulated over the features in order, one rounding per step."""
    out = np.zeros((a.shape[0], b.shape[0]), np.float32) if acc is None else acc.astype(np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    for d in range(a.shape[1]):  # the fp64 product of two fp32 values is exact: one rounding, an FMA
        out = (out.astype(np.float64) + a64[:, d:d + 1] * b64[None, :, d]).astype(np.float32)
    return out


def _split(x, rnd, parts):
    out = []
    for _ in range(parts):
        out.append(rnd(x))
        x = (x - out[-1]).astype(np.float32)  # exact in fp32
    return out


def emulated_dot(scheme: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[M, N] fp32 similarities of fp32 rows a, b as the dot `scheme` computes them."""
    if scheme in ("ieee", "fp32"):
        return _dot(a, b)
    if scheme == "tf32":
        return _dot(_tf32(a), _tf32(b))
    if scheme == "tf32x3":  # kernels/_tiles.py: (a_lo b_hi + a_hi b_lo), then a_hi b_hi onto it
        (ah, al), (bh, bl) = _split(a, _tf32, 2), _split(b, _tf32, 2)
        return _dot(ah, bh, _dot(al, bh) + _dot(ah, bl))
    if scheme == "tf32x3-triton":  # Triton's input_precision="tf32x3": lo unrounded, one chain
        ah, bh = _tf32(a), _tf32(b)
        al, bl = _tf32_trunc(a - ah), _tf32_trunc(b - bh)
        return _dot(ah, bh, _dot(ah, bl, _dot(al, bh)))
    if scheme == "bf16x3":  # Triton's order: mid.hi, hi.mid, hi.hi
        (ah, am), (bh, bm) = _split(a, _bf16, 2), _split(b, _bf16, 2)
        return _dot(ah, bh, _dot(ah, bm, _dot(am, bh)))
    if scheme == "bf16x6":
        (ah, am, al), (bh, bm, bl) = _split(a, _bf16, 3), _split(b, _bf16, 3)
        r = _dot(am, bm)
        for x, y in ((al, bh), (ah, bl), (am, bh), (ah, bm), (ah, bh)):
            r = _dot(x, y, r)
        return r
    raise ValueError(f"no emulation of the fp32 dot {scheme!r}")


def unit_rows(kind: str, n: int, d: int, seed: int = 0) -> np.ndarray:
    """fp32 rows divided by their fp32 norms (as the kernel divides on load): random or clustered
    (8 centres, spread 0.05: many similarities near 1, where the threshold of such batches lies)."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        x = rng.standard_normal((n, d))
    else:
        x = rng.standard_normal((8, d))[rng.integers(0, 8, n)] + 0.05 * rng.standard_normal((n, d))
    x = x.astype(np.float32)
    return x / np.sqrt((x * x).sum(axis=1, dtype=np.float32))[:, None]


def errors(scheme: str, z: np.ndarray) -> tuple[float, float]:
    """(max, mean) |s - s_fp64| of the square similarity matrix of z."""
    z64 = z.astype(np.float64)
    e = np.abs(emulated_dot(scheme, z, z) - z64 @ z64.T)
    return float(e.max()), float(e.mean())


CASES = [(kind, d) for kind in ("random", "clustered") for d in (128, 256)]


@pytest.mark.parametrize("kind,d", CASES)
def test_the_chosen_fp32_dot_is_as_accurate_as_fp32(kind, d):
    z = unit_rows(kind, 160, d)
    base_max, base_mean = errors("ieee", z)
    got_max, got_mean = errors(FP32_DOT, z)
    assert got_max <= ERROR_FACTOR * base_max and got_mean <= ERROR_FACTOR * base_mean, (
        FP32_DOT, got_max, got_mean, base_max, base_mean)
    # the bound discriminates: one tf32 dot and the two-part bf16 split fail it
    for worse in ("tf32", "bf16x3"):
        assert errors(worse, z)[1] > 4 * ERROR_FACTOR * base_mean, worse


def test_the_emulated_split_is_symmetric_and_tritons_chain_is_not():
    # why the kernel writes the split out instead of passing input_precision="tf32x3" to tl.dot
    z = unit_rows("random", 96, 128, seed=1)
    s = emulated_dot("tf32x3", z, z)
    assert np.array_equal(s, s.T)
    t = emulated_dot("tf32x3-triton", z, z)
    assert not np.array_equal(t, t.T)


# ------------------------------------------------------------------ the kernel's own tf32x3 path
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def tf32x3(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("HEXFAST_FP32_DOT", "tf32x3")


def _fp64_sims(a, c):
    a64 = torch.nn.functional.normalize(a.double(), dim=1)
    c64 = torch.nn.functional.normalize(c.double(), dim=1)
    return a64 @ c64.T


@pytest.mark.parametrize("d", [37, 128, 300])  # 300: the K-loop path
def test_kernel_tf32x3_similarities_symmetric_and_fp32_accurate(tf32x3, monkeypatch, d):
    from kernels.debug import similarity_matrix

    g = torch.Generator().manual_seed(d)
    x = torch.randn(150, d, generator=g).to(DEV)
    y = torch.randn(70, d, generator=g).to(DEV)
    s = similarity_matrix(x, x)
    assert torch.equal(s, s.T)  # the one-kernel square backward reads G_ki off the tile s_ik
    sxy, syx = similarity_matrix(x, y), similarity_matrix(y, x)
    assert torch.equal(sxy, syx.T)  # the candidates' backward streams the transposed orientation
    err = (s.double() - _fp64_sims(x, x)).abs()
    monkeypatch.setenv("HEXFAST_FP32_DOT", "ieee")
    plain = similarity_matrix(x, x)
    base = (plain.double() - _fp64_sims(x, x)).abs()
    assert not torch.equal(s, plain)  # the split ran (under the interpreter too)
    assert err.max() <= ERROR_FACTOR * max(base.max(), 2 ** -24), (err.max(), base.max())


@pytest.mark.parametrize("threshold", ["adaptive", 0.7])
def test_kernel_tf32x3_loss_within_the_fp32_tolerances(tf32x3, threshold):
    from hexfast.hex_loss import hex_loss
    from hexfast.reference import hex_reference, nearest_rank_index
    from kernels.debug import similarity_matrix

    g = torch.Generator().manual_seed(5)
    z1 = torch.randn(96, 128, generator=g).to(DEV).requires_grad_()
    z2 = torch.randn(96, 128, generator=g).to(DEV).requires_grad_()
    kw = dict(temperature=0.1, threshold=threshold, quantile=0.9, hierarchy_weight=0.5,
              positive_in_denominator=False)
    loss, stats = hex_loss(z1, z2, kernel="triton", return_stats=True, **kw)
    g1, g2 = torch.autograd.grad(loss, [z1, z2])
    rloss, rstats = hex_reference(z1, z2, **kw)
    r1, r2 = torch.autograd.grad(rloss, [z1, z2])
    torch.testing.assert_close(loss, rloss, rtol=1e-5, atol=1e-5)  # the fp32 tolerances, unchanged
    for got, ref in ((g1, r1), (g2, r2)):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * max(1.0, ref.abs().max().item()))
    if threshold == "adaptive":
        # bit for bit: eps is the mean of the kth values of the kernel's own (tf32x3) similarities
        own = similarity_matrix(torch.cat([z1, z2]).detach(), torch.cat([z1, z2]).detach())
        kth = own.kthvalue(nearest_rank_index(own.shape[1], 0.9) + 1, dim=1).values
        assert torch.equal(stats["eps"].reshape(()), kth.mean())
        torch.testing.assert_close(stats["eps"], rstats["eps"], rtol=0, atol=2e-6)


if __name__ == "__main__":
    schemes = ("ieee", "tf32", "tf32x3", "tf32x3-triton", "bf16x3", "bf16x6")
    n = 512
    print(f"max / mean |s - s_fp64| over the {n} x {n} similarity matrix (x fp32's max error), symmetric?")
    print("| rows | D | " + " | ".join(schemes) + " |")
    print("|---|---|" + "---|" * len(schemes))
    for kind, d in CASES:
        z = unit_rows(kind, n, d)
        base = errors("ieee", z)[0]
        cells = []
        for sc in schemes:
            mx, mn = errors(sc, z)
            s = emulated_dot(sc, z, z)
            cells.append(f"{mx:.2e} / {mn:.1e} (x{mx / base:.1f}){'' if np.array_equal(s, s.T) else ', asym.'}")
        print(f"| {kind} | {d} | " + " | ".join(cells) + " |")
