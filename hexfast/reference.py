"""The HEX loss in plain PyTorch: the specification every fast path is tested against.

Readable first, exact second, fast never. It materialises the similarity matrix; the fused kernel in
`kernels/` computes the same numbers without it. The behaviour reproduces the authors' released code
(`docs/hex-spec.md` states it in full; summarised here):

    x = normalize(cat[z1, z2])                 [2B, D]
    s_ik = x_i . x_k                           cosine similarities, [2B, 2B]
    p(i) = (i + B) mod 2B                      the positive; self (k = i) is never used
    negatives of i: every k not in {i, p(i)}, split into
      H(i) hierarchical  (rule below)   and   R(i) regular (the others)
    l_i = -s_ip/t + log( sum_R e^{s/t} + w sum_H e^{s/t} [+ e^{s_ip/t}] )
    L   = mean_i l_i   over all 2B anchors

Rules for H(i):
    adaptive  s_ik > eps, eps = mean over rows of each row's nearest-rank `quantile` of the FULL row
              (self and positive included), exactly torch.quantile(..., interpolation="nearest")
    fixed     f_ik > eps, f_ik = (s_ik - m_i) / (M_i - m_i), m_i / M_i the min / max of the full row
    groups    g(i) == g(k)  (supervised superclass variant)
    none      H empty

The released code adds the constant (2B - 2) e^{-1/t} to every row's loss (a hard-negative term,
subtracted from its log-probability, that always clamps to its floor). It has no gradient and only
shifts the logged value, so it is left out: released loss = this loss + (2B - 2) e^{-1/t}.

A row whose denominator is empty (w = 0, positive excluded, every negative hierarchical: a collapsed
batch, a one-group `groups`) contributes l_i = 0 with zero gradient -- exactly what it would give with
its positive alone in the denominator -- and still counts in the mean. `stats["empty_rows"]` counts
them. eps and the masks carry no gradient.

Everything is computed in float32 (float64 inputs stay float64, for gradcheck); half-precision inputs
are upcast before normalisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hexfast.rules import Rule, resolve_rule
from hexfast.validate import RULE_KINDS

RULES = RULE_KINDS

# kthvalue over very long rows allocates per-row work buffers; bounding the elements handled per
# call keeps the reference usable at large 2B without changing any value.
_QUANTILE_CHUNK_ELEMENTS = 1 << 24


def nearest_rank_index(n: int, q: float, dtype: torch.dtype = torch.float32) -> int:
    """Ascending index that `torch.quantile(row, q, interpolation="nearest")` picks among n values.

    torch stores q in the input's dtype (float32 for float32 input) and forms the rank
    `q * (n - 1)` in double precision before rounding to the nearest integer (half to even). Doing
    the same arithmetic keeps the index identical: e.g. q = 0.9, n = 16 gives 13.4999996 -> 13, not
    14, because float32(0.9) < 0.9. (Checked against torch.quantile for thousands of (n, q) pairs in
    the tests.)
    """
    if n < 1:
        raise ValueError(f"a row needs at least one value, got n={n}")
    return int(round(_stored(q, dtype) * (n - 1)))


# significand bits (implicit bit included) of the dtypes row_quantiles computes in
_SIGNIFICAND_BITS = {torch.float32: 24, torch.float64: 53}


def _stored(q: float, dtype: torch.dtype) -> float:
    """q rounded to the nearest value `dtype` holds (ties to even, as a cast does). Pure Python, so
    torch.compile folds it into a constant instead of breaking the graph at a `.item()`; exact for
    normal numbers, i.e. every q in (0, 1) that a float32 holds as a normal number."""
    bits = _SIGNIFICAND_BITS.get(dtype)
    if bits is None or not 1e-37 < q < 1.0:
        return torch.tensor(q, dtype=dtype).item()
    mantissa, exponent = math.frexp(q)  # q = mantissa * 2^exponent, 0.5 <= mantissa < 1
    return math.ldexp(round(mantissa * (1 << bits)), exponent - bits)


def row_quantiles(s: Tensor, q: float) -> Tensor:
    """Exact nearest-rank q-quantile of every row of `s` ([M, N] -> [M], float32 or float64).

    Equals `torch.quantile(s, q, dim=1, interpolation="nearest")` wherever that works, but also for
    half-precision input (upcast to float32) and for any size (torch.quantile refuses more than 2^24
    elements on older releases and sorts every row): one `kthvalue` per chunk of rows.
    """
    if s.dim() != 2:
        raise ValueError(f"row_quantiles expects a 2-D tensor [M, N], got shape {tuple(s.shape)}")
    s = s.detach()
    if s.dtype not in (torch.float32, torch.float64):
        s = s.float()
    m, n = s.shape
    k = nearest_rank_index(n, q, s.dtype) + 1  # kthvalue is 1-based, k-th smallest
    rows_per_chunk = max(1, _QUANTILE_CHUNK_ELEMENTS // max(n, 1))
    parts = [chunk.kthvalue(k, dim=1).values for chunk in s.split(rows_per_chunk, dim=0)]
    return torch.cat(parts) if parts else s.new_empty(0)


def similarities(anchors: Tensor, candidates: Tensor) -> Tensor:
    """Cosine similarities [M, N] of the L2-normalised rows, in float32 (float64 stays float64).

    Autocast is switched off here: under bf16 mixed precision the product would otherwise be
    rounded to bf16 (~4e-3), moving eps and flipping threshold decisions.
    """
    dtype = torch.float64 if anchors.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        a = F.normalize(anchors.to(dtype), dim=1)
        c = a if candidates is anchors else F.normalize(candidates.to(dtype), dim=1)
        return a @ c.T


def _special_mask(m: int, n: int, pos_index: Tensor, self_index: Tensor, device) -> Tensor:
    """[M, N] bool: True at each row's positive and self (these are never negatives)."""
    special = torch.zeros(m, n, dtype=torch.bool, device=device)
    rows = torch.arange(m, device=device)
    special[rows, pos_index] = True
    # rows without a self entry (-1) write False into column 0, keeping what is there: no boolean
    # index, which would cost a device sync on a GPU
    own = self_index.clamp_min(0)
    special[rows, own] = special[rows, own] | (self_index >= 0)
    return special


