"""The HEX log-sum-exp pass and the two backward passes (flash-attention style: tiles recomputed).

Notation as in kernels/_tiles.py; logits are kept in base 2: l_ik = s_ik * log2(e) / tau, so every
exponential is one exp2. For anchor row i (pos p_i, self q_i or -1):

    negative(i, k) = k < N and k not in {p_i, q_i};  H = negative & hier_mask;  R = negative & ~H

Forward (`_lse_kernel`, one program per block of anchor rows, streaming all column tiles):
two online log-sum-exps kept SPLIT, over R and over H, each with its own running max
(mR, sR) and (mH, sH) so that neither part can underflow against the other, plus the positive's
similarity s_ip and |H(i)|. The launcher combines them:

    log2 D_i = log2( 2^mR sR + w 2^mH sH [+ 2^l_ip] ),   loss_i = ln2 * log2 D_i - s_ip / tau

(loss_i = 0 and no gradient where D_i is empty). Saved for the backward: lse2_i = log2 D_i and the
per-row gradient scale (O(M)), plus the raw inputs and inverse norms.

Backward: with g_i = dL/dloss_i (upstream / M, 0 for empty rows) and coefficients
c_ik = 1 (R), w (H), [1 if the positive is in the denominator] (k = p_i), 0 (self, padding):

    G_ik = g_i / tau * ( c_ik 2^(l_ik - lse2_i) - [k = p_i] )
    dL/d(a_i/|a_i|) = sum_k G_ik c_k/|c_k|         (`_bwd_rows_kernel`, grid over anchor blocks)
    dL/d(c_k/|c_k|) = sum_i G_ik a_i/|a_i|         (`_bwd_cols_kernel`, grid over candidate blocks)

(the normalisation applied to the tiles the same way as in kernels/_tiles.py: division on load
for fp32, inverse norms folded into G for bf16/fp16, whose G tile then enters the tensor cores in
the input dtype, as flash attention does with P).

Each program owns its output rows and loops over the other side: no atomics, deterministic bits.
Both recompute s with `sim_tile`, so hier_mask decides exactly as in the forward. Outputs cover
D in chunks of BLOCK_DOUT (grid axis 1), so D is unbounded (tiles are recomputed per chunk).
The launcher applies the normalisation's Jacobian: dx = (g - z (z.g)) / max(|x|, 1e-12).
"""
import triton
import triton.language as tl

from kernels._tiles import hier_mask, load_rows, sim_of_tiles, sim_tile

STAT_FIELDS = 6  # mR, sR, mH, sH, s_pos, |H| per row


@triton.jit
def _row_params(RA, POS, SELF, RMIN, RDEN, GA, rows64, row_ok, RULE: tl.constexpr):
    ra = tl.load(RA + rows64, mask=row_ok, other=1.0)
    pos = tl.load(POS + rows64, mask=row_ok, other=-1)
    slf = tl.load(SELF + rows64, mask=row_ok, other=-1)
    rmin = ra
    rden = ra
    g_row = pos
    if RULE == 2:
        rmin = tl.load(RMIN + rows64, mask=row_ok, other=0.0)
        rden = tl.load(RDEN + rows64, mask=row_ok, other=0.0)
    if RULE == 3:
        g_row = tl.load(GA + rows64, mask=row_ok, other=-1)
    return ra, pos, slf, rmin, rden, g_row


