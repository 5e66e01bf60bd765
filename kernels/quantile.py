"""Exact per-row order statistics of the similarity matrix without materialising it.

    row_quantiles(anchors [M, D], candidates [N, D], q) -> [M] fp32
        == hexfast.reference.row_quantiles(S, q) for the kernel's own S (bit for bit)

Algorithm (a counting refinement, i.e. a radix select driven by comparisons):
each row i keeps an interval [lo_i, hi_i) of fp32 values and the exact counts
c_lo = #{k : s_ik >= lo_i} and c_hi = #{k : s_ik >= hi_i}, with the invariant
c_lo >= K > c_hi, where the wanted value is the K-th largest of the row. So the answer lies in
[lo_i, hi_i). Initially [-2, 2) (every cosine lies in [-1 - 1e-6, 1 + 1e-6]): c_lo = N, c_hi = 0.

1. Count pass (`_count_kernel`): stream all column tiles, recompute s, and count for each row the
   values >= each of T = 16 thresholds lo = t_0 <= t_1 <= ... <= t_15 < hi placed inside its
   interval; keep the sub-interval [t_j, t_j+1) whose counts still bracket K. The first pass
   spaces the thresholds evenly in value; later ones (at least half of them) evenly in the
   order-preserving integer key of the fp32 bits, so every pass divides the number of fp32 values
   the interval can hold by at least 8 and the loop ends within 12 passes.
2. A row stops refining once its interval holds at most SELECT_CAPACITY values (c_lo - c_hi), or
   holds a single fp32 value (then that value is the answer).
3. Collect pass (`_collect_kernel`): one more stream writes each remaining row's values inside its
   interval to a [rows, SELECT_CAPACITY] buffer (positions from a running count and a cumsum: no
   atomics, deterministic); the answer is the (K - c_hi)-th largest of them (torch.sort).

Why it is exact: counts are exact integers of comparisons on the very fp32 values s the other passes
use (same tile code, same tile shape), the invariant never loses the K-th value, and the last step
either reads the only fp32 value left or sorts the complete set of candidates.

Passes: at q = 0.99 on typical embeddings 2 count passes + 1 collect pass at 2B = 8192 (the first
pass narrows [-2, 2) to a 0.25-wide interval, the second to 1/64), one or two more at 2B = 262144.
Each pass costs one similarity matmul plus 16 comparisons per entry. Memory: O(M * (T + CAP)).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._tiles import load_rows, sim_of_tiles, sim_tile
from kernels.config import SELECT_CAPACITY, SELECT_THRESHOLDS
from kernels.prepare import Prepared, prepare

_START_LO, _START_HI = -2.0, 2.0  # brackets every cosine (|s| <= 1 + a few ulps)
_MAX_PASSES = 64  # never reached: 32 bits / 4 bits per key-spaced pass + a few value-spaced ones


@triton.jit
def _key(x):
    """fp32 -> int64 order-preserving key in [0, 2^32) (-0.0 folded onto +0.0)."""
    b = (x + 0.0).to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    return tl.where(b >= 0x80000000, (~b) & 0xFFFFFFFF, b | 0x80000000)


@triton.jit
def _unkey(k):
    b = tl.where(k >= 0x80000000, k & 0x7FFFFFFF, (~k) & 0xFFFFFFFF)
    b = tl.where(b >= 0x80000000, b - 0x100000000, b)
    return b.to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _count_kernel(A, C, RA, RC, ROWS, n_rows, LO, HI, CLO, CHI, REFINE, THR, kth, cap, N, D,
                  stride_a, stride_c, FIRST: tl.constexpr,
                  NT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr, SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr,
                  UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """One refinement pass for the n_rows rows ROWS, updating their state in place.

    State per row (indexed by row id): the interval [LO, HI), CLO = #{s >= LO} >= kth > CHI =
    #{s >= HI}, and REFINE = whether the row still needs a count pass. The program places NT
    thresholds in each row's interval (THR: scratch [rows, NT]), counts the values >= each
    threshold over all N columns, and keeps the tightest thresholds still bracketing the kth.
    """
    pid = tl.program_id(0)
    idx = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    idx_ok = idx < n_rows
    rows = tl.load(ROWS + idx, mask=idx_ok, other=0).to(tl.int64)
    ra = tl.load(RA + rows, mask=idx_ok, other=1.0)
    lo = tl.load(LO + rows, mask=idx_ok, other=0.0)
    hi = tl.load(HI + rows, mask=idx_ok, other=1.0)
    jr = tl.arange(0, NT)
    # thresholds: value-spaced in the first pass; then key-spaced once the interval holds <= 2^24
    # fp32 values, half value- and half key-spaced before (fp32 values crowd towards 0).
    width = (hi - lo)[:, None]
    thr = lo[:, None] + width * (jr.to(tl.float32) / NT)[None, :]
    if not FIRST:
        klo = _key(lo)[:, None]
        span = _key(hi)[:, None] - klo
        by_key = _unkey(klo + (span * jr.to(tl.int64)[None, :]) // NT)
        jh = (jr % (NT // 2)).to(tl.int64)[None, :]
        value_h = lo[:, None] + width * (jh.to(tl.float32) / (NT // 2))
        key_h = _unkey(klo + (span * jh) // (NT // 2))
        mixed = tl.where(jr[None, :] < NT // 2, value_h, key_h)
        thr = tl.where(span <= 16777216, by_key, mixed)
    thr = tl.minimum(tl.maximum(thr, lo[:, None]), hi[:, None])
    tl.store(THR + idx.to(tl.int64)[:, None] * NT + jr[None, :], thr, mask=idx_ok[:, None])
    tl.debug_barrier()  # the loads below read what other threads of this program stored
    cnt = tl.zeros([BLOCK_M, NT], dtype=tl.int32)
    if SINGLE_K:  # the program's own rows, loaded once (flash attention's Q)
        dk = tl.arange(0, BLOCK_D)
        dk_ok = dk < D
        a_own = load_rows(A, rows, idx_ok, dk, dk_ok, stride_a, ra, NORM_DIV, UPCAST)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        rc = tl.load(RC + cols, mask=col_ok, other=1.0)
        if SINGLE_K:
            c_t = load_rows(C, cols.to(tl.int64), col_ok, dk, dk_ok, stride_c, rc, NORM_DIV, UPCAST)
            s = sim_of_tiles(a_own, c_t, ra, rc, NORM_DIV, PRECISION)
        else:
            s = sim_tile(A, C, ra, rc, rows, idx_ok, cols.to(tl.int64), col_ok, D, stride_a,
                         stride_c, BLOCK_M, BLOCK_N, BLOCK_D, NORM_DIV, UPCAST, PRECISION)
        s = tl.where(col_ok[None, :], s, float("-inf"))
        for j in tl.static_range(NT):
            t = tl.load(THR + idx.to(tl.int64) * NT + j, mask=idx_ok, other=0.0)
            c = tl.sum((s >= t[:, None]).to(tl.int32), axis=1)
            cnt += tl.where(jr[None, :] == j, c[:, None], 0)
    # counts fall as thresholds rise, so the thresholds need not be sorted: the new lo is the
    # largest threshold whose count is still >= kth, the new hi the smallest one below kth.
    c_hi = tl.load(CHI + rows, mask=idx_ok, other=0)
    ok = cnt >= kth
    new_lo = tl.max(tl.where(ok, thr, float("-inf")), axis=1)
    new_c_lo = tl.min(tl.where(ok & (thr == new_lo[:, None]), cnt, 2147483647), axis=1)
    new_hi = tl.minimum(tl.min(tl.where(ok, float("inf"), thr), axis=1), hi)
    moved = new_hi < hi
    at_hi = tl.max(tl.where((~ok) & (thr == new_hi[:, None]), cnt, -1), axis=1)
    new_c_hi = tl.where(moved, at_hi, c_hi)
    refine = ((new_c_lo - new_c_hi) > cap) & ((_key(new_hi) - _key(new_lo)) > 1)
    tl.store(LO + rows, new_lo, mask=idx_ok)
    tl.store(HI + rows, new_hi, mask=idx_ok)
    tl.store(CLO + rows, new_c_lo, mask=idx_ok)
    tl.store(CHI + rows, new_c_hi, mask=idx_ok)
    tl.store(REFINE + rows, refine.to(tl.int8), mask=idx_ok)


@triton.jit
def _collect_kernel(A, C, RA, RC, ROWS, n_rows, LO, HI, BUF, N, D, stride_a, stride_c,
                    CAP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr, SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr, UPCAST: tl.constexpr,
                PRECISION: tl.constexpr):
    """BUF[r, :count] = the values of row ROWS[r] in [LO[r], HI[r]) (count <= CAP), column order."""
    pid = tl.program_id(0)
    idx = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    idx_ok = idx < n_rows
    rows = tl.load(ROWS + idx, mask=idx_ok, other=0).to(tl.int64)
    ra = tl.load(RA + rows, mask=idx_ok, other=1.0)
    lo = tl.load(LO + idx, mask=idx_ok, other=0.0)
    hi = tl.load(HI + idx, mask=idx_ok, other=0.0)
    filled = tl.zeros([BLOCK_M], dtype=tl.int32)
    if SINGLE_K:  # the program's own rows, loaded once (flash attention's Q)
        dk = tl.arange(0, BLOCK_D)
        dk_ok = dk < D
        a_own = load_rows(A, rows, idx_ok, dk, dk_ok, stride_a, ra, NORM_DIV, UPCAST)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        rc = tl.load(RC + cols, mask=col_ok, other=1.0)
        if SINGLE_K:
            c_t = load_rows(C, cols.to(tl.int64), col_ok, dk, dk_ok, stride_c, rc, NORM_DIV, UPCAST)
            s = sim_of_tiles(a_own, c_t, ra, rc, NORM_DIV, PRECISION)
        else:
            s = sim_tile(A, C, ra, rc, rows, idx_ok, cols.to(tl.int64), col_ok, D, stride_a,
                         stride_c, BLOCK_M, BLOCK_N, BLOCK_D, NORM_DIV, UPCAST, PRECISION)
        inside = (s >= lo[:, None]) & (s < hi[:, None]) & col_ok[None, :] & idx_ok[:, None]
        slot = filled[:, None] + tl.cumsum(inside.to(tl.int32), axis=1) - 1
        tl.store(BUF + idx.to(tl.int64)[:, None] * CAP + slot, s, mask=inside & (slot < CAP))
        filled += tl.sum(inside.to(tl.int32), axis=1)


@triton.jit
def _minmax_kernel(A, C, RA, RC, M, N, D, stride_a, stride_c, OUT_MIN, OUT_MAX,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Row minimum and maximum of s over all N columns (the fixed rule's m_i and M_i)."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    ra = tl.load(RA + rows64, mask=row_ok, other=1.0)
    lo = tl.full([BLOCK_M], float("inf"), tl.float32)
    hi = tl.full([BLOCK_M], float("-inf"), tl.float32)
    if SINGLE_K:  # the program's own rows, loaded once (flash attention's Q)
        dk = tl.arange(0, BLOCK_D)
        dk_ok = dk < D
        a_own = load_rows(A, rows64, row_ok, dk, dk_ok, stride_a, ra, NORM_DIV, UPCAST)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        rc = tl.load(RC + cols, mask=col_ok, other=1.0)
        if SINGLE_K:
            c_t = load_rows(C, cols.to(tl.int64), col_ok, dk, dk_ok, stride_c, rc, NORM_DIV, UPCAST)
            s = sim_of_tiles(a_own, c_t, ra, rc, NORM_DIV, PRECISION)
        else:
            s = sim_tile(A, C, ra, rc, rows64, row_ok, cols.to(tl.int64), col_ok, D, stride_a,
                         stride_c, BLOCK_M, BLOCK_N, BLOCK_D, NORM_DIV, UPCAST, PRECISION)
        lo = tl.minimum(lo, tl.min(tl.where(col_ok[None, :], s, float("inf")), axis=1))
        hi = tl.maximum(hi, tl.max(tl.where(col_ok[None, :], s, float("-inf")), axis=1))
    tl.store(OUT_MIN + rows64, lo, mask=row_ok)
    tl.store(OUT_MAX + rows64, hi, mask=row_ok)


# ---------------------------------------------------------------- order-preserving fp32 keys (torch)
_SIGN = 0x80000000
_MASK32 = 0xFFFFFFFF


def _to_key(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> int64 in [0, 2^32): monotone in the value (-0.0 is folded onto +0.0)."""
    bits = (x.float() + 0.0).view(torch.int32).to(torch.int64) & _MASK32
    return torch.where(bits >= _SIGN, (~bits) & _MASK32, bits | _SIGN)