def _kind_and_value(rule, eps):
    """(kind, value) of a Rule, or of a kind given as a string with its value as `eps`."""
    if isinstance(rule, Rule):
        if eps is not None:
            raise ValueError("pass the threshold inside the Rule, not also as eps")
        return rule.kind, rule.value
    return rule, eps


def _scalar(value, dtype: torch.dtype, device) -> Tensor:
    """A Python number or 0-dim tensor as a 0-dim tensor on `device`; a number is filled in there
    rather than copied from the host (a blocking copy on a GPU)."""
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype)
    return torch.full((), value, dtype=dtype, device=device)


def hierarchy_mask(
    s: Tensor,
    *,
    rule: Rule | str,
    eps=None,
    anchor_groups: Tensor | None = None,
    candidate_groups: Tensor | None = None,
) -> Tensor:
    """[M, N] bool: which entries pass the hierarchy rule (before removing self and positive).

    rule: a `Rule`, or its kind ("none" | "adaptive" | "fixed" | "groups") with its value as `eps`.
    """
    rule, eps = _kind_and_value(rule, eps)
    s = s.detach()
    if rule == "none":
        return torch.zeros_like(s, dtype=torch.bool)
    if rule == "adaptive":
        return s > _scalar(eps, s.dtype, s.device)
    if rule == "fixed":
        lo = s.min(dim=1, keepdim=True).values
        hi = s.max(dim=1, keepdim=True).values
        den = hi - lo
        f = torch.where(den > 0, (s - lo) / torch.where(den > 0, den, torch.ones_like(den)), 0.0)
        return f > _scalar(eps, s.dtype, s.device)
    if rule == "groups":
        return anchor_groups.view(-1, 1) == candidate_groups.view(1, -1)
    raise ValueError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")


