"""The public HEX API (hexfast.hex_loss): dispatch, stats, edge cases, and input validation."""

import importlib
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

import hexfast.backend
from hexfast import reference
from hexfast.hex_loss import (
    HEXInputError,
    HEXLoss,
    HEXTypeError,
    KernelUnavailableError,
    candidate_row_quantiles,
    hex_loss,
    hex_rect_loss,
)
from hexfast.rules import Rule

# `hexfast.hex_loss` names the submodule (the issue's `import hexfast.hex_loss`); importlib returns
# the module whatever the package's lazy attributes do.
api = importlib.import_module("hexfast.hex_loss")


def views(batch=6, dim=5, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(batch, dim, generator=g) * scale
    z2 = z1 + 0.5 * torch.randn(batch, dim, generator=g) * scale
    return z1.to(dtype), z2.to(dtype)


@pytest.fixture
def no_kernels(monkeypatch):
    """Make `from kernels import ...` fail, whatever the kernels package holds today."""
    monkeypatch.setitem(sys.modules, "kernels", None)
    monkeypatch.setitem(sys.modules, "hexfast._kernels", None)  # the installed copy's name
    monkeypatch.setattr(api, "_warned_fallback", False)


# ------------------------------------------------------------------------------------------------
# dispatch and results


REPO = Path(__file__).resolve().parents[1]


def _fresh_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_import_hexfast_hex_loss_works_in_a_fresh_interpreter():
    done = _fresh_python("import hexfast.hex_loss, sys; m = sys.modules['hexfast.hex_loss']; "
                         "assert callable(m.hex_loss) and m.KERNELS == ('auto', 'torch', 'triton')")
    assert done.returncode == 0, done.stderr


def test_package_level_hexloss_in_a_fresh_interpreter():
    done = _fresh_python("import hexfast, torch; loss = hexfast.HEXLoss()(torch.randn(4, 3), torch.randn(4, 3)); "
                         "assert torch.isfinite(loss)")
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(threshold="none", hierarchy_weight=1.0, positive_in_denominator=True),
        dict(threshold=0.7, hierarchy_weight=0.5),
        dict(threshold="adaptive", quantile=0.9, hierarchy_weight=0.25, positive_in_denominator=True),
        dict(groups=torch.tensor([0, 1, 0, 1, 2, 2])),
    ],
)
@pytest.mark.parametrize("kernel", ["torch", "auto"])
def test_cpu_result_is_the_reference(kwargs, kernel):
    z1, z2 = views()
    loss, stats = hex_loss(z1, z2, temperature=0.2, kernel=kernel, return_stats=True, **kwargs)
    want, want_stats = reference.hex_reference(z1, z2, temperature=0.2, **kwargs)
    assert torch.equal(loss, want)
    assert set(stats) >= {"eps", "hier_fraction", "hier_count", "neg_count", "empty_rows", "rows"}
    for key, value in want_stats.items():
        assert torch.equal(stats[key], value) or (value.isnan().all() and stats[key].isnan().all())
    # return_stats=False gives the loss tensor alone
    assert torch.equal(hex_loss(z1, z2, temperature=0.2, kernel=kernel, **kwargs), want)


def test_module_carries_settings():
    z1, z2 = views()
    module = HEXLoss(temperature=0.3, threshold=0.5, hierarchy_weight=0.5, positive_in_denominator=True)
    assert torch.equal(module(z1, z2), hex_loss(z1, z2, temperature=0.3, threshold=0.5, hierarchy_weight=0.5,
                                                positive_in_denominator=True))
    assert "threshold=0.5" in repr(module)
    loss, stats = HEXLoss(return_stats=True)(z1, z2, groups=torch.arange(6) % 2)
    assert torch.equal(loss, hex_loss(z1, z2, groups=torch.arange(6) % 2))
    with pytest.raises(HEXInputError, match="temperature"):
        HEXLoss(temperature=0)
    with pytest.raises(HEXInputError, match="unknown threshold"):
        HEXLoss(threshold="fixed")


def test_stats_fraction_and_eps():
    z1, z2 = views(batch=8)
    _, stats = hex_loss(z1, z2, threshold=0.6, return_stats=True)
    assert stats["hier_fraction"].item() == pytest.approx(stats["hier_count"].item() / stats["neg_count"].item())
    assert stats["eps"].item() == pytest.approx(0.6)
    assert int(stats["neg_count"]) == 16 * 14
    _, stats = hex_loss(z1, z2, threshold="none", return_stats=True)
    assert stats["eps"].isnan() and int(stats["hier_count"]) == 0
    assert all(not v.requires_grad for v in stats.values())


