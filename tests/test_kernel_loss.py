"""The fused Triton HEX loss against the reference (hexfast.reference): loss, eps, stats, gradients.

Runs under the Triton interpreter on the CPU (tests/conftest.py) and on CUDA where available.
Tolerances (documented in docs/kernel.md): fp32 loss rtol 1e-5, gradients rtol 1e-4; bf16/fp16
inputs (compared with the reference computed in fp32 from the same values) loss rtol 1e-3,
gradients rtol/atol 2e-2 on a GPU (the backward feeds G to the tensor cores in the input dtype).
"""
import math

import pytest
import torch

pytest.importorskip("triton")

from hexfast.hex_loss import hex_loss, hex_rect_loss  # noqa: E402
from hexfast.reference import hex_rect as ref_rect, hex_reference  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def hex_loss_triton(z1, z2, **kw):
    """The two-view loss through the public API on the fused kernel: (loss, stats)."""
    return hex_loss(z1, z2, kernel="triton", return_stats=True, **kw)


def hex_rect(anchors, candidates, pos, slf, *, eps=None, **kw):
    """The rectangular form through the public API on the fused kernel: (loss, stats)."""
    return hex_rect_loss(anchors, candidates, pos, slf, threshold=eps, kernel="triton", return_stats=True, **kw)
STAT_KEYS = ("eps", "hier_fraction", "hier_count", "neg_count", "empty_rows", "rows")


def _tol(dtype):
    if dtype == torch.float32:
        return dict(loss=1e-5, grad=1e-4, gabs=1e-5)
    return dict(loss=1e-3, grad=2e-2, gabs=2e-3)


def _inputs(b, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed * 7919 + b * 131 + d)
    z1 = torch.randn(b, d, generator=g).to(DEV, dtype).requires_grad_()
    z2 = torch.randn(b, d, generator=g).to(DEV, dtype).requires_grad_()
    up = torch.randn((), generator=g).to(DEV)  # random upstream gradient
    return z1, z2, up


def _kw(threshold, w, pos, quantile=0.9, temperature=0.1):
    return dict(temperature=temperature, threshold=threshold, quantile=quantile,
                hierarchy_weight=w, positive_in_denominator=pos)


def _check_square(z1, z2, up, kw, groups=None, exact_counts=True):
    tol = _tol(z1.dtype)
    loss, stats = hex_loss_triton(z1, z2, groups=groups, **kw)
    g1, g2 = torch.autograd.grad(loss * up, [z1, z2])
    rloss, rstats = hex_reference(z1, z2, groups=groups, **kw)
    r1, r2 = torch.autograd.grad(rloss * up, [z1, z2])
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, rloss.to(loss.dtype), rtol=tol["loss"], atol=tol["loss"])
    for got, ref in ((g1, r1), (g2, r2)):
        assert got.dtype == ref.dtype and got.shape == ref.shape
        scale = max(1.0, ref.float().abs().max().item())  # atol relative to the gradient's size
        torch.testing.assert_close(got.float(), ref.float(), rtol=tol["grad"], atol=tol["gabs"] * scale)
    assert set(stats) == set(rstats)
    if math.isnan(rstats["eps"].item()):
        assert math.isnan(stats["eps"].item())
    else:
        torch.testing.assert_close(stats["eps"], rstats["eps"], rtol=0, atol=2e-6)
    for key in ("neg_count", "rows", "empty_rows") + (("hier_count",) if exact_counts else ()):
        assert stats[key].item() == rstats[key].item(), key
    for key in STAT_KEYS:
        assert not stats[key].requires_grad
    return loss, stats


@pytest.mark.parametrize("b,d", [(2, 1), (37, 3)])
@pytest.mark.parametrize("threshold", ["adaptive", "none", 0.7, "groups"])
@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("pos", [False, True])
def test_every_rule_weight_and_positive_setting(b, d, threshold, w, pos):
    z1, z2, up = _inputs(b, d)
    groups = None
    if threshold == "groups":
        groups = torch.arange(b, device=DEV) % 3
        threshold = "adaptive"  # ignored when groups are given
    _check_square(z1, z2, up, _kw(threshold, w, pos), groups=groups)