def hex_from_similarities(
    s: Tensor,
    pos_index: Tensor,
    self_index: Tensor,
    *,
    temperature: float,
    rule: Rule | str,
    eps=None,
    hierarchy_weight: float = 0.0,
    positive_in_denominator: bool = False,
    anchor_groups: Tensor | None = None,
    candidate_groups: Tensor | None = None,
) -> tuple[Tensor, dict]:
    """HEX on a given similarity matrix `s` [M, N] (differentiable). Returns (mean loss, stats).

    rule: a `Rule` (its value given: an adaptive rule needing quantiles is resolved by the caller),
    or its kind with the value as `eps`.
    """
    rule, eps = _kind_and_value(rule, eps)
    m, n = s.shape
    rows = torch.arange(m, device=s.device)
    with torch.no_grad():
        special = _special_mask(m, n, pos_index, self_index, s.device)
        negative = ~special
        hier = hierarchy_mask(
            s, rule=rule, eps=eps, anchor_groups=anchor_groups, candidate_groups=candidate_groups
        ) & negative
        coef = torch.where(hier, s.new_tensor(float(hierarchy_weight)), s.new_tensor(1.0)) * negative
        if positive_in_denominator:
            coef[rows, pos_index] = 1.0
        used = coef > 0

    logits = s / temperature
    # log sum_k c_k e^{l_k}, stabilised by the max over the entries actually used.
    used_logits = logits.masked_fill(~used, -math.inf)
    with torch.no_grad():
        row_max = used_logits.max(dim=1).values
        empty = torch.isinf(row_max)  # no entry used: the denominator is empty
        row_max = torch.where(empty, torch.zeros_like(row_max), row_max)
    sumexp = (coef * torch.exp(used_logits - row_max[:, None])).sum(dim=1)
    lse = row_max + torch.log(torch.where(empty, torch.ones_like(sumexp), sumexp))
    per_row = torch.where(empty, torch.zeros_like(lse), lse - logits[rows, pos_index])
    loss = per_row.sum() / m

    with torch.no_grad():
        stats = hex_stats(eps if rule in ("adaptive", "fixed") else None, hier.sum(), negative.sum(), empty.sum(), m)
    return loss, stats


def hex_stats(eps, hier_count: Tensor, neg_count: Tensor, empty_rows: Tensor, rows) -> dict:
    """The stats dict every backend returns (detached tensors on the counts' device).

    eps: the rule's threshold (number or 0-dim tensor; None for the rules without one: NaN);
    hier_count / neg_count: hierarchical / all negatives over the rows; empty_rows: rows whose
    denominator was empty; rows: M (an int, or a 0-dim int64 tensor on the counts' device).
    Built from the counts with two ops when `rows` is a tensor (the fused kernel's launch budget).
    """
    device = hier_count.device
    eps_value = (  # filled / converted on the device: no host-to-device copy (a sync on a GPU)
        torch.full((), math.nan, dtype=torch.float32, device=device)
        if eps is None
        else _scalar(eps, torch.float32, device).detach()
    )
    return {
        "eps": eps_value.reshape(()),
        # true division of the integer counts computes in float32, as .float() / .float() would
        "hier_fraction": torch.div(hier_count, neg_count.clamp_min(1)),
        "hier_count": hier_count,
        "neg_count": neg_count,
        "empty_rows": empty_rows,
        "rows": rows if isinstance(rows, Tensor) else torch.full((), rows, dtype=torch.long, device=device),
    }


