"""Launchers and the registered custom ops of the fused HEX kernel (`kernels.backend` calls them).

    square_op(x [2B, D], groups [2B] | None, eps [1] | None, B, rule, quantile, temperature, weight,
              positive_in_denominator) -> (totals [5] fp64, eps [1], lse2 [2B], gmul [2B], rmin, rden)
    rect_op(anchors [M, D], candidates [N, D], pos [M], self [M], anchor_groups, candidate_groups, eps,
            rule, temperature, weight, positive_in_denominator) -> the same six outputs for M rows
    row_quantiles(anchors, candidates, q) -> [M] fp32  exact nearest-rank quantiles of each row

totals = (loss, |H|, empty rows, negatives, rows) summed over the rows; rule is the kernel's RULE
constexpr (kernels/_tiles.py). Both ops are `torch.library.custom_op`s with registered backward
ops (`::square_backward`, `::rect_backward`), so torch.compile and CUDA graphs capture a training
step that contains them. No launcher reads a tensor value on the host: the grids and every branch
depend on shapes and Python arguments only; the kernels decide repairs themselves
(kernels/hex_kernels.py).

Launches, square case, adaptive rule (the most): norms, sketch (one per row chunk), topk, the band
means, the fused pass, the finisher, eps = torch.mean, the settling and the sum of the per-row
outputs; backward one kernel. Memory: inputs, O(n) row statistics, the [n, CAP] collect buffer,
the sketch buffer (at most SKETCH_CHUNK_ELEMENTS), the O(n D) gradients; never an n x n matrix.
"""
from __future__ import annotations

import math

import torch
import triton

from kernels import hex_kernels as K
from kernels._tiles import RULE_IDS
from kernels.config import (MAX_REPAIR_PASSES, SELECT_THRESHOLDS, SKETCH_CHUNK_ELEMENTS, check_inputs,
                            dot_precision, feature_blocks, interpreting, select_plan, tile_config)

_LOG2E = 1.4426950408889634
# While 2 log2(e)/tau <= 126 no exponent leaves fp32's normal range with the fixed maximum 1/tau.
FIXED_MAX_MIN_TAU = 2 * _LOG2E / 126


# ---------------------------------------------------------------------------------------- inputs
class _Operands:
    """Contiguous inputs, fp32 norms / inverse norms (one kernel), and the constexprs of the tiles."""

    def __init__(self, a: torch.Tensor, c: torch.Tensor | None):
        self.a = a
        self.c = a if c is None else c
        self.cfg = tile_config()
        self.na, self.inv_a = _norms(a, self.cfg)
        self.nc, self.inv_c = (self.na, self.inv_a) if c is None else _norms(self.c, self.cfg)
        self.norm_div = a.dtype == torch.float32
        # fp32 inputs: "tf32x3" on the GPU keeps the similarities (and so the masks near the threshold)
        # at fp32 accuracy on the tensor cores (plain tf32 would move s by ~1e-4 and flip decisions
        # against the reference); the interpreter takes "ieee" unless told (kernels/config.py)
        self.precision = dot_precision(a.dtype)
        arch = None
        if a.is_cuda and not interpreting():
            major, minor = torch.cuda.get_device_capability(a.device)
            arch = 10 * major + minor
        self.single_k, self.block_d, self.block_dout = feature_blocks(self.cfg, a.shape[1], self.precision, arch)

    @property
    def m(self) -> int:
        return self.a.shape[0]

    @property
    def n(self) -> int:
        return self.c.shape[0]

    @property
    def d(self) -> int:
        return self.a.shape[1]

    def scales(self):
        """Row scales the tiles take: norms (fp32 inputs, divided on load) or inverse norms."""
        return (self.na, self.nc) if self.norm_div else (self.inv_a, self.inv_c)

    def sim(self):
        ra, rc = self.scales()
        return (self.a, self.c, ra, rc)

    def meta(self, **extra):
        cfg = self.cfg
        return dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=self.block_d, SINGLE_K=self.single_k,
                    NORM_DIV=self.norm_div, UPCAST=interpreting(), PRECISION=self.precision,
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages, **extra)

    def grid(self, rows: int):
        return (triton.cdiv(rows, self.cfg.block_m),)


def _norms(x: torch.Tensor, cfg):
    norm = torch.empty(x.shape[0], device=x.device, dtype=torch.float32)
    inv = torch.empty_like(norm)
    bd = min(256, max(16, triton.next_power_of_2(x.shape[1])))
    K._norms_kernel[(triton.cdiv(x.shape[0], cfg.block_m),)](x, norm, inv, x.shape[0], x.shape[1], x.stride(0),
                                                             BLOCK_M=cfg.block_m, BLOCK_D=bd)
    return norm, inv


