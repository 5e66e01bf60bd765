"""Launchers, the autograd.Function and the public entry points of the fused HEX kernel.

    hex_rect(anchors [M, D], candidates [N, D], pos_index [M], self_index [M], *, temperature,
             rule, eps, hierarchy_weight, positive_in_denominator, anchor_groups,
             candidate_groups) -> (loss, stats)          same contract as hexfast.reference.hex_rect
    hex_loss_triton(z1 [B, D], z2 [B, D], *, temperature, threshold, quantile, hierarchy_weight,
                    positive_in_denominator, groups) -> (loss, stats)   == hexfast.reference.hex_reference

Passes (n = rows, see docs/kernel.md): adaptive rule: 2-4 selection passes (kernels/quantile.py)
then one log-sum-exp pass; fixed rule: one min/max pass then the log-sum-exp pass; none/groups:
the log-sum-exp pass alone. Backward: one pass over the anchors and one over the candidates. Memory:
inputs, O(M + N) row statistics and the O((M + N) * D) gradients; never an M x N matrix.
"""
from __future__ import annotations

import math

import torch
import triton

from kernels._tiles import RULE_IDS
from kernels.hex_kernels import STAT_FIELDS, _bwd_cols_kernel, _bwd_rows_kernel, _lse_kernel
from kernels.prepare import Prepared, prepare
from kernels.quantile import kth_largest, nearest_rank_kth, row_min_max

_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


def _row_index(name: str, t: torch.Tensor, m: int, n: int, device, allow_none: bool) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] != m:
        raise ValueError(f"{name} must be a 1-D tensor of {m} indices")
    if t.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must hold integers (int64 or int32), got {t.dtype}")
    t = t.to(device=device, dtype=torch.int64).contiguous()
    low = -1 if allow_none else 0
    if m and (int(t.min()) < low or int(t.max()) >= n):
        raise ValueError(f"{name} must lie in [{low}, {n}), got values in [{int(t.min())}, {int(t.max())}]")
    return t


class _Hex(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchors, candidates, p: Prepared, pos, slf, eps_t, rmin, rden, ga, gc,
                rule_id: int, temperature: float, weight: float, pos_in_den: bool):
        m, n = p.m, p.n
        dev = p.a.device
        stats = torch.empty((m, STAT_FIELDS), device=dev, dtype=torch.float32)
        scale2 = _LOG2E / temperature
        grid = (triton.cdiv(m, p.cfg.block_m),)
        _lse_kernel[grid](*p.sim_args(), pos, slf, eps_t, rmin, rden, ga, gc, stats, m, n, p.d,
                          p.a.stride(0), p.c.stride(0), scale2, RULE=rule_id, **p.sim_meta())
        m_r, s_r, m_h, s_h, s_pos, n_h = stats.unbind(1)
        neg_inf = torch.full_like(m_r, -math.inf)
        part_r = torch.where(s_r > 0, m_r + torch.log2(s_r), neg_inf)
        part_h = (torch.where(s_h > 0, m_h + torch.log2(s_h), neg_inf) + math.log2(weight)
                  if weight > 0 else neg_inf)
        lse2 = torch.logaddexp2(part_r, part_h)
        if pos_in_den:
            lse2 = torch.logaddexp2(lse2, s_pos * scale2)
        empty = torch.isneginf(lse2)
        per_row = torch.where(empty, torch.zeros_like(lse2), _LN2 * lse2 - s_pos / temperature)
        loss = per_row.sum() / m
        ctx.p, ctx.rule_id, ctx.temperature, ctx.weight, ctx.pos_in_den = (
            p, rule_id, temperature, weight, pos_in_den)
        ctx.save_for_backward(pos, slf, eps_t, rmin, rden, ga, gc, torch.where(empty, 0.0, lse2),
                              (~empty).float())
        ctx.same = anchors is candidates
        n_h = n_h.to(torch.int64)
        ctx.mark_non_differentiable(n_h, empty)
        return loss, n_h, empty

    @staticmethod
    def backward(ctx, g_loss, _g_nh, _g_empty):
        pos, slf, eps_t, rmin, rden, ga, gc, lse2, live = ctx.saved_tensors
        p: Prepared = ctx.p
        m, n, d = p.m, p.n, p.d
        gscale = (live * (g_loss.float() / m)).contiguous()
        args = (*p.sim_args(), pos, slf, eps_t, rmin, rden, ga, gc, lse2.contiguous(), gscale)
        scalars = (m, n, d, p.a.stride(0), p.c.stride(0), _LOG2E / ctx.temperature,
                   1.0 / ctx.temperature, float(ctx.weight))
        _, _, block_dout = p.blocks
        meta = dict(POS_IN_DEN=ctx.pos_in_den, RULE=ctx.rule_id, BLOCK_DOUT=block_dout,
                    **p.sim_meta())
        d_chunks = triton.cdiv(d, block_dout)
        need_a, need_c = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_a = grad_c = None
        if need_a:
            dz = torch.empty((m, d), device=p.a.device, dtype=torch.float32)
            _bwd_rows_kernel[(triton.cdiv(m, p.cfg.block_m), d_chunks)](*args, dz, *scalars, **meta)
            grad_a = _through_normalize(p.a, p.inv_a, dz)
        if need_c:
            dz = torch.empty((n, d), device=p.a.device, dtype=torch.float32)
            _bwd_cols_kernel[(triton.cdiv(n, p.cfg.block_n), d_chunks)](*args, dz, *scalars, **meta)
            grad_c = _through_normalize(p.c, p.inv_c, dz)
        return (grad_a, grad_c) + (None,) * 12


