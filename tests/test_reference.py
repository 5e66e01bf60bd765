"""The reference HEX loss (hexfast.reference) against the spec, written again here as slow loops.

`loop_rect`/`loop_square` below are an independent float64 implementation made from the spec's
formulas with Python loops over rows and columns; they share no code with hexfast.reference.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from hexfast import losses, reference

# ------------------------------------------------------------------------------------------------
# the spec as loops (float64)


def _loop_similarities(anchors, candidates):
    a = [row.double() / row.double().norm() for row in anchors]
    c = [row.double() / row.double().norm() for row in candidates]
    return [[torch.dot(ai, ck) for ck in c] for ai in a]


def _loop_row_quantile(values, q):
    """Nearest rank: ascending index round(q (n - 1)), ties to even (Python's round, as torch)."""
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def loop_rect(anchors, candidates, pos_index, self_index, *, temperature, rule, eps=None, w=0.0,
              pos_in=False, anchor_groups=None, candidate_groups=None):
    """Returns (loss, counts) with counts = dict(hier, neg, empty)."""
    s = _loop_similarities(anchors, candidates)
    m, n = len(s), len(s[0])
    values = [[float(v.detach()) for v in row] for row in s]
    hier_count = neg_count = empty = 0
    total = torch.zeros((), dtype=torch.float64)
    for i in range(m):
        p, own = int(pos_index[i]), int(self_index[i])
        lo, hi = min(values[i]), max(values[i])
        terms = []
        for k in range(n):
            if k in (p, own):
                continue
            neg_count += 1
            if rule == "none":
                is_h = False
            elif rule == "adaptive":
                is_h = values[i][k] > eps
            elif rule == "fixed":
                f = (values[i][k] - lo) / (hi - lo) if hi > lo else 0.0
                is_h = f > eps
            else:
                is_h = int(anchor_groups[i]) == int(candidate_groups[k])
            hier_count += is_h
            weight = w if is_h else 1.0
            if weight > 0:
                terms.append(weight * torch.exp(s[i][k] / temperature))
        if pos_in:
            terms.append(torch.exp(s[i][p] / temperature))
        if terms:
            total = total + (-s[i][p] / temperature + torch.log(sum(terms)))
        else:
            empty += 1  # empty denominator: contributes 0, still counted in the mean
    return total / m, dict(hier=hier_count, neg=neg_count, empty=empty)


def loop_square(z1, z2, *, temperature, threshold="adaptive", quantile=0.99, w=0.0, pos_in=False, groups=None):
    batch = z1.shape[0]
    x = torch.cat([z1, z2])
    pos = [(i + batch) % (2 * batch) for i in range(2 * batch)]
    own = list(range(2 * batch))
    eps, rule, g = None, threshold, None
    if groups is not None:
        rule, g = "groups", list(groups) * 2
    elif threshold == "adaptive":
        values = [[float(v.detach()) for v in row] for row in _loop_similarities(x, x)]
        eps = sum(_loop_row_quantile(row, quantile) for row in values) / len(values)
    elif not isinstance(threshold, str):
        rule, eps = "fixed", threshold
    loss, counts = loop_rect(x, x, pos, own, temperature=temperature, rule=rule, eps=eps, w=w,
                             pos_in=pos_in, anchor_groups=g, candidate_groups=g)
    return loss, counts, eps


# ------------------------------------------------------------------------------------------------
# inputs


def random_views(batch, dim, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=g, dtype=dtype), torch.randn(batch, dim, generator=g, dtype=dtype)


def clustered_views(batch, dim, seed, clusters=3, spread=0.15, dtype=torch.float64):
    """Rows near a few centres, so many negatives are close (mixed H / R per row)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g, dtype=dtype)
    labels = torch.arange(batch) % clusters
    z1 = centres[labels] + spread * torch.randn(batch, dim, generator=g, dtype=dtype)
    z2 = centres[labels] + spread * torch.randn(batch, dim, generator=g, dtype=dtype)
    return z1, z2, labels


MODES = {
    "none": dict(threshold="none"),
    "adaptive": dict(threshold="adaptive", quantile=0.8),
    "fixed": dict(threshold=0.6),
    "groups": dict(threshold="adaptive", groups="labels"),
}


def _kwargs(mode, labels):
    kw = dict(MODES[mode])
    if kw.get("groups") == "labels":
        kw["groups"] = labels
    return kw


@pytest.mark.parametrize("data", ["random", "clustered"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("pos_in", [False, True])
def test_reference_matches_loops(data, mode, w, pos_in):
    batch, dim, tau = 7, 5, 0.2  # odd B and D
    if data == "random":
        z1, z2 = random_views(batch, dim, seed=1)
        labels = torch.tensor([0, 1, 0, 2, 1, 0, 2])
    else:
        z1, z2, labels = clustered_views(batch, dim, seed=2)
    kw = _kwargs(mode, labels)

    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss, stats = reference.hex_reference(a1, a2, temperature=tau, hierarchy_weight=w,
                                          positive_in_denominator=pos_in, **kw)
    loss.backward()

    b1, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    want, counts, eps = loop_square(b1, b2, temperature=tau, w=w, pos_in=pos_in, **kw)
    want.backward()

    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a1.grad, b1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a2.grad, b2.grad, rtol=1e-10, atol=1e-12)
    assert int(stats["hier_count"]) == counts["hier"]
    assert int(stats["neg_count"]) == counts["neg"] == 2 * batch * (2 * batch - 2)
    assert int(stats["empty_rows"]) == counts["empty"]
    assert int(stats["rows"]) == 2 * batch
    if eps is None:
        assert math.isnan(float(stats["eps"]))
    else:
        assert float(stats["eps"]) == pytest.approx(eps, rel=1e-6)
    if mode == "none":
        assert counts["hier"] == 0


def test_clustered_inputs_exercise_both_kinds_of_negative():
    """The clustered data above must give rows with hierarchical and regular negatives, or the
    comparison says nothing about the split."""
    z1, z2, labels = clustered_views(7, 5, seed=2)
    for kw in (MODES["adaptive"], MODES["fixed"], dict(groups=labels)):
        _, counts, _ = loop_square(z1, z2, temperature=0.2, **kw)
        assert 0 < counts["hier"] < counts["neg"], kw


@pytest.mark.parametrize("mode", ["adaptive", "fixed", "groups"])
def test_reference_matches_loops_larger_batch_default_quantile(mode):
    """q = 0.99 (the default) needs 2B large enough that the quantile is not each row's max."""
    z1, z2, labels = clustered_views(33, 9, seed=3, clusters=4, spread=0.3)
    kw = dict(threshold="adaptive", quantile=0.99) if mode == "adaptive" else _kwargs(mode, labels)
    loss, stats = reference.hex_reference(z1, z2, temperature=0.1, hierarchy_weight=0.5, **kw)
    want, counts, eps = loop_square(z1, z2, temperature=0.1, w=0.5, **kw)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    assert int(stats["hier_count"]) == counts["hier"] > 0


@pytest.mark.parametrize("mode", list(MODES))
def test_reference_float32_matches_loops(mode):
    z1, z2, labels = clustered_views(9, 7, seed=4, dtype=torch.float32)
    kw = _kwargs(mode, labels)
    loss, _ = reference.hex_reference(z1, z2, temperature=0.1, hierarchy_weight=0.5, **kw)
    assert loss.dtype == torch.float32
    want, _, _ = loop_square(z1, z2, temperature=0.1, w=0.5, **kw)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", list(MODES))
def test_reference_gradcheck(mode):
    """Autograd against finite differences: eps and the masks are constants locally."""
    z1, z2, labels = clustered_views(5, 3, seed=5)
    kw = _kwargs(mode, labels)
    fn = lambda a, b: reference.hex_reference(a, b, temperature=0.3, hierarchy_weight=0.5, **kw)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z1.requires_grad_(), z2.requires_grad_()), eps=1e-7, atol=1e-6)