def test_eps_override_skips_the_quantile_rule():
    z1, z2 = views(batch=7)
    x = torch.cat([z1, z2])
    eps = candidate_row_quantiles(x, x, 0.9).mean()
    # the default rule == the same rule with its eps given
    assert torch.equal(hex_loss(z1, z2, quantile=0.9), hex_loss(z1, z2, eps=eps))
    # a fixed raw-cosine eps (the NNCLR/All4One warm-up) == the rectangular form with that eps
    loss, stats = hex_loss(z1, z2, eps=0.5, hierarchy_weight=0.5, return_stats=True)
    pos, own = reference.square_indices(7)
    want, _ = reference.hex_rect(x, x, pos, own, temperature=0.1, rule="adaptive", eps=0.5, hierarchy_weight=0.5)
    assert torch.equal(loss, want) and stats["eps"].item() == 0.5


def test_eps_tensor_gets_no_gradient():
    z1, z2 = views()
    z1.requires_grad_()
    eps = torch.tensor(0.3, requires_grad=True)
    hex_loss(z1, z2, eps=eps, hierarchy_weight=0.5).backward()
    assert eps.grad is None and z1.grad is not None


def test_rect_loss_and_quantiles_match_reference():
    g = torch.Generator().manual_seed(1)
    a, c = torch.randn(5, 9, generator=g), torch.randn(13, 9, generator=g)
    pos, own = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([5, 6, -1, -1, 7])
    q = candidate_row_quantiles(a, c, 0.75)
    assert torch.equal(q, torch.quantile(reference.similarities(a, c), 0.75, dim=1, interpolation="nearest"))
    loss, stats = hex_rect_loss(a, c, pos, own, eps=q.mean(), hierarchy_weight=0.5, return_stats=True)
    want, _ = reference.hex_rect(a, c, pos, own, temperature=0.1, rule="adaptive", eps=q.mean(), hierarchy_weight=0.5)
    assert torch.equal(loss, want) and int(stats["rows"]) == 5
    groups = dict(rule="groups", anchor_groups=torch.arange(5) % 2, candidate_groups=torch.arange(13) % 2)
    assert torch.equal(hex_rect_loss(a, c, pos, own, **groups),
                       reference.hex_rect(a, c, pos, own, temperature=0.1, **groups)[0])


# ------------------------------------------------------------------------------------------------
# kernel selection


def test_triton_without_cuda_or_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    z1, z2 = views()
    with pytest.raises(KernelUnavailableError, match="needs CUDA tensors.*TRITON_INTERPRET=1.*kernel='torch'"):
        hex_loss(z1, z2, kernel="triton")