def hex_rect(
    anchors: Tensor,
    candidates: Tensor,
    pos_index: Tensor,
    self_index: Tensor,
    rule: Rule | str,
    *,
    temperature: float,
    eps=None,
    hierarchy_weight: float = 0.0,
    positive_in_denominator: bool = False,
    anchor_groups: Tensor | None = None,
    candidate_groups: Tensor | None = None,
) -> tuple[Tensor, dict]:
    """The general form: anchors [M, D] against candidates [N, D].

    pos_index [M] (long): each row's positive among the candidates. self_index [M] (long): each
    row's own entry among the candidates, or -1 when it has none (e.g. MoCo queries). For the
    adaptive rule `eps` is given by the caller (e.g. the mean of `row_quantiles` all-reduced across
    processes); for the fixed rule it is the threshold on the min-max normalised cosine. `rule` is
    a `Rule` with its value, or its kind with the value as `eps`.
    Returns (loss = mean over the M rows, stats). The torch backend's `rect`.
    """
    s = similarities(anchors, candidates)
    return hex_from_similarities(
        s,
        pos_index,
        self_index,
        temperature=temperature,
        rule=rule,
        eps=eps,
        hierarchy_weight=hierarchy_weight,
        positive_in_denominator=positive_in_denominator,
        anchor_groups=anchor_groups,
        candidate_groups=candidate_groups,
    )


def square_indices(batch: int, device=None) -> tuple[Tensor, Tensor]:
    """Positive and self indices of the two-view case: rows [z1; z2], p(i) = (i + B) mod 2B."""
    n = 2 * batch
    rows = torch.arange(n, device=device)
    return (rows + batch) % n, rows


def hex_square(
    x: Tensor,
    batch: int,
    rule: Rule,
    *,
    temperature: float,
    hierarchy_weight: float = 0.0,
    positive_in_denominator: bool = False,
    groups: Tensor | None = None,
) -> tuple[Tensor, dict]:
    """The two-view case: x = cat[z1, z2] [2B, D], row i's positive is (i + B) mod 2B, its self i.

    An adaptive rule without a value gets eps = mean of `row_quantiles` of the full rows. groups:
    [2B] row labels for the groups rule. The torch backend's `square`. Returns (loss, stats).
    """
    s = similarities(x, x)
    pos_index, self_index = square_indices(batch, s.device)
    if rule.needs_quantiles:
        rule = rule.with_cosine_threshold(row_quantiles(s, rule.quantile).mean())
    settings = dict(temperature=temperature, hierarchy_weight=hierarchy_weight,
                    positive_in_denominator=positive_in_denominator)
    return hex_from_similarities(s, pos_index, self_index, rule=rule, anchor_groups=groups, candidate_groups=groups,
                                 **settings)


def candidate_quantiles(anchors: Tensor, candidates: Tensor, q: float) -> Tensor:
    """[M] nearest-rank q-quantile of each row of the cosine similarities of anchors vs candidates
    (no gradient). The torch backend's `row_quantiles`."""
    with torch.no_grad():
        return row_quantiles(similarities(anchors, candidates), q)


def hex_reference(
    z1: Tensor,
    z2: Tensor,
    *,
    temperature: float = 0.1,
    threshold="adaptive",
    quantile: float = 0.99,
    hierarchy_weight: float = 0.0,
    positive_in_denominator: bool = False,
    groups: Tensor | None = None,
) -> tuple[Tensor, dict]:
    """The two-view HEX loss (no input validation: `hexfast.hex_loss` validates). Returns (loss, stats).

    threshold: "adaptive" | "none" | a float in [0, 1] (fixed rule). `groups` ([B] labels) selects
    the supervised rule and ignores `threshold`.
    """
    rule = resolve_rule(threshold, quantile, grouped=groups is not None)
    labels = None if groups is None else torch.cat([groups, groups])
    return hex_square(
        torch.cat([z1, z2], dim=0),
        z1.shape[0],
        rule,
        temperature=temperature,
        hierarchy_weight=hierarchy_weight,
        positive_in_denominator=positive_in_denominator,
        groups=labels,
    )