def test_rect_matches_loops_moco_layout():
    """Queries against cat[keys, queue]: no self entry (-1), positive = the query's own key."""
    g = torch.Generator().manual_seed(6)
    q = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    cands = torch.randn(5 + 11, 7, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.arange(5)
    own = torch.full((5,), -1)
    eps = 0.1
    loss, stats = reference.hex_rect(q, cands, pos, own, temperature=0.2, rule="adaptive", eps=eps,
                                     hierarchy_weight=0.5)
    loss.backward()
    gq, gc = q.grad.clone(), cands.grad.clone()
    q.grad = cands.grad = None
    want, counts = loop_rect(q, cands, pos, own, temperature=0.2, rule="adaptive", eps=eps, w=0.5)
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gq, q.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gc, cands.grad, rtol=1e-10, atol=1e-12)
    assert int(stats["neg_count"]) == counts["neg"] == 5 * 15
    assert int(stats["hier_count"]) == counts["hier"]


@pytest.mark.parametrize("rule", ["fixed", "groups"])
def test_rect_matches_loops_fixed_and_groups(rule):
    g = torch.Generator().manual_seed(7)
    a = torch.randn(6, 5, generator=g, dtype=torch.float64)
    c = torch.cat([a[:3] + 0.2 * torch.randn(3, 5, generator=g, dtype=torch.float64),
                   torch.randn(8, 5, generator=g, dtype=torch.float64)])
    pos = torch.tensor([0, 1, 2, 3, 4, 5])
    own = torch.tensor([6, 7, 8, -1, -1, 9])
    ag = torch.tensor([0, 1, 2, 0, 1, 2])
    cg = torch.arange(11) % 3
    kw = dict(eps=0.4) if rule == "fixed" else dict(anchor_groups=ag, candidate_groups=cg)
    loss, _ = reference.hex_rect(a, c, pos, own, temperature=0.25, rule=rule, hierarchy_weight=0.0,
                                 positive_in_denominator=True, **kw)
    want, _ = loop_rect(a, c, pos, own, temperature=0.25, rule=rule, w=0.0, pos_in=True, **kw)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# closed forms