def test_triton_import_failure_says_why(no_kernels, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    z1, z2 = views()
    with pytest.raises(KernelUnavailableError, match="importing .* failed.*kernel='torch'"):
        hex_loss(z1, z2, kernel="triton")
    with pytest.raises(KernelUnavailableError):
        candidate_row_quantiles(z1, z2, kernel="triton")


def test_triton_dispatch_passes_the_resolved_rule_to_the_backend(monkeypatch):
    """kernel='triton' calls the kernel backend's protocol functions with the rule resolved once."""
    calls = []
    torch_backend = hexfast.backend.TORCH
    fake_backend = types.ModuleType("kernels.backend")
    fake_backend.name = "triton"
    fake_backend.square = lambda x, batch, rule, **kw: calls.append(("square", rule, kw)) or torch_backend.square(
        x, batch, rule, **kw)
    fake_backend.rect = lambda *args, **kw: calls.append(("rect", args[4], kw)) or torch_backend.rect(*args, **kw)
    fake_backend.row_quantiles = lambda a, c, q: calls.append(("quantiles", q, {})) or torch.zeros(a.shape[0])
    fake = types.ModuleType("kernels")
    fake.backend = fake_backend
    monkeypatch.setitem(sys.modules, "kernels", fake)
    monkeypatch.setitem(sys.modules, "kernels.backend", fake_backend)
    monkeypatch.setitem(sys.modules, "hexfast._kernels", None)  # an editable install's copy of kernels/
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    z1, z2 = views()
    fused, ref = (hex_loss(z1, z2, kernel=kernel, threshold=0.4) for kernel in ("triton", "torch"))
    assert torch.equal(fused, ref)
    hex_loss(z1, z2, kernel="triton", cosine_threshold=0.2)
    pos, own = reference.square_indices(6)
    x = torch.cat([z1, z2])
    hex_rect_loss(x, x, pos, own, threshold=0.3, kernel="triton")
    candidate_row_quantiles(z1, z2, 0.9, kernel="triton")
    assert [c[0] for c in calls] == ["square", "square", "rect", "quantiles"]
    assert calls[0][1] == Rule("fixed", 0.4)
    assert calls[0][2] == dict(temperature=0.1, hierarchy_weight=0.0, positive_in_denominator=False, groups=None)
    assert calls[1][1] == Rule("adaptive", 0.2) and calls[2][1] == Rule("adaptive", 0.3) and calls[3][1] == 0.9
    # auto on CPU tensors stays on the reference even when the kernel imports
    hex_loss(z1, z2, kernel="auto")
    assert len(calls) == 4


@pytest.mark.parametrize(
    "kwargs", [dict(), dict(threshold=0.5, hierarchy_weight=0.5), dict(groups=torch.tensor([0, 1, 0, 1, 2])),
               dict(eps=0.2, positive_in_denominator=True)])
def test_triton_end_to_end_matches_torch(kwargs):
    """The real kernel through the public API (on the GPU, or under the interpreter on a CPU)."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    z1, z2 = (t.to(device) for t in views(batch=5, dim=8, seed=3))
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    results = []
    for kernel in ("triton", "torch"):
        a = z1.clone().requires_grad_()
        loss, stats = hex_loss(a, z2, kernel=kernel, return_stats=True, **kwargs)
        loss.backward()
        results.append((loss, a.grad, stats))
    (l1, g1, s1), (l2, g2, s2) = results
    torch.testing.assert_close(l1, l2, rtol=1e-3, atol=1e-4)  # tf32 dots on a GPU
    torch.testing.assert_close(g1, g2, rtol=1e-3, atol=1e-4)
    assert int(s1["hier_count"]) == int(s2["hier_count"]) and int(s1["empty_rows"]) == int(s2["empty_rows"])
    x = torch.cat([z1, z2])
    torch.testing.assert_close(candidate_row_quantiles(x, x, 0.9, kernel="triton"),
                               candidate_row_quantiles(x, x, 0.9, kernel="torch"), rtol=0, atol=1e-3)


def test_auto_falls_back_on_cuda_with_one_warning(no_kernels):
    cuda_like = types.SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float32)
    with pytest.warns(UserWarning, match="falls back to the PyTorch reference"):
        assert api._use_triton("auto", cuda_like) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert api._use_triton("auto", cuda_like) is False  # warned once only
    fp64 = types.SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float64)
    assert api._use_triton("auto", fp64) is False  # float64 is the reference's (gradcheck) path


def test_value_checks_skip_cuda_in_cheap_mode():
    cuda_like = types.SimpleNamespace(device=torch.device("cuda", 0))
    cpu = torch.zeros(1)
    assert api.get_validation() == "cheap"
    assert api._check_values(cpu) and not api._check_values(cuda_like)
    api.set_validation("full")
    try:
        assert api._check_values(cuda_like)
    finally:
        api.set_validation("cheap")
    with pytest.raises(HEXInputError, match="unknown validation mode 'fast'; valid: cheap, full"):
        api.set_validation("fast")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cheap_validation_adds_no_gpu_sync(monkeypatch):
    """In "cheap" mode the checks read only metadata; "full" reads values (a sync, caught here)."""
    monkeypatch.setattr(reference, "hex_square", lambda x, *args, **kw: (x.sum(), {}))
    monkeypatch.setattr(reference, "hex_rect", lambda a, c, *args, **kw: (a.sum(), {}))
    z1, z2 = (t.cuda() for t in views())
    groups = torch.arange(6, device="cuda") % 2
    pos, own = (t.cuda() for t in reference.square_indices(3))
    eps = torch.tensor(0.3, device="cuda")  # made before the check: the copy from the host syncs
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        hex_loss(z1, z2, kernel="torch", groups=groups)
        hex_loss(z1, z2, kernel="torch", eps=eps)
        hex_rect_loss(z1, z2, pos, own, eps=eps, kernel="torch")
        api.set_validation("full")
        with pytest.raises(RuntimeError, match="synchroniz"):
            hex_loss(z1, z2, kernel="torch")
    finally:
        torch.cuda.set_sync_debug_mode(0)
        api.set_validation("cheap")


# ------------------------------------------------------------------------------------------------
# edge cases: finite loss and gradients everywhere


MODES = [
    dict(threshold="adaptive"),
    dict(threshold="adaptive", quantile=0.5, hierarchy_weight=0.5),
    dict(threshold=0.5),
    dict(threshold=0.0, positive_in_denominator=True),
    dict(threshold="none"),
    dict(groups=torch.zeros(6, dtype=torch.long)),  # one group: every negative hierarchical
    dict(groups=torch.zeros(6, dtype=torch.long), hierarchy_weight=1.0),
]


def _collapsed():
    row = torch.randn(1, 5)
    return row.repeat(6, 1), row.repeat(6, 1)


def _duplicates():
    z1, z2 = views()
    z1[3] = z1[0]
    z2[3] = z1[0]
    z2[4] = z2[1]
    return z1, z2


def _zeros():
    z1, z2 = views()
    z1[2] = 0.0
    z2[5] = 0.0
    return z1, z2


CASES = {
    "collapsed": _collapsed,
    "duplicates": _duplicates,
    "zero_rows": _zeros,
    "tiny_norm": lambda: views(scale=1e-6),
    "huge_norm": lambda: views(scale=1e4),
    "float16": lambda: views(dtype=torch.float16),
    "bfloat16": lambda: views(dtype=torch.bfloat16),
    "float16_tiny": lambda: views(dtype=torch.float16, scale=1e-3),
    "bfloat16_huge": lambda: views(dtype=torch.bfloat16, scale=1e4),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", range(len(MODES)))
@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0])
def test_edge_cases_are_finite(case, mode, tau):
    z1, z2 = CASES[case]()
    z1.requires_grad_()
    z2.requires_grad_()
    loss, stats = hex_loss(z1, z2, temperature=tau, return_stats=True, **MODES[mode])
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert z1.grad.dtype == z1.dtype
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    assert 0 <= int(stats["empty_rows"]) <= 12


def test_empty_rows_contribute_zero_and_count():
    """One group with w = 0 and the positive out: every denominator is empty (spec section 1)."""
    z1, z2 = views()
    z1.requires_grad_()
    loss, stats = hex_loss(z1, z2, groups=torch.full((6,), 4), return_stats=True)
    loss.backward()
    assert loss.item() == 0.0 and int(stats["empty_rows"]) == 12
    assert torch.equal(z1.grad, torch.zeros_like(z1))


def test_partly_empty_rows_still_count_in_the_mean():
    """Rows whose negatives are all hierarchical contribute 0 but stay in the mean over rows."""
    g = torch.Generator().manual_seed(2)
    a, c = torch.randn(4, 5, generator=g), torch.randn(9, 5, generator=g)
    pos, own = torch.tensor([0, 1, 2, 3]), torch.full((4,), -1)
    loss, stats = hex_rect_loss(a, c, pos, own, rule="groups", anchor_groups=torch.tensor([0, 1, 0, 1]),
                                candidate_groups=torch.zeros(9, dtype=torch.long), return_stats=True)
    assert int(stats["empty_rows"]) == 2
    rows_13 = hex_rect_loss(a[[1, 3]], c, pos[[1, 3]], own[:2], rule="none")
    torch.testing.assert_close(loss, rows_13 / 2)


def test_temperature_range_matches_float64():
    z1, z2 = views(batch=9, dim=7)
    for tau in (0.01, 0.03, 0.1, 0.3, 1.0):
        for kw in (dict(), dict(threshold=0.5, hierarchy_weight=0.5, positive_in_denominator=True)):
            got = hex_loss(z1, z2, temperature=tau, **kw)
            want = hex_loss(z1.double(), z2.double(), temperature=tau, **kw)
            torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-4)


# ------------------------------------------------------------------------------------------------
# input validation: every bad input names the problem and the valid choices


Z1, Z2 = views()
POS, NO_SELF = torch.arange(6), -torch.ones(6, dtype=torch.long)
BAD_CALLS = {
    "z1 not a tensor": (lambda: hex_loss(Z1.tolist(), Z2), HEXTypeError, "z1 must be a torch.Tensor"),
    "z2 wrong rank": (lambda: hex_loss(Z1, Z2[0]), HEXInputError, r"z2 must be 2-D \[rows, D\], got shape \(5,\)"),
    "3-D input": (lambda: hex_loss(Z1[None], Z2[None]), HEXInputError, "z1 must be 2-D"),
    "shape mismatch": (lambda: hex_loss(Z1, Z2[:5]), HEXInputError, r"same shape, got \(6, 5\) and \(5, 5\)"),
    "feature mismatch": (lambda: hex_loss(Z1, Z2[:, :4]), HEXInputError, "same shape"),
    "dtype mismatch": (lambda: hex_loss(Z1, Z2.double()), HEXTypeError, "same dtype"),
    "device mismatch": (lambda: hex_loss(Z1, Z2.to("meta")), HEXInputError, "same device"),
    "integer input": (lambda: hex_loss(Z1.long(), Z2.long()), HEXTypeError, "floating tensor .*got torch.int64"),
    "bool input": (lambda: hex_loss(Z1 > 0, Z2 > 0), HEXTypeError, "floating tensor"),
    "B < 2": (lambda: hex_loss(Z1[:1], Z2[:1]), HEXInputError, "B >= 2"),
    "D = 0": (lambda: hex_loss(Z1[:, :0], Z2[:, :0]), HEXInputError, "D >= 1"),
    "nan": (lambda: hex_loss(Z1.clone().fill_(float("nan")), Z2), HEXInputError, "z1 contains non-finite"),
    "inf": (lambda: hex_loss(Z1, Z2.clone().index_fill_(0, torch.tensor([2]), float("inf"))),
            HEXInputError, "z2 contains non-finite"),
    "temperature 0": (lambda: hex_loss(Z1, Z2, temperature=0.0), HEXInputError, "temperature must be > 0"),
    "temperature < 0": (lambda: hex_loss(Z1, Z2, temperature=-0.1), HEXInputError, "temperature must be > 0"),
    "temperature nan": (lambda: hex_loss(Z1, Z2, temperature=float("nan")),
                        HEXInputError, "temperature must be finite"),
    "temperature inf": (lambda: hex_loss(Z1, Z2, temperature=float("inf")),
                        HEXInputError, "temperature must be finite"),
    "temperature str": (lambda: hex_loss(Z1, Z2, temperature="0.1"), HEXTypeError, "temperature must be a real number"),
    "quantile 0": (lambda: hex_loss(Z1, Z2, quantile=0.0),
                   HEXInputError, r"quantile must lie in the open interval \(0, 1\)"),
    "quantile 1": (lambda: hex_loss(Z1, Z2, quantile=1.0), HEXInputError, "open interval"),
    "quantile 1.5": (lambda: hex_loss(Z1, Z2, quantile=1.5), HEXInputError, "open interval"),
    "threshold > 1": (lambda: hex_loss(Z1, Z2, threshold=1.2), HEXInputError, r"must lie in \[0, 1\], got 1.2"),
    "threshold < 0": (lambda: hex_loss(Z1, Z2, threshold=-0.1), HEXInputError, r"\[0, 1\]"),
    "threshold name": (lambda: hex_loss(Z1, Z2, threshold="fixed"), HEXInputError,
                       r"unknown threshold 'fixed'; valid: adaptive, none, <float in \[0, 1\]>"),
    "threshold bool": (lambda: hex_loss(Z1, Z2, threshold=True), HEXTypeError, "threshold must be one of"),
    "negative weight": (lambda: hex_loss(Z1, Z2, hierarchy_weight=-0.5),
                        HEXInputError, "hierarchy_weight must be >= 0"),
    "positive flag": (lambda: hex_loss(Z1, Z2, positive_in_denominator=1), HEXTypeError, "True or False"),
    "groups shape": (lambda: hex_loss(Z1, Z2, groups=torch.zeros(12, dtype=torch.long)), HEXInputError,
                     r"groups must have shape \[6\], got \(12,\)"),
    "groups float": (lambda: hex_loss(Z1, Z2, groups=torch.zeros(6)), HEXTypeError, "integer labels"),
    "groups bool": (lambda: hex_loss(Z1, Z2, groups=torch.zeros(6, dtype=torch.bool)), HEXTypeError, "integer labels"),
    "groups list": (lambda: hex_loss(Z1, Z2, groups=[0] * 6), HEXTypeError, "groups must be a torch.Tensor"),
    "groups device": (lambda: hex_loss(Z1, Z2, groups=torch.zeros(6, dtype=torch.long, device="meta")),
                      HEXInputError, "groups must be on the embeddings' device"),
    "kernel name": (lambda: hex_loss(Z1, Z2, kernel="cuda"),
                    HEXInputError, "unknown kernel 'cuda'; valid: auto, torch, triton"),
    "eps with fixed": (lambda: hex_loss(Z1, Z2, threshold=0.5, eps=0.2), HEXInputError, "eps overrides the adaptive"),
    "eps with groups": (lambda: hex_loss(Z1, Z2, groups=torch.zeros(6, dtype=torch.long), eps=0.2),
                        HEXInputError, "no groups"),
    "eps nan": (lambda: hex_loss(Z1, Z2, eps=float("nan")), HEXInputError, "eps must be finite"),
    "eps vector": (lambda: hex_loss(Z1, Z2, eps=torch.zeros(2)), HEXInputError, "0-dim floating tensor"),
    "eps nan tensor": (lambda: hex_loss(Z1, Z2, eps=torch.tensor(float("nan"))), HEXInputError, "eps must be finite"),
    "return_stats": (lambda: hex_loss(Z1, Z2, return_stats="yes"), HEXTypeError, "return_stats must be True or False"),
    "rect rule": (lambda: hex_rect_loss(Z1, Z2, POS, NO_SELF, rule="soft"), HEXInputError,
                  "unknown rule 'soft'; valid: none, adaptive, fixed, groups"),
    "rect eps missing": (lambda: hex_rect_loss(Z1, Z2, POS, NO_SELF),
                         HEXInputError, "rule='adaptive' needs eps"),
    "rect fixed eps": (lambda: hex_rect_loss(Z1, Z2, POS, NO_SELF, rule="fixed", eps=2.0),
                       HEXInputError, r"\[0, 1\]"),
    "rect index range": (lambda: hex_rect_loss(Z1, Z2, torch.arange(6) + 1, NO_SELF, rule="none"),
                         HEXInputError, r"pos_index values must lie in \[0, 5\], got min 1 and max 6"),
    "rect index dtype": (lambda: hex_rect_loss(Z1, Z2, torch.arange(6).int(), NO_SELF, rule="none"),
                         HEXTypeError, "pos_index must have dtype torch.long"),
    "rect self is pos": (lambda: hex_rect_loss(Z1, Z2, torch.arange(6), torch.arange(6), rule="none"),
                         HEXInputError, "must differ in every row"),
    "rect groups missing": (lambda: hex_rect_loss(Z1, Z2, POS, NO_SELF, rule="groups"),
                            HEXInputError, "needs both anchor_groups"),
    "rect groups unused": (lambda: hex_rect_loss(Z1, Z2, POS, NO_SELF, rule="none",
                                                 anchor_groups=torch.zeros(6, dtype=torch.long)),
                           HEXInputError, "used only by rule='groups'"),
    "rect eps unused": (lambda: hex_rect_loss(Z1, Z2, POS, NO_SELF, rule="none", eps=0.3),
                        HEXInputError, "eps is used only by rules"),
    "rect one candidate": (lambda: hex_rect_loss(Z1, Z2[:1], torch.zeros(6, dtype=torch.long), NO_SELF,
                                                 rule="none"), HEXInputError, "2 candidates"),
    "quantiles q": (lambda: candidate_row_quantiles(Z1, Z2, 1.0), HEXInputError, "open interval"),
    "quantiles D": (lambda: candidate_row_quantiles(Z1, Z2[:, :3]), HEXInputError, "same feature size D"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises(name):
    call, error, pattern = BAD_CALLS[name]
    with pytest.raises(error, match=pattern):
        call()


def test_errors_are_value_and_type_errors():
    assert issubclass(HEXInputError, ValueError)
    assert issubclass(HEXTypeError, TypeError) and issubclass(HEXTypeError, HEXInputError)


def test_reference_is_float32_under_bf16_autocast():
    """Mixed precision must not round the similarities (and so eps and the masks) to bf16."""
    z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
    want, want_stats = hex_loss(z1, z2, kernel="torch", return_stats=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_stats = hex_loss(z1, z2, kernel="torch", return_stats=True)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(got_stats["eps"], want_stats["eps"])