@pytest.mark.parametrize("b", [2, 3, 37, 129])
@pytest.mark.parametrize("d", [1, 3, 64, 130])
def test_odd_shapes(b, d):
    z1, z2, up = _inputs(b, d, seed=1)
    _check_square(z1, z2, up, _kw("adaptive", 0.5, False, quantile=0.99))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_feature_loop_path_for_large_d(dtype):
    # D > 256 takes the K-loop path (several feature chunks, output chunks in the backward)
    z1, z2, up = _inputs(3, 300, dtype, seed=3)
    _check_square(z1, z2, up, _kw("adaptive", 0.5, True), exact_counts=dtype == torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("threshold", ["adaptive", 0.6])
def test_half_inputs(dtype, threshold):
    z1, z2, up = _inputs(37, 64, dtype, seed=2)
    # hier_count may differ by a pair whose s sits within an ulp of eps (the bf16 tile rounds the
    # normalisation differently from the reference's fp32 normalise-then-multiply)
    _check_square(z1, z2, up, _kw(threshold, 0.5, False), exact_counts=False)


def _pm_half(b, d=4, seed=0):
    """Entries +-0.5 (D = 4): unit norms, every similarity exactly in {-1, -0.5, 0, 0.5, 1}."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(0, 2, (2, b, d), generator=g).float() - 0.5
    z1 = z[0].to(DEV).requires_grad_()
    z2 = z[1].to(DEV).requires_grad_()
    return z1, z2, torch.tensor(0.7, device=DEV)


@pytest.mark.parametrize("eps", [0.5, math.nextafter(0.5, 0.0), math.nextafter(0.5, 1.0), 0.75, 0.0])
def test_fixed_threshold_exactly_at_just_below_and_just_above(eps):
    # with m = -1, M = 1 the values f are 0, 0.25, 0.5, 0.75, 1 exactly: eps = 0.5 excludes f = 0.5
    # (strict >), one ulp below includes it, one ulp above excludes it.
    z1, z2, up = _pm_half(24)
    loss, stats = _check_square(z1, z2, up, _kw(eps, 0.5, False))
    _, rstats = hex_reference(z1, z2, **_kw(eps, 0.5, False))
    assert stats["hier_count"].item() == rstats["hier_count"].item()


def test_adaptive_threshold_lands_on_tied_values():
    # every row's 0.5-quantile is one of the exact values, eps is their mean; s values equal to it
    # are regular, larger ones hierarchical, decided identically in the forward and the backward.
    z1, z2, up = _pm_half(20, seed=1)
    loss, stats = _check_square(z1, z2, up, _kw("adaptive", 0.5, False, quantile=0.5))
    rloss, rstats = hex_reference(z1, z2, **_kw("adaptive", 0.5, False, quantile=0.5))
    assert stats["eps"].item() == rstats["eps"].item()


def test_all_hierarchical_rows_are_empty_and_contribute_zero():
    z1, z2, up = _inputs(9, 5)
    groups = torch.zeros(9, dtype=torch.long, device=DEV)  # one group: every negative hierarchical
    loss, stats = _check_square(z1, z2, up, _kw("none", 0.0, False), groups=groups)
    assert loss.item() == 0.0 and stats["empty_rows"].item() == 18
    assert stats["hier_fraction"].item() == 1.0
    g1, = torch.autograd.grad(hex_loss_triton(z1, z2, groups=groups, **_kw("none", 0.0, False))[0], [z1])
    assert torch.count_nonzero(g1) == 0
    # with the positive in the denominator a row is -s/t + log e^{s/t} = 0 but not empty
    loss, stats = _check_square(z1, z2, up, _kw("none", 0.0, True), groups=groups)
    assert stats["empty_rows"].item() == 0 and abs(loss.item()) < 1e-5


@pytest.mark.parametrize("tau,w,one_exp", [(0.01, 0.5, False), (0.03, 0.5, True), (0.1, 1e-25, True),
                                          (0.1, 1e-30, False)])
def test_backward_exponentials_across_temperature_and_weight(tau, w, one_exp):
    # The backward factors 2^(l - lse2) = 2^(l - c) 2^(c - lse2) only while 2c - log2 w <= 126: at
    # tau = 0.01 and at w = 1e-30 it keeps one exponential per entry and direction. One group makes
    # every negative hierarchical, so a tiny w puts lse2 near its lower bound, the factor 2^(c - lse2)
    # near its largest (w = 1e-25: about 2^112).
    from kernels.hex_triton import _one_exp

    assert _one_exp(tau, w) == one_exp
    z1, z2, up = _inputs(37, 16, seed=5)
    for groups in (None, torch.zeros(37, dtype=torch.long, device=DEV)):
        _check_square(z1, z2, up, _kw("adaptive", w, False, temperature=tau), groups=groups)


def test_empty_hierarchy_equals_the_none_rule():
    z1, z2, up = _inputs(11, 6)
    groups = torch.arange(11, device=DEV)  # every sample its own group: H empty
    la, sa = _check_square(z1, z2, up, _kw("none", 0.3, False), groups=groups)
    lb, _ = hex_loss_triton(z1, z2, **_kw("none", 0.3, False))
    assert sa["hier_count"].item() == 0
    torch.testing.assert_close(la, lb)


def test_collapsed_batch():
    z = torch.ones(6, 8, device=DEV)
    z1 = z.clone().requires_grad_()
    z2 = (2 * z).requires_grad_()
    up = torch.tensor(1.0, device=DEV)
    for threshold in ("adaptive", 0.5):
        _check_square(z1, z2, up, _kw(threshold, 0.0, False))


def test_deterministic_bits():
    z1, z2, up = _inputs(70, 33, seed=4)
    runs = []
    for _ in range(2):
        loss, _ = hex_loss_triton(z1, z2, **_kw("adaptive", 0.5, True))
        runs.append((loss, *torch.autograd.grad(loss * up, [z1, z2])))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_finite_difference_directional_derivative():
    z1, z2, _ = _inputs(5, 4, seed=5)
    kw = _kw("none", 1.0, True, temperature=0.5)  # smooth: no mask can flip under the step
    loss, _ = hex_loss_triton(z1, z2, **kw)
    g1, g2 = torch.autograd.grad(loss, [z1, z2])
    v1, v2 = torch.randn_like(z1), torch.randn_like(z2)
    h = 1e-2
    with torch.no_grad():
        lp, _ = hex_loss_triton(z1 + h * v1, z2 + h * v2, **kw)
        lm, _ = hex_loss_triton(z1 - h * v1, z2 - h * v2, **kw)
    fd = (lp - lm).item() / (2 * h)
    analytic = ((g1 * v1).sum() + (g2 * v2).sum()).item()
    assert abs(fd - analytic) <= 2e-3 * max(1.0, abs(analytic))


@pytest.mark.parametrize("rule", ["adaptive", "fixed", "groups", "none"])
def test_rectangular_queue_form(rule):
    # MoCo-like: 13 queries against 40 candidates (keys then queue), no self, positive = own key
    g = torch.Generator().manual_seed(6)
    q = torch.randn(13, 7, generator=g).to(DEV).requires_grad_()
    c = torch.randn(40, 7, generator=g).to(DEV).requires_grad_()
    pos = torch.arange(13, device=DEV)
    slf = torch.full((13,), -1, device=DEV, dtype=torch.long)
    kw = dict(temperature=0.2, rule=rule, hierarchy_weight=0.5, positive_in_denominator=True)
    if rule == "adaptive":
        kw["eps"] = torch.tensor(0.3, device=DEV)
    elif rule == "fixed":
        kw["eps"] = 0.6
    elif rule == "groups":
        kw["anchor_groups"] = torch.arange(13, device=DEV) % 4
        kw["candidate_groups"] = torch.arange(40, device=DEV) % 4
    up = torch.tensor(1.3, device=DEV)
    loss, stats = hex_rect(q, c, pos, slf, **kw)
    gq, gc = torch.autograd.grad(loss * up, [q, c])
    rloss, rstats = ref_rect(q, c, pos, slf, **kw)
    rq, rc = torch.autograd.grad(rloss * up, [q, c])
    torch.testing.assert_close(loss, rloss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gq, rq, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gc, rc, rtol=1e-4, atol=1e-6)
    for key in ("hier_count", "neg_count", "empty_rows", "rows"):
        assert stats[key].item() == rstats[key].item(), key


def test_rectangular_local_anchors_against_gathered_candidates():
    # process 1 of 3 in multi-GPU training: its 2 x 5 local rows against all 30 gathered rows
    g = torch.Generator().manual_seed(7)
    allx = torch.randn(30, 9, generator=g).to(DEV)
    local = allx[10:20].clone().requires_grad_()
    cands = torch.cat([allx[:10], local, allx[20:]])
    rows = torch.arange(10, 20, device=DEV)
    # views laid out [z1 of all processes (15), z2 of all (15)]: pos(i) = (i + 15) % 30
    pos, slf = (rows + 15) % 30, rows
    kw = dict(temperature=0.1, rule="adaptive", eps=0.25, hierarchy_weight=0.0)
    loss, _ = hex_rect(local, cands, pos, slf, **kw)
    gl, = torch.autograd.grad(loss, [local])
    rloss, _ = ref_rect(local, cands, pos, slf, **kw)
    rl, = torch.autograd.grad(rloss, [local])
    torch.testing.assert_close(loss, rloss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gl, rl, rtol=1e-4, atol=1e-6)


def test_bad_input_is_rejected_clearly():
    # argument checks live in hexfast.validate (tests/test_hex_loss.py); the kernel adds its own dtype
    x = torch.randn(6, 4, device=DEV)
    with pytest.raises(TypeError, match="supports"):
        from kernels import backend
        from hexfast.rules import Rule

        backend.square(x.double(), 3, Rule("none"), temperature=0.1, hierarchy_weight=0.0,
                       positive_in_denominator=False)
    with pytest.raises(ValueError, match="threshold"):
        hex_loss_triton(x[:3], x[3:], threshold="fixed")


def test_similarities_are_symmetric_bit_for_bit():
    # the one-kernel square backward reads G_ki off the tile s_ik (kernels/_tiles.py)
    from kernels.debug import similarity_matrix

    for dtype, d in ((torch.float32, 37), (torch.bfloat16, 64), (torch.float32, 300)):
        x = torch.randn(150, d, device=DEV).to(dtype)
        s = similarity_matrix(x, x)
        assert torch.equal(s, s.T), dtype


def test_nearest_rank_matches_the_reference():
    from hexfast.reference import nearest_rank_index
    from kernels.hex_triton import _nearest_rank_kth

    for n in (1, 2, 3, 16, 37, 512, 1000, 8192, 229552, 262144):
        for q in (0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0):
            assert _nearest_rank_kth(n, q) == n - nearest_rank_index(n, q), (n, q)


@pytest.fixture
def plan_override(monkeypatch):
    import dataclasses

    import kernels.hex_triton as T
    from kernels.config import select_plan

    def install(**fields):
        def patched(n_cols, kth):
            return dataclasses.replace(select_plan(n_cols, kth), **fields)

        monkeypatch.setattr(T, "select_plan", patched)

    return install


@pytest.mark.parametrize("case", ["eps_outside_band", "buffer_overflow", "bracket_miss"])
def test_fused_pass_repairs_are_exact(case, plan_override):
    # force each way the fused pass can fail and check loss, gradients and stats still match
    if case == "eps_outside_band":
        plan_override(e_lo_at=0, e_hi_at=0)  # an empty band: every row is settled by a new stream
    elif case == "buffer_overflow":
        plan_override(cap=32, j_lo=-1, j_hi=-1)  # everything collected, 32 slots: overflow
    else:
        plan_override(j_lo=0, j_hi=-1)  # lo = the sample maximum: fewer than K values above it
    z1, z2, up = _inputs(150, 16, seed=8)
    _check_square(z1, z2, up, _kw("adaptive", 0.5, True, quantile=0.99))


def test_torch_compile_captures_the_kernel_and_equals_eager():
    # the fused op is a torch.library custom op with a fake (meta) implementation and a registered
    # backward: dynamo + AOTAutograd trace a step containing it ("aot_eager" keeps the test fast;
    # inductor handles custom ops the same way on a GPU)
    import torch._dynamo

    z1, z2, up = _inputs(37, 16, seed=9)
    kw = _kw("adaptive", 0.5, False, quantile=0.9)

    def step(a, b):
        return hex_loss(a, b, kernel="triton", **kw) * up

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager")
    got = compiled(z1, z2)
    g_got = torch.autograd.grad(got, [z1, z2])
    want = step(z1, z2)
    g_want = torch.autograd.grad(want, [z1, z2])
    assert torch.equal(got, want)
    for a, b in zip(g_got, g_want):
        assert torch.equal(a, b)


def test_custom_op_registration_is_consistent():
    # torch.library's own checker: schema, fake implementation, autograd registration
    from torch.library import opcheck

    from kernels import hex_triton as T

    x = torch.randn(12, 8, device=DEV, requires_grad=True)
    args = (x, None, None, 6, 1, 0.9, 0.1, 0.5, False)
    opcheck(T.square_op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