@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("threshold", ["none", "adaptive", 0.3])
def test_weight_one_positive_in_is_infonce(tau, threshold):
    """w = 1 makes the split irrelevant; with the positive in, HEX is NT-Xent whatever the rule."""
    z1, z2 = random_views(6, 11, seed=8)
    loss, _ = reference.hex_reference(z1, z2, temperature=tau, threshold=threshold,
                                      hierarchy_weight=1.0, positive_in_denominator=True)
    torch.testing.assert_close(loss, losses.infonce(z1, z2, temperature=tau), rtol=1e-12, atol=1e-12)


# Tiny case, B = 2, D = 2: rows at angles 0, 90 (view 1) and 30, 120 degrees (view 2). Cosines:
# s01 = 0, s02 = c (the positive, c = cos 30 = sqrt(3)/2), s03 = -1/2, s12 = 1/2, s13 = c, s23 = 0.
C30 = math.sqrt(3) / 2
TAU = 0.5


def _tiny_views():
    deg = lambda a: [math.cos(math.radians(a)), math.sin(math.radians(a))]  # noqa: E731
    z1 = torch.tensor([deg(0), deg(90)], dtype=torch.float64)
    z2 = torch.tensor([deg(30), deg(120)], dtype=torch.float64) * 3.0  # length does not matter
    return z1, z2


def _e(s):
    return math.exp(s / TAU)


def test_tiny_case_none():
    # Negatives: row 0 {s01 = 0, s03 = -1/2}, row 1 {0, 1/2}, row 2 {1/2, 0}, row 3 {-1/2, 0}.
    z1, z2 = _tiny_views()
    loss, _ = reference.hex_reference(z1, z2, temperature=TAU, threshold="none")
    want = -C30 / TAU + (math.log(_e(0) + _e(-0.5)) + math.log(_e(0) + _e(0.5))) / 2
    assert loss.item() == pytest.approx(want, rel=1e-12)
    loss_in, _ = reference.hex_reference(z1, z2, temperature=TAU, threshold="none", positive_in_denominator=True)
    want_in = -C30 / TAU + (math.log(_e(0) + _e(-0.5) + _e(C30)) + math.log(_e(0) + _e(0.5) + _e(C30))) / 2
    assert loss_in.item() == pytest.approx(want_in, rel=1e-12)