def _from_key(k: torch.Tensor) -> torch.Tensor:
    bits = torch.where(k >= _SIGN, k & 0x7FFFFFFF, (~k) & _MASK32)
    bits = torch.where(bits >= _SIGN, bits - (1 << 32), bits)  # to the int32 range
    return bits.to(torch.int32).view(torch.float32)


def kth_largest(p: Prepared, kth: int) -> torch.Tensor:
    """[M] fp32: the kth-largest (1-based) similarity of every anchor row over the N candidates."""
    m, n = p.m, p.n
    if not 1 <= kth <= n:
        raise ValueError(f"kth must lie in [1, {n}], got {kth}")
    dev = p.a.device
    nt, cap = SELECT_THRESHOLDS, SELECT_CAPACITY
    cfg = p.cfg
    meta = p.sim_meta()
    lo = torch.full((m,), _START_LO, device=dev, dtype=torch.float32)
    hi = torch.full((m,), _START_HI, device=dev, dtype=torch.float32)
    c_lo = torch.full((m,), n, device=dev, dtype=torch.int32)
    c_hi = torch.zeros(m, device=dev, dtype=torch.int32)
    refine = torch.full((m,), int(n > cap), device=dev, dtype=torch.int8)
    scratch = torch.empty((m, nt), device=dev, dtype=torch.float32)  # thresholds of a pass
    for npass in range(_MAX_PASSES):
        rows = refine.nonzero().flatten()
        r = rows.numel()  # the one host synchronisation per pass
        if r == 0:
            break
        grid = (triton.cdiv(r, cfg.block_m),)
        _count_kernel[grid](*p.sim_args(), rows.to(torch.int32), r, lo, hi, c_lo, c_hi, refine,
                            scratch, kth, cap, n, p.d, p.a.stride(0), p.c.stride(0),
                            FIRST=npass == 0, NT=nt, **meta)
    else:
        raise RuntimeError("row selection did not converge; this is a bug, please report it")

    result = lo.clone()  # right for the rows whose interval holds a single fp32 value
    single = (_to_key(hi) - _to_key(lo)) <= 1
    rows = (~single).nonzero().flatten()
    r = rows.numel()
    if r:
        width = min(cap, n)
        buf = torch.full((r, width), float("-inf"), device=dev, dtype=torch.float32)
        grid = (triton.cdiv(r, cfg.block_m),)
        _collect_kernel[grid](*p.sim_args(), rows.to(torch.int32), r, lo[rows].contiguous(),
                              hi[rows].contiguous(), buf, n, p.d, p.a.stride(0), p.c.stride(0),
                              CAP=width, **meta)
        rank = (kth - c_hi[rows].long() - 1)[:, None]  # 0-based rank among the values in [lo, hi)
        result[rows] = buf.sort(dim=1, descending=True).values.gather(1, rank).flatten()
    return result


