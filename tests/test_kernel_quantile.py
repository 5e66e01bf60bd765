"""The fused selection (sketch -> bracket -> one verified pass -> finisher, repairs on device).

Runs under the Triton interpreter on the CPU (tests/conftest.py) and on CUDA where available. Every
result must equal torch.kthvalue of the kernel's own similarity matrix bit for bit, whether the
sketch's bracket held (status 1) or the row was repaired (status 2); the tests force each repair
path by narrowing or misplacing the bracket and shrinking the collect buffer.
"""
import dataclasses
import os

import pytest
import torch

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import kernels.hex_triton as hex_triton  # noqa: E402
from hexfast.reference import nearest_rank_index, row_quantiles as ref_row_quantiles, similarities  # noqa: E402
from kernels._tiles import fkey, funkey  # noqa: E402
from kernels.config import select_plan  # noqa: E402
from kernels.debug import similarity_matrix  # noqa: E402
from kernels.hex_triton import row_quantiles  # noqa: E402

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


@triton.jit
def _keys_kernel(X, K, B, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    x = tl.load(X + i, mask=i < n, other=0.0)
    k = fkey(x)
    tl.store(K + i, k, mask=i < n)
    tl.store(B + i, funkey(k), mask=i < n)


def test_keys_are_order_preserving_and_invertible():
    x = torch.tensor([-2.0, -1.0, -1e-30, -1e-45, -0.0, 0.0, 1e-45, 1e-30, 0.5, 1.0, 2.0], device=DEV)
    y = torch.randn(500, device=DEV)
    for v in (x, y.sort().values):
        k = torch.empty(v.numel(), device=DEV, dtype=torch.int64)
        back = torch.empty_like(v)
        _keys_kernel[(1,)](v, k, back, v.numel(), BLOCK=512)
        assert torch.all(k[1:] >= k[:-1]) and k.min() >= 0 and k.max() < 2**32
        assert torch.equal(back, v + 0.0)  # -0.0 folds onto +0.0
    assert k.unique().numel() == y.unique().numel()


@pytest.fixture
def plan_override(monkeypatch):
    """Replace fields of the selection plan (narrow or misplaced brackets, small buffers)."""

    def install(**fields):
        def patched(n_cols, kth):
            plan = select_plan(n_cols, kth)
            return dataclasses.replace(plan, **{k: v(plan) if callable(v) else v for k, v in fields.items()})

        monkeypatch.setattr(hex_triton, "select_plan", patched)

    return install


def _check_exact(a, c, q, expect_status=None):
    got, status = row_quantiles(a, c, q, return_status=True)
    own = similarity_matrix(a, c)
    assert torch.equal(got, _exact_kth(own, q))
    if expect_status is not None:
        assert set(status.tolist()) == set(expect_status), status.unique(return_counts=True)
    return got, status


def _rand(m, n, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g).to(DEV, dtype), torch.randn(n, d, generator=g).to(DEV, dtype)


@pytest.mark.parametrize("m,n,d", [(5, 7, 3), (37, 150, 16), (64, 700, 8)])
@pytest.mark.parametrize("q", [0.0, 0.5, 0.99, 1.0])
def test_exact_on_own_matrix_and_close_to_reference(m, n, d, q):
    a, c = _rand(m, n, d, m * 1000 + n)
    got, _ = _check_exact(a, c, q)
    # within a few ulps of the reference (its s differs only by summation order)
    torch.testing.assert_close(got, ref_row_quantiles(similarities(a, c), q), rtol=0, atol=1e-6)


def test_bracket_holds_on_random_and_clustered_data():
    # the sketch's bracket is expected to hold: no repair at all at q = 0.99
    a, _ = _rand(400, 400, 32, 1)
    _check_exact(a, a, 0.99, expect_status={1})
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(8, 32, generator=g)
    sub = centres.repeat_interleave(4, 0) + 0.3 * torch.randn(32, 32, generator=g)  # 2-level clusters
    x = (sub.repeat_interleave(12, 0) + 0.1 * torch.randn(384, 32, generator=g)).to(DEV)
    _check_exact(x, x, 0.99, expect_status={1})


def test_square_fp32_bitwise_equals_reference_when_products_are_exact():
    # entries +-0.5 in D = 4: unit norms and every dot product exact, so the kernel's S is the
    # reference's S bit for bit, and so is every quantile and the eps mean.
    g = torch.Generator().manual_seed(3)
    x = (torch.randint(0, 2, (64, 4), generator=g).float() - 0.5).to(DEV)
    for q in (0.9, 0.99):
        got = row_quantiles(x, x, q)
        ref = ref_row_quantiles(similarities(x, x), q)
        assert torch.equal(got, ref)
        assert got.mean() == ref.mean()


def test_repair_when_the_kth_value_lies_above_the_bracket(plan_override):
    # hi at the lowest kept sample value: #{s >= hi} >= K, the search restarts from [hi, 4)
    plan_override(j_hi=lambda p: p.top - 1, j_lo=-1)
    a, c = _rand(40, 300, 8, 4)
    _check_exact(a, c, 0.9, expect_status={2})


def test_repair_when_the_kth_value_lies_below_the_bracket(plan_override):
    # lo at the sample maximum: fewer than K values in [lo, 4)
    plan_override(j_lo=0, j_hi=-1)
    a, c = _rand(40, 300, 8, 5)
    _check_exact(a, c, 0.5, expect_status={2})


def test_repair_on_buffer_overflow_runs_the_count_passes(plan_override):
    # a 32-value buffer against a bracket holding every value: the counting refinement must narrow
    # the interval over several passes before it can collect
    plan_override(j_lo=-1, j_hi=-1, cap=32)
    a, c = _rand(70, 2000, 8, 6)
    _check_exact(a, c, 0.5, expect_status={2})


def test_ties_at_the_bracket_edge_end_on_a_single_value(plan_override):
    # 40 rows from 2 orthogonal directions: each row holds 20 copies of 0 and of 1, more than the
    # buffer, so the refinement must stop on an interval holding one fp32 value (0 is the hard
    # case: fp32 values crowd towards it)
    plan_override(j_lo=-1, j_hi=-1, cap=16)
    base = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    x = base[torch.arange(40) % 2].to(DEV)
    for q in (0.25, 0.99):
        _check_exact(x, x, q, expect_status={2})


def test_collapsed_rows_select_their_tied_value():
    x = torch.ones(50, 6, device=DEV)
    got, _ = _check_exact(x, x, 0.99)
    assert torch.all(got == got[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(dtype):
    a, _ = _rand(150, 150, 24, 5, dtype)
    got, _ = _check_exact(a, a, 0.99)
    torch.testing.assert_close(got, ref_row_quantiles(similarities(a, a), 0.99), rtol=0, atol=1e-5)


def test_rejects_bad_input():
    x = torch.randn(4, 3, device=DEV)
    with pytest.raises(ValueError, match="quantile"):
        row_quantiles(x, x, 1.5)
    with pytest.raises(TypeError, match="supports"):
        row_quantiles(x.double(), x.double(), 0.5)
    with pytest.raises(ValueError, match="same D"):
        row_quantiles(x, torch.randn(4, 5, device=DEV), 0.5)