def _through_normalize(x: torch.Tensor, inv_norm: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Backward of z = x / max(|x|, 1e-12): (g - z (z.g)) / |x|, or g / 1e-12 where clamped."""
    z = x.float() * inv_norm[:, None]
    clamped = (inv_norm >= 1e12)[:, None]  # |x| <= 1e-12: z = x * 1e12 is linear in x
    radial = z * (z * g).sum(dim=1, keepdim=True)
    out = torch.where(clamped, g, g - radial) * inv_norm[:, None]
    return out.to(x.dtype)


def _eps_tensor(eps, device) -> torch.Tensor:
    if eps is None:
        return torch.full((1,), math.nan, device=device, dtype=torch.float32)
    return torch.as_tensor(eps, dtype=torch.float32, device=device).detach().reshape(1).clone()


def hex_rect(anchors, candidates, pos_index, self_index, *, temperature: float, rule: str,
             eps=None, hierarchy_weight: float = 0.0, positive_in_denominator: bool = False,
             anchor_groups=None, candidate_groups=None):
    """The fused HEX loss of anchors [M, D] against candidates [N, D]; see hexfast.reference.hex_rect.

    For rule "adaptive" the caller gives eps (e.g. all-reduced mean of `row_quantiles`); for "fixed"
    eps is the threshold on the min-max normalised cosine. Returns (loss, stats) with the same keys
    as the reference.
    """
    if rule not in RULE_IDS:
        raise ValueError(f"unknown rule {rule!r}; valid: {', '.join(RULE_IDS)}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not hierarchy_weight >= 0:
        raise ValueError(f"hierarchy_weight must be >= 0, got {hierarchy_weight!r}")
    if rule in ("adaptive", "fixed") and eps is None:
        raise ValueError(f"rule {rule!r} needs eps")
    a = anchors.detach()
    p = prepare(a, a if candidates is anchors else candidates.detach())
    m, n = p.m, p.n
    pos = _row_index("pos_index", pos_index, m, n, p.a.device, allow_none=False)
    slf = _row_index("self_index", self_index, m, n, p.a.device, allow_none=True)
    return _hex_rect(anchors, candidates, p, pos, slf, temperature=temperature, rule=rule, eps=eps,
                     hierarchy_weight=hierarchy_weight,
                     positive_in_denominator=positive_in_denominator,
                     anchor_groups=anchor_groups, candidate_groups=candidate_groups)


def _hex_rect(anchors, candidates, p: Prepared, pos, slf, *, temperature, rule, eps,
              hierarchy_weight, positive_in_denominator, anchor_groups, candidate_groups):
    """hex_rect after validation (pos/slf: int64 indices already checked)."""
    m, n = p.m, p.n
    dev = p.a.device
    dummy = torch.zeros(1, device=dev, dtype=torch.float32)
    rmin = rden = dummy
    ga = gc = torch.zeros(1, device=dev, dtype=torch.int64)
    eps_t = _eps_tensor(eps if rule in ("adaptive", "fixed") else None, dev)
    if rule == "fixed":
        with torch.no_grad():
            rmin, rmax = row_min_max(p)
            rden = rmax - rmin
    if rule == "groups":
        if anchor_groups is None or candidate_groups is None:
            raise ValueError("rule 'groups' needs anchor_groups [M] and candidate_groups [N]")
        ga = _labels("anchor_groups", anchor_groups, m, dev)
        gc = _labels("candidate_groups", candidate_groups, n, dev)
    rule_id = RULE_IDS[rule]
    loss, n_h, empty = _Hex.apply(anchors, candidates, p, pos, slf, eps_t, rmin, rden, ga, gc,
                                  rule_id, float(temperature), float(hierarchy_weight),
                                  bool(positive_in_denominator))
    with torch.no_grad():
        special = 1 + ((slf >= 0) & (slf != pos)).to(torch.int64)
        neg_count = (n - special).sum()
        hier_count = n_h.sum()
        eps_value = (eps_t.reshape(()).clone() if rule in ("adaptive", "fixed")
                     else torch.tensor(math.nan, device=dev, dtype=torch.float32))
        stats = {
            "eps": eps_value,
            "hier_fraction": hier_count.float() / neg_count.clamp_min(1).float(),
            "hier_count": hier_count,
            "neg_count": neg_count,
            "empty_rows": empty.sum(),
            "rows": torch.tensor(m, device=dev),
        }
    return loss, stats


def _labels(name: str, g, rows: int, device) -> torch.Tensor:
    if not isinstance(g, torch.Tensor) or g.dim() != 1 or g.shape[0] != rows:
        raise ValueError(f"{name} must be a 1-D tensor of {rows} labels")
    if g.is_floating_point() or g.is_complex():
        raise TypeError(f"{name} must hold integer labels, got {g.dtype}")
    return g.to(device=device, dtype=torch.int64).contiguous()


def hex_loss_triton(z1, z2, *, temperature: float = 0.1, threshold="adaptive", quantile: float = 0.99,
                    hierarchy_weight: float = 0.0, positive_in_denominator: bool = False, groups=None):
    """The two-view HEX loss through the fused kernel; same arguments and result as hex_reference."""
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be [B, D] with the same shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    batch = z1.shape[0]
    if batch < 2:
        raise ValueError(f"HEX needs a batch of at least 2, got B={batch}")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not hierarchy_weight >= 0:
        raise ValueError(f"hierarchy_weight must be >= 0, got {hierarchy_weight!r}")
    x = torch.cat([z1, z2], dim=0)
    n = 2 * batch
    rows = torch.arange(n, device=x.device)
    pos, slf = (rows + batch) % n, rows  # valid by construction: no host round trip to check
    eps, labels = None, None
    xd = x.detach()
    p = prepare(xd, xd)
    if groups is not None:
        rule = "groups"
        labels = torch.cat([groups, groups]).to(x.device)
    elif isinstance(threshold, str):
        if threshold not in ("adaptive", "none"):
            raise ValueError(f"threshold must be 'adaptive', 'none' or a float in [0, 1], got {threshold!r}")
        rule = threshold
        if rule == "adaptive":
            if not 0.0 <= float(quantile) <= 1.0:
                raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
            with torch.no_grad():
                eps = kth_largest(p, nearest_rank_kth(n, float(quantile))).mean()
    else:
        rule, eps = "fixed", float(threshold)
    return _hex_rect(x, x, p, pos, slf, temperature=temperature, rule=rule, eps=eps,
                     hierarchy_weight=hierarchy_weight,
                     positive_in_denominator=positive_in_denominator,
                     anchor_groups=labels, candidate_groups=labels)