def nearest_rank_kth(n: int, q: float) -> int:
    """1-based kth-largest that torch.quantile(row, q, interpolation="nearest") picks of n values."""
    from hexfast.reference import nearest_rank_index

    return n - nearest_rank_index(n, q)


def row_quantiles(anchors: torch.Tensor, candidates: torch.Tensor, q: float) -> torch.Tensor:
    """Exact nearest-rank q-quantile of every row of S = normalize(anchors) normalize(candidates)^T.

    anchors [M, D], candidates [N, D] (fp32 / bf16 / fp16, CUDA or the interpreter) -> [M] fp32.
    Multi-process training: all-reduce `row_quantiles(local, gathered, q).sum()` and the row count,
    and pass their ratio to `hex_rect(..., eps=...)`.
    """
    if not 0.0 <= float(q) <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {q}")
    with torch.no_grad():
        a = anchors.detach()
        p = prepare(a, a if candidates is anchors else candidates.detach())
        return kth_largest(p, nearest_rank_kth(p.n, float(q)))


def row_min_max(p: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
    """[M] fp32 row minimum and maximum of s (one streamed pass)."""
    lo = torch.empty(p.m, device=p.a.device, dtype=torch.float32)
    hi = torch.empty_like(lo)
    grid = (triton.cdiv(p.m, p.cfg.block_m),)
    _minmax_kernel[grid](*p.sim_args(), p.m, p.n, p.d, p.a.stride(0), p.c.stride(0), lo, hi,
                         **p.sim_meta())
    return lo, hi