def test_tiny_case_adaptive():
    # Full rows sorted: rows 0, 3: [-1/2, 0, c, 1]; rows 1, 2: [0, 1/2, c, 1]. q = 0.4 picks index
    # round(0.4 * 3) = 1: 0, 1/2, 1/2, 0, so eps = 1/4; H: row 1 {s12 = 1/2}, row 2 {s21 = 1/2}.
    z1, z2 = _tiny_views()
    loss, stats = reference.hex_reference(z1, z2, temperature=TAU, threshold="adaptive", quantile=0.4,
                                          hierarchy_weight=0.5)
    assert stats["eps"].item() == pytest.approx(0.25, abs=1e-7)
    assert int(stats["hier_count"]) == 2
    rows_03 = math.log(_e(0) + _e(-0.5))
    rows_12 = math.log(_e(0) + 0.5 * _e(0.5))
    want = -C30 / TAU + (rows_03 + rows_12) / 2
    assert loss.item() == pytest.approx(want, rel=1e-12)


def test_tiny_case_fixed():
    # Row minima: -1/2 (rows 0, 3), 0 (rows 1, 2); maxima 1 (self). f: row 0 {s01: 1/3, s03: 0},
    # row 1 {s10: 0, s12: 1/2}, row 2 {s21: 1/2, s23: 0}, row 3 {s30: 0, s32: 1/3}. eps = 0.3: one
    # hierarchical negative per row, dropped (w = 0): rows 0, 3 keep e^{-1/2/t}, rows 1, 2 keep e^0.
    z1, z2 = _tiny_views()
    loss, stats = reference.hex_reference(z1, z2, temperature=TAU, threshold=0.3)
    assert int(stats["hier_count"]) == 4
    want = -C30 / TAU + (-0.5 / TAU + 0.0) / 2
    assert loss.item() == pytest.approx(want, rel=1e-12)
    # eps = 0.4 keeps only the 1/2 entries (rows 1, 2) hierarchical
    loss, stats = reference.hex_reference(z1, z2, temperature=TAU, threshold=0.4)
    assert int(stats["hier_count"]) == 2
    want = -C30 / TAU + (math.log(_e(0) + _e(-0.5)) + 0.0) / 2
    assert loss.item() == pytest.approx(want, rel=1e-12)


def test_tiny_case_groups():
    z1, z2 = _tiny_views()
    # different groups: nothing hierarchical, i.e. the "none" loss
    loss, stats = reference.hex_reference(z1, z2, temperature=TAU, groups=torch.tensor([0, 1]))
    none, _ = reference.hex_reference(z1, z2, temperature=TAU, threshold="none")
    assert int(stats["hier_count"]) == 0
    assert loss.item() == pytest.approx(none.item(), rel=1e-12)
    # one group: every negative hierarchical; w = 0.5 halves each term
    loss, stats = reference.hex_reference(z1, z2, temperature=TAU, groups=torch.tensor([3, 3]), hierarchy_weight=0.5)
    want = -C30 / TAU + (math.log(0.5 * (_e(0) + _e(-0.5))) + math.log(0.5 * (_e(0) + _e(0.5)))) / 2
    assert loss.item() == pytest.approx(want, rel=1e-12)
    # one group, w = 0, positive out: every denominator empty -> each row contributes 0
    loss, stats = reference.hex_reference(z1, z2, temperature=TAU, groups=torch.tensor([3, 3]))
    assert loss.item() == 0.0 and int(stats["empty_rows"]) == 4


# ------------------------------------------------------------------------------------------------
# the adaptive threshold: exactly torch.quantile(..., interpolation="nearest")


def _double_rank(n, q):
    """Recent torch (2.14): q held as float32, the rank q (n - 1) formed in double, ties to even."""
    return round(torch.tensor(q, dtype=torch.float32).item() * (n - 1))


def _float32_rank(n, q):
    """Older torch (2.11, the GPU machine's): the rank itself is rounded to float32 first, so e.g.
    n = 16, q = 0.9 gives 13.4999996 -> 13.5 -> 14 instead of 13."""
    return int((torch.tensor(q, dtype=torch.float32) * (n - 1)).round().item())


