"""The streamed selection of kernels/quantile.py: exactly torch.kthvalue of the kernel's own matrix.

Runs under the Triton interpreter on the CPU (tests/conftest.py) and on CUDA where available.
N > SELECT_CAPACITY makes the count passes run; small N goes straight to the collect pass.
"""
import os

import pytest
import torch

pytest.importorskip("triton")

from hexfast.reference import nearest_rank_index, row_quantiles as ref_row_quantiles, similarities  # noqa: E402
from kernels.debug import similarity_matrix  # noqa: E402
from kernels.quantile import _from_key, _to_key, row_quantiles  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _exact_kth(s: torch.Tensor, q: float) -> torch.Tensor:
    idx = nearest_rank_index(s.shape[1], q)
    return s.kthvalue(idx + 1, dim=1).values


def test_kernels_package_is_the_repos():
    import kernels

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert os.path.dirname(os.path.abspath(kernels.__file__)) == os.path.join(root, "kernels")


def test_import_kernels_does_not_import_triton():
    import subprocess
    import sys

    code = "import sys, kernels; assert 'triton' not in sys.modules; print(kernels.__all__)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_keys_are_order_preserving_and_invertible():
    x = torch.tensor([-2.0, -1.0, -1e-30, -1e-45, -0.0, 0.0, 1e-45, 1e-30, 0.5, 1.0, 2.0])
    k = _to_key(x)
    assert torch.all(k[1:] >= k[:-1])
    assert k[4] == k[5]  # -0.0 folds onto +0.0
    back = _from_key(k)
    assert torch.equal(back[[0, 1, 2, 3, 5, 6, 7, 8, 9, 10]], x[[0, 1, 2, 3, 5, 6, 7, 8, 9, 10]])
    y = torch.randn(1000)
    assert torch.equal(_from_key(_to_key(y)), y + 0.0)


@pytest.fixture
def small_capacity(monkeypatch):
    """A collect buffer of 8 values makes small rows go through several count passes (fast)."""
    import kernels.quantile as quantile

    monkeypatch.setattr(quantile, "SELECT_CAPACITY", 8)
    return 8


@pytest.mark.parametrize("m,n,d", [(5, 7, 3), (37, 150, 16)])
@pytest.mark.parametrize("q", [0.0, 0.5, 0.99, 1.0])
def test_row_quantiles_exact_on_own_matrix(m, n, d, q, small_capacity):
    _check_exact(m, n, d, q)


def test_row_quantiles_exact_at_shipped_capacity():
    _check_exact(64, 700, 8, 0.99)  # N > SELECT_CAPACITY: count passes, then the collect pass


def _check_exact(m, n, d, q):
    g = torch.Generator().manual_seed(m * 1000 + n)
    a = torch.randn(m, d, generator=g).to(DEV)
    c = torch.randn(n, d, generator=g).to(DEV)
    got = row_quantiles(a, c, q)
    own = similarity_matrix(a, c)
    assert torch.equal(got, _exact_kth(own, q))
    # and within a few ulps of the reference (its s differs only by summation order)
    ref = ref_row_quantiles(similarities(a, c), q)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_row_quantiles_square_fp32_bitwise_equals_reference_when_products_are_exact(small_capacity):
    # entries +-0.5 in D = 4: unit norms and every dot product exact, so the kernel's S is the
    # reference's S bit for bit, and so is every quantile and the eps mean.
    g = torch.Generator().manual_seed(3)
    x = (torch.randint(0, 2, (64, 4), generator=g).float() - 0.5).to(DEV)
    for q in (0.9, 0.99):
        got = row_quantiles(x, x, q)
        ref = ref_row_quantiles(similarities(x, x), q)
        assert torch.equal(got, ref)
        assert got.mean() == ref.mean()


def test_heavy_ties_end_on_a_single_value(small_capacity):
    # 40 rows from 2 orthogonal directions: each row holds 20 > capacity copies of 0 and of 1, so
    # the selection must stop on an interval holding one fp32 value (0 is the hard case: fp32
    # values crowd towards it).
    base = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    x = base[torch.arange(40) % 2].to(DEV)
    assert small_capacity < 20
    for q in (0.25, 0.99):
        got = row_quantiles(x, x, q)
        assert torch.equal(got, _exact_kth(similarity_matrix(x, x), q))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_row_quantiles_half_inputs(dtype, small_capacity):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(150, 24, generator=g).to(DEV, dtype)
    got = row_quantiles(x, x, 0.99)
    assert torch.equal(got, _exact_kth(similarity_matrix(x, x), 0.99))
    ref = ref_row_quantiles(similarities(x, x), 0.99)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_row_quantiles_rejects_bad_input():
    x = torch.randn(4, 3, device=DEV)
    with pytest.raises(ValueError, match="quantile"):
        row_quantiles(x, x, 1.5)
    with pytest.raises(TypeError, match="supports"):
        row_quantiles(x.double(), x.double(), 0.5)
    with pytest.raises(ValueError, match="same D"):
        row_quantiles(x, torch.randn(4, 5, device=DEV), 0.5)