@triton.jit
def _lse_kernel(A, C, RA, RC, POS, SELF, EPS, RMIN, RDEN, GA, GC, OUT, M, N, D,
                stride_a, stride_c, scale2,
                RULE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr, SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr, UPCAST: tl.constexpr,
                PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    ra, pos, slf, rmin, rden, g_row = _row_params(RA, POS, SELF, RMIN, RDEN, GA, rows64, row_ok, RULE)
    eps = tl.load(EPS)
    m_r = tl.full([BLOCK_M], float("-inf"), tl.float32)
    m_h = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s_r = tl.zeros([BLOCK_M], tl.float32)
    s_h = tl.zeros([BLOCK_M], tl.float32)
    s_pos = tl.zeros([BLOCK_M], tl.float32)
    n_h = tl.zeros([BLOCK_M], tl.int32)
    if SINGLE_K:  # the program's own rows, loaded once (flash attention's Q)
        dk = tl.arange(0, BLOCK_D)
        dk_ok = dk < D
        a_own = load_rows(A, rows64, row_ok, dk, dk_ok, stride_a, ra, NORM_DIV, UPCAST)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        cols64 = cols.to(tl.int64)
        rc = tl.load(RC + cols64, mask=col_ok, other=1.0)
        g_col = cols64
        if RULE == 3:
            g_col = tl.load(GC + cols64, mask=col_ok, other=-2)
        if SINGLE_K:
            c_t = load_rows(C, cols64, col_ok, dk, dk_ok, stride_c, rc, NORM_DIV, UPCAST)
            s = sim_of_tiles(a_own, c_t, ra, rc, NORM_DIV, PRECISION)
        else:
            s = sim_tile(A, C, ra, rc, rows64, row_ok, cols64, col_ok, D, stride_a,
                         stride_c, BLOCK_M, BLOCK_N, BLOCK_D, NORM_DIV, UPCAST, PRECISION)
        is_pos = cols64[None, :] == pos[:, None]
        neg = col_ok[None, :] & ~is_pos & (cols64[None, :] != slf[:, None]) & row_ok[:, None]
        h = hier_mask(s, eps, rmin, rden, g_row, g_col, RULE) & neg
        r = neg & ~h
        s_pos += tl.sum(tl.where(is_pos, s, 0.0), axis=1)
        n_h += tl.sum(h.to(tl.int32), axis=1)
        l2 = s * scale2
        new_m_r = tl.maximum(m_r, tl.max(tl.where(r, l2, float("-inf")), axis=1))
        new_m_h = tl.maximum(m_h, tl.max(tl.where(h, l2, float("-inf")), axis=1))
        # a part with no entry yet keeps max -inf: shift by 0 instead (no -inf - -inf = NaN)
        sh_r = tl.where(new_m_r == float("-inf"), 0.0, new_m_r)
        sh_h = tl.where(new_m_h == float("-inf"), 0.0, new_m_h)
        # one exp2 per entry: each entry belongs to R or to H (or neither)
        p = tl.exp2(l2 - tl.where(h, sh_h[:, None], sh_r[:, None]))
        s_r = s_r * tl.exp2(m_r - sh_r) + tl.sum(tl.where(r, p, 0.0), axis=1)
        s_h = s_h * tl.exp2(m_h - sh_h) + tl.sum(tl.where(h, p, 0.0), axis=1)
        m_r = new_m_r
        m_h = new_m_h
    out = OUT + rows64 * 6
    tl.store(out + 0, m_r, mask=row_ok)
    tl.store(out + 1, s_r, mask=row_ok)
    tl.store(out + 2, m_h, mask=row_ok)
    tl.store(out + 3, s_h, mask=row_ok)
    tl.store(out + 4, s_pos, mask=row_ok)
    tl.store(out + 5, n_h.to(tl.float32), mask=row_ok)


@triton.jit
def _grad_tile(s, cols64, col_ok, pos, slf, row_ok, lse2, gscale, eps, rmin, rden, g_row, g_col,
               scale2, inv_tau, weight, POS_IN_DEN: tl.constexpr, RULE: tl.constexpr):
    """G_ik for one tile (fp32), zero outside the valid rows and columns."""
    is_pos = cols64[None, :] == pos[:, None]
    neg = col_ok[None, :] & ~is_pos & (cols64[None, :] != slf[:, None]) & row_ok[:, None]
    h = hier_mask(s, eps, rmin, rden, g_row, g_col, RULE) & neg
    coef = tl.where(h, weight, tl.where(neg, 1.0, 0.0))
    if POS_IN_DEN:
        coef = tl.where(is_pos & row_ok[:, None], 1.0, coef)
    p = tl.where(coef > 0.0, coef * tl.exp2(s * scale2 - lse2[:, None]), 0.0)
    return (gscale * inv_tau)[:, None] * (p - tl.where(is_pos, 1.0, 0.0))


@triton.jit
def _bwd_rows_kernel(A, C, RA, RC, POS, SELF, EPS, RMIN, RDEN, GA, GC, LSE2, GSCALE, DA,
                     M, N, D, stride_a, stride_c, scale2, inv_tau, weight,
                     POS_IN_DEN: tl.constexpr, RULE: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DOUT: tl.constexpr,
                     SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """DA[i, d-chunk] = sum_k G_ik rc_k C[k, d-chunk]  (gradient w.r.t. the normalised anchors)."""
    pid = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    ra, pos, slf, rmin, rden, g_row = _row_params(RA, POS, SELF, RMIN, RDEN, GA, rows64, row_ok, RULE)
    eps = tl.load(EPS)
    lse2 = tl.load(LSE2 + rows64, mask=row_ok, other=0.0)
    gscale = tl.load(GSCALE + rows64, mask=row_ok, other=0.0)
    dd = pid_d * BLOCK_DOUT + tl.arange(0, BLOCK_DOUT)  # single K: BLOCK_DOUT == BLOCK_D, 1 chunk
    d_ok = dd < D
    acc = tl.zeros([BLOCK_M, BLOCK_DOUT], tl.float32)
    if SINGLE_K:  # the program's own rows, loaded once (flash attention's Q)
        dk = tl.arange(0, BLOCK_D)
        dk_ok = dk < D
        a_own = load_rows(A, rows64, row_ok, dk, dk_ok, stride_a, ra, NORM_DIV, UPCAST)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        cols64 = cols.to(tl.int64)
        rc = tl.load(RC + cols64, mask=col_ok, other=1.0)
        g_col = cols64
        if RULE == 3:
            g_col = tl.load(GC + cols64, mask=col_ok, other=-2)
        if SINGLE_K:
            c_t = load_rows(C, cols64, col_ok, dk, dk_ok, stride_c, rc, NORM_DIV, UPCAST)
            s = sim_of_tiles(a_own, c_t, ra, rc, NORM_DIV, PRECISION)
        else:
            s = sim_tile(A, C, ra, rc, rows64, row_ok, cols64, col_ok, D, stride_a,
                         stride_c, BLOCK_M, BLOCK_N, BLOCK_D, NORM_DIV, UPCAST, PRECISION)
        g = _grad_tile(s, cols64, col_ok, pos, slf, row_ok, lse2, gscale, eps, rmin, rden, g_row,
                       g_col, scale2, inv_tau, weight, POS_IN_DEN, RULE)
        if not NORM_DIV:
            g = g * rc[None, :]
        if SINGLE_K:
            cv = c_t  # the streamed tile serves both products
        else:
            cv = load_rows(C, cols64, col_ok, dd, d_ok, stride_c, rc, NORM_DIV, UPCAST)
        acc = tl.dot(g.to(cv.dtype), cv, acc, input_precision=PRECISION)
    tl.store(DA + rows64[:, None] * D + dd[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _bwd_cols_kernel(A, C, RA, RC, POS, SELF, EPS, RMIN, RDEN, GA, GC, LSE2, GSCALE, DC,
                     M, N, D, stride_a, stride_c, scale2, inv_tau, weight,
                     POS_IN_DEN: tl.constexpr, RULE: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DOUT: tl.constexpr,
                     SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """DC[k, d-chunk] = sum_i G_ik ra_i A[i, d-chunk]  (gradient w.r.t. the normalised candidates).

    The program owns BLOCK_N candidate columns and streams anchor blocks of BLOCK_M rows; the tile
    s[i-block, k-block] is computed in the same orientation and shape as in the forward.
    """
    pid = tl.program_id(0)
    pid_d = tl.program_id(1)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    cols64 = cols.to(tl.int64)
    rc = tl.load(RC + cols64, mask=col_ok, other=1.0)
    g_col = cols64
    if RULE == 3:
        g_col = tl.load(GC + cols64, mask=col_ok, other=-2)
    eps = tl.load(EPS)
    dd = pid_d * BLOCK_DOUT + tl.arange(0, BLOCK_DOUT)
    d_ok = dd < D
    acc = tl.zeros([BLOCK_N, BLOCK_DOUT], tl.float32)
    if SINGLE_K:  # the program's own columns, loaded once
        dk = tl.arange(0, BLOCK_D)
        dk_ok = dk < D
        c_own = load_rows(C, cols64, col_ok, dk, dk_ok, stride_c, rc, NORM_DIV, UPCAST)
    for m0 in range(0, M, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        rows64 = rows.to(tl.int64)
        ra, pos, slf, rmin, rden, g_row = _row_params(RA, POS, SELF, RMIN, RDEN, GA, rows64, row_ok,
                                                      RULE)
        lse2 = tl.load(LSE2 + rows64, mask=row_ok, other=0.0)
        gscale = tl.load(GSCALE + rows64, mask=row_ok, other=0.0)
        if SINGLE_K:
            a_t = load_rows(A, rows64, row_ok, dk, dk_ok, stride_a, ra, NORM_DIV, UPCAST)
            s = sim_of_tiles(a_t, c_own, ra, rc, NORM_DIV, PRECISION)
        else:
            s = sim_tile(A, C, ra, rc, rows64, row_ok, cols64, col_ok, D, stride_a,
                         stride_c, BLOCK_M, BLOCK_N, BLOCK_D, NORM_DIV, UPCAST, PRECISION)
        g = _grad_tile(s, cols64, col_ok, pos, slf, row_ok, lse2, gscale, eps, rmin, rden, g_row,
                       g_col, scale2, inv_tau, weight, POS_IN_DEN, RULE)
        if not NORM_DIV:
            g = g * ra[:, None]
        if SINGLE_K:
            av = a_t
        else:
            av = load_rows(A, rows64, row_ok, dd, d_ok, stride_a, ra, NORM_DIV, UPCAST)
        acc = tl.dot(tl.trans(g.to(av.dtype)), av, acc, input_precision=PRECISION)
    tl.store(DC + cols64[:, None] * D + dd[None, :], acc, mask=col_ok[:, None] & d_ok[None, :])