def _dummy(dev, dtype=torch.float32):
    return torch.empty(1, device=dev, dtype=dtype)


# ------------------------------------------------------------------------------------- selection
def _nearest_rank_kth(n: int, q: float) -> int:
    """1-based kth largest that torch.quantile(row, q, interpolation="nearest") picks of n values.

    The arithmetic of hexfast.reference.nearest_rank_index (q stored as float32, the rank formed in
    double and rounded half to even) without creating a tensor (tests check they agree)."""
    import numpy as np

    return n - int(round(float(np.float32(q)) * (n - 1)))


def _select(op: _Operands, pos, slf, half: int, kth: int, temperature: float | None):
    """The sketch, the fused pass and the finisher. Returns (kth values [M], status [M], state).

    With a `temperature` the fused pass also accumulates the split sums; `state` then holds what the
    settling needs (row stats, buffer, band)."""
    m, n, dev = op.m, op.n, op.a.device
    plan = select_plan(n, kth)
    s = plan.samples
    chunk = max(op.cfg.block_m, (SKETCH_CHUNK_ELEMENTS // s) // op.cfg.block_m * op.cfg.block_m)
    sk = torch.empty((min(m, chunk), s), device=dev, dtype=torch.float32)
    parts = []
    for row0 in range(0, m, chunk):  # one chunk unless m * S is large
        rows = min(chunk, m - row0)
        K._sketch_kernel[op.grid(rows)](*op.sim(), sk, row0, row0 + rows, n, s, op.d, op.a.stride(0),
                                        op.c.stride(0), **op.meta())
        parts.append(torch.topk(sk[:rows], plan.top, dim=1, sorted=True).values)
    tv = parts[0] if len(parts) == 1 else torch.cat(parts)
    band = tv.mean(dim=0)  # eps band ends: band[e_lo_at], band[e_hi_at]
    buf = torch.empty((m, plan.cap), device=dev, dtype=torch.float32)
    rs = torch.empty((m, K.RS_FIELDS.value), device=dev, dtype=torch.float32)
    dummy = _dummy(dev)
    lse = temperature is not None
    scale2 = _LOG2E / temperature if lse else 0.0
    fixed_max = lse and temperature >= FIXED_MAX_MIN_TAU
    K._fwd_kernel[op.grid(m)](*op.sim(), pos, slf, band, dummy, dummy, dummy, dummy, tv, buf, rs, dummy,
                              dummy, dummy, m, n, op.d, op.a.stride(0), op.c.stride(0), half, plan.top,
                              plan.j_lo, plan.j_hi, plan.e_lo_at, plan.e_hi_at, plan.cap, scale2, 0.0, 0.0,
                              0.0, RULE=1, SQUARE=half > 0, SELECT=True, LSE=lse, HAS_HI=plan.j_hi >= 0,
                              FIXED_MAX=fixed_max, HAS_W=False, POS_IN_DEN=False, **op.meta())
    kth_v = torch.empty(m, device=dev, dtype=torch.float32)
    status = torch.empty(m, device=dev, dtype=torch.int8)
    thr = torch.empty((m, SELECT_THRESHOLDS), device=dev, dtype=torch.float32)
    # rows per bisection step: a [SUB, CAP] block in registers (the interpreter: the whole block)
    sub = op.cfg.block_m if interpreting() else max(1, min(op.cfg.block_m, 4096 // plan.cap))
    K._select_kernel[op.grid(m)](*op.sim(), pos, slf, tv, buf, rs, thr, kth_v, status, m, n, op.d,
                                 op.a.stride(0), op.c.stride(0), half, plan.top, plan.j_lo, plan.j_hi,
                                 plan.cap, kth, SQUARE=half > 0, CAP=plan.cap, NT=SELECT_THRESHOLDS, SUB=sub,
                                 MAX_PASSES=MAX_REPAIR_PASSES, **op.meta())
    return kth_v, status, dict(plan=plan, band=band, buf=buf, rs=rs)


# ---------------------------------------------------------------------------------------- forward
def _forward(op: _Operands, pos, slf, half: int, rule: int, eps_in, ga, gc, quantile: float,
             temperature: float, weight: float, pos_in_den: bool):
    """(totals [4] fp64, eps [1], lse2 [M], gmul [M], rmin, rden) -- fresh tensors, none aliasing
    another or an input (rmin/rden are [M] for the fixed rule, placeholders [1] otherwise)."""
    m, n, dev = op.m, op.n, op.a.device
    dummy = _dummy(dev)
    lse2 = torch.empty(m, device=dev, dtype=torch.float32)
    gmul = torch.empty(m, device=dev, dtype=torch.float32)
    rout = torch.empty((m, K.ROUT_FIELDS.value), device=dev, dtype=torch.float64)
    rmin, rden = _dummy(dev), _dummy(dev)
    scale2 = _LOG2E / temperature
    fixed_max = temperature >= FIXED_MAX_MIN_TAU
    common = dict(HAS_W=weight > 0, POS_IN_DEN=pos_in_den, FIXED_MAX=fixed_max, SQUARE=half > 0)
    log2w = math.log2(weight) if weight > 0 else 0.0
    if rule == RULE_IDS["adaptive"] and eps_in is None:
        kth_v, _, st = _select(op, pos, slf, half, _nearest_rank_kth(n, quantile), temperature)
        eps = kth_v.mean().reshape(1)  # the reference's op over the same fp32 vector
        plan = st["plan"]
        K._settle_kernel[op.grid(m)](*op.sim(), pos, slf, eps, st["band"], gc, st["buf"], st["rs"], lse2, gmul,
                                     rout, m, n, op.d, op.a.stride(0), op.c.stride(0), half, plan.e_lo_at,
                                     plan.e_hi_at, plan.cap, scale2, 1.0 / temperature, log2w, 1.0 / m,
                                     CAP=plan.cap, CHUNK=min(plan.cap, 32), **common, **op.meta())
    else:
        if eps_in is None:
            eps = torch.full((1,), math.nan, device=dev, dtype=torch.float32)
        else:
            eps = eps_in.detach().to(device=dev, dtype=torch.float32).reshape(1).clone()
        if rule == RULE_IDS["fixed"]:
            rmin = torch.empty(m, device=dev, dtype=torch.float32)
            rden = torch.empty_like(rmin)
            K._minmax_kernel[op.grid(m)](*op.sim(), rmin, rden, m, n, op.d, op.a.stride(0), op.c.stride(0),
                                         **op.meta())
        K._fwd_kernel[op.grid(m)](*op.sim(), pos, slf, eps, rmin, rden, ga, gc, dummy, dummy, dummy, lse2, gmul,
                                  rout, m, n, op.d, op.a.stride(0), op.c.stride(0), half, 1, -1, -1, 0, 0, 1,
                                  scale2, 1.0 / temperature, log2w, 1.0 / m, RULE=rule, SELECT=False, LSE=True,
                                  HAS_HI=False,
                                  **common, **op.meta())
    return rout.sum(dim=0), eps, lse2, gmul, rmin, rden


def _one_exp(temperature: float, weight: float) -> bool:
    """Whether the backward may factor 2^(l - lse2) = 2^(l - c) 2^(c - lse2) (kernels/hex_kernels.py):
    2^(c - lse2) stays finite when 2c - min(0, log2 w) <= 126 (w = 0: hierarchical terms add nothing)."""
    c = _LOG2E / temperature
    low_w = math.log2(weight) if 0.0 < weight < 1.0 else 0.0
    return temperature >= FIXED_MAX_MIN_TAU and 2 * c - low_w <= 126


def _backward(op: _Operands, g_totals, pos, slf, half: int, rule: int, eps, ga, gc, lse2, gmul, rmin, rden,
              temperature: float, weight: float, pos_in_den: bool, need_a: bool, need_c: bool, square: bool):
    m, n = op.m, op.n
    ra, rc = op.scales()
    scal = (half, _LOG2E / temperature, 1.0 / temperature, float(weight), 1.0 / m)
    meta = dict(SQUARE=half > 0, RULE=rule, POS_IN_DEN=pos_in_den, FUSE_NORM=op.single_k,
                ONE_EXP=_one_exp(temperature, weight),
                BLOCK_DOUT=op.block_dout, **op.meta())
    d_chunks = triton.cdiv(op.d, op.block_dout)
    stats = (pos, slf, rmin, rden, ga, gc, lse2, gmul, g_totals, eps)

    def launch(x, y, rx, ry, inv, rows, others, own_anchor, other_anchor):
        out = torch.empty((rows, op.d), device=x.device, dtype=x.dtype if op.single_k else torch.float32)
        K._bwd_kernel[(triton.cdiv(rows, op.cfg.block_m), d_chunks)](
            x, y, rx, ry, inv, *stats, out, rows, others, op.d, x.stride(0), y.stride(0), out.stride(0), *scal,
            OWN_ANCHOR=own_anchor, OTHER_ANCHOR=other_anchor, **meta)
        return out if op.single_k else _through_normalize(x, inv, out)

    if square:
        return launch(op.a, op.a, ra, ra, op.inv_a, m, m, True, True), None
    da = launch(op.a, op.c, ra, rc, op.inv_a, m, n, True, False) if need_a else None
    dc = launch(op.c, op.a, rc, ra, op.inv_c, n, m, False, True) if need_c else None
    return da, dc


def _through_normalize(x: torch.Tensor, inv_norm: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Backward of z = x / max(|x|, 1e-12) for the K-loop path (D > 256): (g - z (z.g)) / |x|."""
    z = x.float() * inv_norm[:, None]
    clamped = (inv_norm >= 1e12)[:, None]  # |x| <= 1e-12: z = x * 1e12 is linear in x
    radial = z * (z * g).sum(dim=1, keepdim=True)
    return (torch.where(clamped, g, g - radial) * inv_norm[:, None]).to(x.dtype)


# ----------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("hexfast_kernels::square", mutates_args=())
def square_op(x: torch.Tensor, groups: torch.Tensor | None, eps_in: torch.Tensor | None, half: int, rule: int,
               quantile: float, temperature: float, weight: float, pos_in_den: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-view HEX of x = cat[z1, z2] ([2B, D], half = B): (totals, eps, lse2, gmul, rmin, rden)."""
    dev = x.device
    g = groups if groups is not None else _dummy(dev, torch.int64)
    idx = _dummy(dev, torch.int64)  # the square case computes each row's positive and self
    return _forward(_Operands(x, None), idx, idx, half, rule, eps_in, g, g, quantile, temperature, weight,
                    pos_in_den)


@square_op.register_fake
def _square_fake(x, groups, eps_in, half, rule, quantile, temperature, weight, pos_in_den):
    n = x.shape[0]
    k = n if rule == RULE_IDS["fixed"] else 1
    f = dict(device=x.device, dtype=torch.float32)
    return (x.new_empty(K.ROUT_FIELDS.value, dtype=torch.float64), x.new_empty(1, **f), x.new_empty(n, **f),
            x.new_empty(n, **f), x.new_empty(k, **f), x.new_empty(k, **f))


@torch.library.custom_op("hexfast_kernels::square_backward", mutates_args=())
def _square_bwd_op(g_totals: torch.Tensor, x: torch.Tensor, groups: torch.Tensor | None, eps: torch.Tensor,
                   lse2: torch.Tensor, gmul: torch.Tensor, rmin: torch.Tensor, rden: torch.Tensor, half: int,
                   rule: int, temperature: float, weight: float, pos_in_den: bool) -> torch.Tensor:
    op = _Operands(x, None)
    dev = x.device
    g = groups if groups is not None else _dummy(dev, torch.int64)
    idx = _dummy(dev, torch.int64)
    dx, _ = _backward(op, g_totals.contiguous(), idx, idx, half, rule, eps, g, g, lse2, gmul, rmin, rden,
                      temperature, weight, pos_in_den, True, False, square=True)
    return dx


@_square_bwd_op.register_fake
def _square_bwd_fake(g_totals, x, groups, eps, lse2, gmul, rmin, rden, half, rule, temperature, weight,
                     pos_in_den):
    return torch.empty_like(x)


def _square_setup(ctx, inputs, output):
    x, groups, eps_in, half, rule, quantile, temperature, weight, pos_in_den = inputs
    _, eps, lse2, gmul, rmin, rden = output
    ctx.save_for_backward(x, groups, eps, lse2, gmul, rmin, rden)
    ctx.args = (half, rule, temperature, weight, pos_in_den)
    ctx.set_materialize_grads(False)  # only the loss (totals[0]) carries a gradient


def _square_backward(ctx, g_totals, *_):
    x, groups, eps, lse2, gmul, rmin, rden = ctx.saved_tensors
    if g_totals is None:
        return (None,) * 9
    dx = _square_bwd_op(g_totals, x, groups, eps, lse2, gmul, rmin, rden, *ctx.args)
    return (dx,) + (None,) * 8


square_op.register_autograd(_square_backward, setup_context=_square_setup)


@torch.library.custom_op("hexfast_kernels::rect", mutates_args=())
def rect_op(a: torch.Tensor, c: torch.Tensor, pos: torch.Tensor, slf: torch.Tensor, ga: torch.Tensor | None,
             gc: torch.Tensor | None, eps_in: torch.Tensor | None, rule: int, temperature: float, weight: float,
             pos_in_den: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                        torch.Tensor]:
    op = _Operands(a, c)
    dev = a.device
    ga_t = ga if ga is not None else _dummy(dev, torch.int64)
    gc_t = gc if gc is not None else _dummy(dev, torch.int64)
    return _forward(op, pos, slf, 0, rule, eps_in, ga_t, gc_t, 0.5, temperature, weight, pos_in_den)


@rect_op.register_fake
def _rect_fake(a, c, pos, slf, ga, gc, eps_in, rule, temperature, weight, pos_in_den):
    m = a.shape[0]
    f = dict(device=a.device, dtype=torch.float32)
    k = m if rule == RULE_IDS["fixed"] else 1
    return (a.new_empty(K.ROUT_FIELDS.value, dtype=torch.float64), a.new_empty(1, **f), a.new_empty(m, **f),
            a.new_empty(m, **f), a.new_empty(k, **f), a.new_empty(k, **f))


@torch.library.custom_op("hexfast_kernels::rect_backward", mutates_args=())
def _rect_bwd_op(g_totals: torch.Tensor, a: torch.Tensor, c: torch.Tensor, pos: torch.Tensor, slf: torch.Tensor,
                 ga: torch.Tensor | None, gc: torch.Tensor | None, eps: torch.Tensor, lse2: torch.Tensor,
                 gmul: torch.Tensor, rmin: torch.Tensor, rden: torch.Tensor, rule: int, temperature: float,
                 weight: float, pos_in_den: bool, need_a: bool, need_c: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    op = _Operands(a, c)
    dev = a.device
    ga_t = ga if ga is not None else _dummy(dev, torch.int64)
    gc_t = gc if gc is not None else _dummy(dev, torch.int64)
    da, dc = _backward(op, g_totals.contiguous(), pos, slf, 0, rule, eps, ga_t, gc_t, lse2, gmul, rmin, rden,
                       temperature, weight, pos_in_den, need_a, need_c, square=False)
    return (da if da is not None else torch.zeros_like(a), dc if dc is not None else torch.zeros_like(c))


@_rect_bwd_op.register_fake
def _rect_bwd_fake(g_totals, a, c, pos, slf, ga, gc, eps, lse2, gmul, rmin, rden, rule, temperature, weight,
                   pos_in_den, need_a, need_c):
    return torch.empty_like(a), torch.empty_like(c)


def _rect_setup(ctx, inputs, output):
    a, c, pos, slf, ga, gc, eps_in, rule, temperature, weight, pos_in_den = inputs
    _, eps, lse2, gmul, rmin, rden = output
    ctx.save_for_backward(a, c, pos, slf, ga, gc, eps, lse2, gmul, rmin, rden)
    ctx.args = (rule, temperature, weight, pos_in_den)
    ctx.set_materialize_grads(False)


def _rect_backward(ctx, g_totals, *_):
    a, c, pos, slf, ga, gc, eps, lse2, gmul, rmin, rden = ctx.saved_tensors
    if g_totals is None:
        return (None,) * 11
    need_a, need_c = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    da, dc = _rect_bwd_op(g_totals, a, c, pos, slf, ga, gc, eps, lse2, gmul, rmin, rden, *ctx.args, need_a,
                          need_c)
    return (da if need_a else None, dc if need_c else None) + (None,) * 9


rect_op.register_autograd(_rect_backward, setup_context=_rect_setup)


# ------------------------------------------------------------------------------------ selection API
def row_quantiles(anchors: torch.Tensor, candidates: torch.Tensor, q: float, *, return_status: bool = False):
    """Exact nearest-rank q-quantile of every row of S = normalize(anchors) normalize(candidates)^T.

    anchors [M, D], candidates [N, D] (fp32 / bf16 / fp16, CUDA or the interpreter) -> [M] fp32, the
    kth largest of the kernel's own similarities. Multi-process training: all-reduce
    `row_quantiles(local, gathered, q).sum()` and the row count, and pass their ratio as eps.
    `return_status`: also the per-row status (1: the sketch's bracket held, 2: repaired)."""
    if not 0.0 <= float(q) <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {q}")
    with torch.no_grad():
        a = check_inputs("anchors", anchors.detach())
        c = a if candidates is anchors else check_inputs("candidates", candidates.detach())
        if a.shape[1] != c.shape[1]:
            raise ValueError(f"anchors and candidates need the same D, got {a.shape[1]} and {c.shape[1]}")
        op = _Operands(a, None if c is a else c)
        idx = torch.full((op.m,), -1, device=a.device, dtype=torch.int64)  # no positive, no self
        kth_v, status, _ = _select(op, idx, idx, 0, _nearest_rank_kth(op.n, float(q)), None)
    return (kth_v, status) if return_status else kth_v