def test_nearest_rank_index_matches_torch_quantile():
    """The reference follows the double-rank convention; torch.quantile of older releases differs
    exactly where the float32 rank rounds to a .5 tie (for q = 0.99 first at n = 229,552)."""
    torch_uses_double = torch.quantile(torch.arange(16.0), 0.9, interpolation="nearest").item() == 13
    qs = torch.linspace(0.0, 1.0, 101).tolist() + [0.9, 0.99, 0.999, 0.95, 0.05, 1 / 3, 2 / 3]
    q_tensor = torch.tensor(qs, dtype=torch.float32)
    differ = 0
    for n in range(1, 300):
        row = torch.arange(n, dtype=torch.float32)  # value == ascending index
        picked = torch.quantile(row, q_tensor, interpolation="nearest").long().tolist()
        for q, p in zip(qs, picked):
            mine = reference.nearest_rank_index(n, q)
            assert mine == _double_rank(n, q), (n, q)
            if torch_uses_double or _float32_rank(n, q) == mine:
                assert p == mine, (n, q)
            else:
                differ += 1
                assert p == _float32_rank(n, q), (n, q)
    assert reference.nearest_rank_index(16, 0.9) == 13
    assert differ == 0 or not torch_uses_double
    assert _float32_rank(229_552, 0.99) == _double_rank(229_552, 0.99) + 1


@pytest.mark.parametrize("n", [3, 17, 101, 512, 1000])  # sizes where both rank conventions agree
@pytest.mark.parametrize("q", [0.01, 0.5, 0.9, 0.99, 0.999])
def test_row_quantiles_match_torch_quantile(n, q):
    assert _float32_rank(n, q) == _double_rank(n, q)
    g = torch.Generator().manual_seed(n)
    x = F.normalize(torch.randn(n, 8, generator=g), dim=1)
    s = x @ x.T
    want = torch.quantile(s, q, dim=1, interpolation="nearest")
    assert torch.equal(reference.row_quantiles(s, q), want)


def test_adaptive_eps_is_mean_of_torch_quantile_rows():
    z1, z2 = random_views(40, 16, seed=9, dtype=torch.float32)
    x = F.normalize(torch.cat([z1, z2]), dim=1)
    want = torch.quantile(x @ x.T, 0.99, dim=1, interpolation="nearest").mean()
    _, stats = reference.hex_reference(z1, z2, temperature=0.1)
    assert torch.equal(stats["eps"], want)


def test_row_quantiles_half_precision_input():
    g = torch.Generator().manual_seed(10)
    s = torch.randn(33, 65, generator=g).half()
    want = torch.quantile(s.float(), 0.9, dim=1, interpolation="nearest")
    assert torch.equal(reference.row_quantiles(s, 0.9), want)
    assert torch.equal(reference.row_quantiles(s.bfloat16(), 0.9),
                       torch.quantile(s.bfloat16().float(), 0.9, dim=1, interpolation="nearest"))


@pytest.mark.slow
def test_reference_at_2b_8192():
    """2B = 8192 gives 2^26 similarities, over torch.quantile's 2^24 limit in older releases; the
    reference's eps must still equal torch.quantile applied to row blocks small enough for it."""
    batch = 4096
    z1, z2 = random_views(batch, 4, seed=11, dtype=torch.float32)
    with torch.no_grad():
        loss, stats = reference.hex_reference(z1, z2, temperature=0.1)
        assert torch.isfinite(loss)
        x = F.normalize(torch.cat([z1, z2]), dim=1)
        parts = [torch.quantile(x[i:i + 1024] @ x.T, 0.99, dim=1, interpolation="nearest")
                 for i in range(0, 2 * batch, 1024)]
        assert torch.equal(stats["eps"], torch.cat(parts).mean())
        assert int(stats["rows"]) == 2 * batch


@pytest.mark.parametrize("threshold", ["adaptive", 0.0])
def test_threshold_is_strict(threshold):
    """Entries equal to eps are regular (`>`, not `>=`). Rows e1, e2 | e1, e2: every negative has
    cosine 0 exactly; q = 0.3 picks index 1 of [0, 0, 1, 1], so the adaptive eps is exactly 0; the
    fixed rule sees f = s on these rows (min 0, max 1), so threshold 0 also ties every negative."""
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    loss, stats = reference.hex_reference(z1, z1.clone(), temperature=0.5, threshold=threshold, quantile=0.3)
    assert float(stats["eps"]) == 0.0
    assert int(stats["hier_count"]) == 0 and int(stats["empty_rows"]) == 0
    assert loss.item() == pytest.approx(-1 / 0.5 + math.log(2.0), rel=1e-12)
