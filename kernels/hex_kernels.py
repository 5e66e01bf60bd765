"""The HEX kernels: sketch, one fused selection + split log-sum-exp pass, finisher, settling, backward.

Notation as in kernels/_tiles.py. Logits are kept in base 2, l_ik = s_ik * c with c = log2(e)/tau,
so every exponential is one exp2. For anchor row i (positive p_i, self q_i or -1):

    negative(i, k) = k < N and k not in {p_i, q_i};  H = negative & rule;  R = negative & ~H
    D_i = sum_R 2^l + w sum_H 2^l [+ 2^l_ip],  lse2_i = log2 D_i,  loss_i = ln2 lse2_i - s_ip / tau

Exponentials. While 2c <= 126 (tau >= ~0.023, FIXED_MAX) every logit is at most c (s <= 1), so
p = 2^(l - c) needs no running maximum: it never overflows, and no entry (s >= -1) underflows
below 2^-126. For smaller tau each part keeps its own online maximum (the flash-attention update).

ADAPTIVE RULE, one streamed pass (`_fwd_kernel` with SELECT). eps = mean_i kth_i, kth_i = the K-th
largest of row i (nearest-rank quantile of the full row, self and positive included), is known only
after every row has been seen. Before the pass a cheap sketch (`_sketch_kernel`: the similarities
of every row against S evenly strided columns, then `torch.topk`) gives

  - each row a selection bracket [lo_i, hi_i): sample order statistics chosen so that, with
    X_i = #{sampled entries >= kth_i} ~ Binomial(K, S/N), P(lo_i > kth_i) and P(hi_i <= kth_i)
    are negligible (kernels/config.py: `select_plan`);
  - a band (e_lo, e_hi] expected to hold eps: column means over all rows of two sample order
    statistics on either side of the expected rank.

The pass then, per row, for each entry s (self and positive aside, whose values are kept):
    s <= e_lo              regular for sure (e_lo <= eps)      -> summed into part A
    s >  e_hi              hierarchical for sure (e_hi >= eps) -> summed into part B, counted
    e_lo < s <= e_hi       undecided                           -> collected
    lo_i <= s < hi_i       selection candidate                 -> collected (union with the above)
    s >= hi_i              counted in c_hi (self and positive included)
The collected values go to a [rows, CAP] buffer in column order (slots from a running count plus a
cumsum: no atomics). `_select_kernel` then checks c_hi < K <= c_hi + #bracket and no overflow, and
takes kth_i as the (K - c_hi)-th largest value in the bracket by bisection on the fp32 key.
eps = torch.mean(kth) (the same op over the same fp32 vector as the reference). `_settle_kernel`
checks e_lo <= eps <= e_hi and adds each collected undecided value to A (s <= eps) or B (s > eps)
in slot order: deterministic. Everything is exact because every decision is verified:
    - a row whose bracket missed or overflowed is repaired exactly inside `_select_kernel` (the
      counting refinement: 8 thresholds per pass, each narrowing the interval; then collect and
      bisect), only for the rows that failed, on the same similarity tiles;
    - if eps falls outside (e_lo, e_hi], or a row's buffer overflowed, `_settle_kernel` recomputes
      that row block's two sums with the known eps (one more stream for those rows only).
Repairs are device-side decisions: fixed grids, early exits, no host synchronisation.

Other rules (eps known: fixed, none, groups, adaptive with a given eps): `_fwd_kernel` without
SELECT accumulates R and H directly and writes lse2, the per-row loss and the gradient mask. The
fixed rule first takes each row's minimum and maximum (`_minmax_kernel`).

BACKWARD. With g_i = g_loss / M (0 for rows whose denominator is empty) and coefficients
c_ik = 1 (R), w (H), [1 if the positive is in the denominator] (k = p_i), 0 (self, padding):

    G_ik = g_i / tau * ( c_ik 2^(l_ik - lse2_i) - [k = p_i] ),   dL/dz_i = sum_k G_ik z_k  (anchors)

Square case (candidates are the anchors): dL/dz = (G + G^T) z. `_bwd_kernel` with both terms owns
a block of rows and streams all others: per tile one similarity dot, G_ik from row i's statistics
and G_ki from row k's (the tile is symmetric, kernels/_tiles.py), and one dot (G + G^T)_IK Z_K:
2 matmul-equivalents, no atomics, deterministic. Exponentials: while 2c - min(0, log2 w) <= 126
(`ONE_EXP`, which implies FIXED_MAX) every non-empty row has lse2_i >= -c + min(0, log2 w), so
2^(c - lse2_i) <= 2^126 and 2^(l_ik - lse2_i) = 2^(l_ik - c) * 2^(c - lse2_i): one exp2 per tile
entry (2^(l - c), shared by G_ik and G_ki) and one per row, not one per entry and term (empty rows
store lse2 = 0, a finite factor times g = 0). Rectangular case: one launch per side (anchors
own G_IK, candidates own G_KI^T). The normalisation's Jacobian dx = (dz - z (z.dz)) / max(|x|, 1e-12)
is applied in the epilogue when the program holds whole rows (D <= BLOCK_D).
"""
import triton
import triton.language as tl

from kernels._tiles import dot_f32acc, fkey, funkey, hier_mask, own_rows, sim_cols

# Per-row fields of the fused pass (`RS`, fp32; counts are exact integers below 2^24).
# (constexprs: the kernels index RS with them; RS_FIELDS is the row stride)
RS_SA, RS_MA, RS_SB, RS_MB, RS_NH, RS_POS, RS_SELF, RS_CHI, RS_NBUF = (tl.constexpr(i) for i in range(9))
RS_FIELDS = tl.constexpr(9)
# Per-row outputs (fp64) summed by the launcher: loss_i / M, |H(i)|, empty, #negatives, 1.
ROUT_FIELDS = tl.constexpr(5)
_LN2 = tl.constexpr(0.6931471805599453)
_BIG = tl.constexpr(4.0)  # above and below every cosine (|s| <= 1 + a few ulps)
SAMPLE_HASH = tl.constexpr(2654435761)  # a prime above any row count (Knuth's multiplicative hash)


@triton.jit
def _row_index(POS, SELF, rows, row_ok, half, SQUARE: tl.constexpr):
    """Each row's positive and self. SQUARE (two views, rows [z1; z2]): p = (i + B) mod 2B, self = i."""
    if SQUARE:
        pos = (rows + half) % (2 * half)
        slf = rows
    else:
        pos = tl.load(POS + rows, mask=row_ok, other=-1)
        slf = tl.load(SELF + rows, mask=row_ok, other=-1)
    return pos, slf


@triton.jit
def _row_params(POS, SELF, RMIN, RDEN, GA, rows, row_ok, half, RULE: tl.constexpr, SQUARE: tl.constexpr):
    pos, slf = _row_index(POS, SELF, rows, row_ok, half, SQUARE)
    rmin = tl.zeros(rows.shape, tl.float32)
    rden = rmin
    g_row = pos
    if RULE == 2:
        rmin = tl.load(RMIN + rows, mask=row_ok, other=0.0)
        rden = tl.load(RDEN + rows, mask=row_ok, other=0.0)
    if RULE == 3:
        g_row = tl.load(GA + rows, mask=row_ok, other=-1)
    return pos, slf, rmin, rden, g_row


@triton.jit
def _col_groups(GC, cols, col_ok, RULE: tl.constexpr):
    g_col = cols
    if RULE == 3:
        g_col = tl.load(GC + cols, mask=col_ok, other=-2)
    return g_col


@triton.jit
def _empty_parts(lmax, BLOCK_M: tl.constexpr, FIXED_MAX: tl.constexpr):
    """(mA, sA, mB, sB) of rows with no entry yet: the fixed maximum, or -inf for the online one."""
    init = lmax if FIXED_MAX else float("-inf")
    m = tl.full([BLOCK_M], init, tl.float32)
    return m, tl.zeros([BLOCK_M], tl.float32), m, tl.zeros([BLOCK_M], tl.float32)


@triton.jit
def _acc2(l2, in_a, in_b, m_a, s_a, m_b, s_b, lmax, FIXED_MAX: tl.constexpr):
    """Add 2^l of the entries in_a to part A and of in_b to part B (disjoint masks)."""
    if FIXED_MAX:
        p = tl.exp2(l2 - lmax)
        s_a += tl.sum(tl.where(in_a, p, 0.0), axis=1)
        s_b += tl.sum(tl.where(in_b, p, 0.0), axis=1)
    else:
        new_a = tl.maximum(m_a, tl.max(tl.where(in_a, l2, float("-inf")), axis=1))
        new_b = tl.maximum(m_b, tl.max(tl.where(in_b, l2, float("-inf")), axis=1))
        # a part with no entry yet keeps max -inf: shift by 0 instead (no -inf - -inf = NaN)
        sh_a = tl.where(new_a == float("-inf"), 0.0, new_a)
        sh_b = tl.where(new_b == float("-inf"), 0.0, new_b)
        p = tl.exp2(l2 - tl.where(in_b, sh_b[:, None], sh_a[:, None]))
        s_a = s_a * tl.exp2(m_a - sh_a) + tl.sum(tl.where(in_a, p, 0.0), axis=1)
        s_b = s_b * tl.exp2(m_b - sh_b) + tl.sum(tl.where(in_b, p, 0.0), axis=1)
        m_a = new_a
        m_b = new_b
    return m_a, s_a, m_b, s_b


@triton.jit
def _logaddexp2(x, y):
    mx = tl.maximum(x, y)
    safe = tl.where(mx == float("-inf"), 0.0, mx)
    return tl.where(mx == float("-inf"), mx, safe + tl.log2(tl.exp2(x - safe) + tl.exp2(y - safe)))


@triton.jit
def _finish_rows(LSE2, GMUL, ROUT, rows, row_ok, m_a, s_a, m_b, s_b, n_h, s_pos, pos, slf, N, scale2,
                 inv_tau, log2w, inv_m, HAS_W: tl.constexpr, POS_IN_DEN: tl.constexpr):
    """lse2, the gradient mask and the per-row outputs from the two parts (A regular, B hier)."""
    part_a = tl.where(s_a > 0.0, m_a + tl.log2(s_a), float("-inf"))
    part_b = tl.full(part_a.shape, float("-inf"), tl.float32)
    if HAS_W:
        part_b = tl.where(s_b > 0.0, m_b + tl.log2(s_b) + log2w, float("-inf"))
    lse2 = _logaddexp2(part_a, part_b)
    if POS_IN_DEN:
        lse2 = _logaddexp2(lse2, s_pos * scale2)
    empty = lse2 == float("-inf")
    loss = tl.where(empty, 0.0, _LN2 * lse2 - s_pos * inv_tau)
    tl.store(LSE2 + rows, tl.where(empty, 0.0, lse2), mask=row_ok)
    tl.store(GMUL + rows, tl.where(empty, 0.0, 1.0), mask=row_ok)
    n_neg = N - 1 - ((slf >= 0) & (slf != pos)).to(tl.int32)
    out = ROUT + rows * ROUT_FIELDS  # fp64: the sums over rows stay exact integers far beyond 2^24
    tl.store(out + 0, loss.to(tl.float64) * inv_m, mask=row_ok)
    tl.store(out + 1, n_h.to(tl.float64), mask=row_ok)
    tl.store(out + 2, empty.to(tl.float64), mask=row_ok)
    tl.store(out + 3, n_neg.to(tl.float64), mask=row_ok)
    tl.store(out + 4, tl.full(loss.shape, 1.0, tl.float64), mask=row_ok)


@triton.jit
def _lse_stream(A, C, RA, RC, GC, a_own, ra, rows, row_ok, pos, slf, rmin, rden, g_row, eps, N, D,
                stride_a, stride_c, scale2, RULE: tl.constexpr, FIXED_MAX: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr, UPCAST: tl.constexpr,
                PRECISION: tl.constexpr):
    """Both parts of every row with a known eps: (mA, sA) over R, (mB, sB) over H, |H|, s_pos."""
    lmax = scale2
    m_a, s_a, m_b, s_b = _empty_parts(lmax, BLOCK_M, FIXED_MAX)
    s_pos = tl.zeros([BLOCK_M], tl.float32)
    n_h = tl.zeros([BLOCK_M], tl.int32)
    for n0 in range(0, N, BLOCK_N):
        cols = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < N
        s, rc, c_t = sim_cols(a_own, A, ra, rows, row_ok, C, RC, cols, col_ok, D, stride_a, stride_c,
                              BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_K, NORM_DIV, UPCAST, PRECISION)
        g_col = _col_groups(GC, cols, col_ok, RULE)
        is_pos = cols[None, :] == pos[:, None]
        neg = col_ok[None, :] & row_ok[:, None] & ~is_pos & (cols[None, :] != slf[:, None])
        h = hier_mask(s, eps, rmin, rden, g_row, g_col, RULE) & neg
        s_pos += tl.sum(tl.where(is_pos, s, 0.0), axis=1)
        n_h += tl.sum(h.to(tl.int32), axis=1)
        m_a, s_a, m_b, s_b = _acc2(s * scale2, neg & ~h, h, m_a, s_a, m_b, s_b, lmax, FIXED_MAX)
    return m_a, s_a, m_b, s_b, n_h, s_pos


@triton.jit
def _sketch_kernel(A, C, RA, RC, OUT, row0, M, N, S, D, stride_a, stride_c,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr, UPCAST: tl.constexpr,
                   PRECISION: tl.constexpr):
    """OUT[r - row0, j] = s(r, column (j * SAMPLE_HASH) mod N) for rows r in [row0, M), j < S.

    A multiplicative hash rather than a stride: batches are often laid out with a period (class
    i mod C, views i and i + B) that a stride can alias with, never sampling a row's neighbours.
    SAMPLE_HASH is prime and larger than N, so it is coprime to N and the S columns are distinct."""
    rows = (row0 + tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < M
    ra, a_own = own_rows(A, RA, rows, row_ok, D, stride_a, BLOCK_D, SINGLE_K, NORM_DIV, UPCAST)
    for j0 in range(0, S, BLOCK_N):
        j = (j0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        j_ok = j < S
        cols = (j * SAMPLE_HASH) % N
        s, rc, c_t = sim_cols(a_own, A, ra, rows, row_ok, C, RC, cols, j_ok, D, stride_a, stride_c,
                              BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_K, NORM_DIV, UPCAST, PRECISION)
        tl.store(OUT + (rows - row0)[:, None] * S + j[None, :], s, mask=row_ok[:, None] & j_ok[None, :])


@triton.jit
def _bracket(TV, rows, row_ok, J, j_lo, j_hi):
    """The row's selection bracket [lo, hi) from its sorted sample (index -1: unbounded)."""
    lo = tl.load(TV + rows * J + j_lo, mask=row_ok & (j_lo >= 0), other=-_BIG)
    hi = tl.load(TV + rows * J + j_hi, mask=row_ok & (j_hi >= 0), other=_BIG)
    return lo, hi


@triton.jit
def _fwd_kernel(A, C, RA, RC, POS, SELF, EPS, RMIN, RDEN, GA, GC, TV, BUF, RS, LSE2, GMUL, ROUT,
                M, N, D, stride_a, stride_c, half, J, j_lo, j_hi, e_lo_at, e_hi_at, cap,
                scale2, inv_tau, log2w, inv_m,
                RULE: tl.constexpr, SQUARE: tl.constexpr, SELECT: tl.constexpr, LSE: tl.constexpr,
                HAS_HI: tl.constexpr, FIXED_MAX: tl.constexpr,
                HAS_W: tl.constexpr, POS_IN_DEN: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SINGLE_K: tl.constexpr,
                NORM_DIV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """The forward pass. SELECT: fused selection + split sums (module docstring); else eps = EPS[0]."""
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < M
    ra, a_own = own_rows(A, RA, rows, row_ok, D, stride_a, BLOCK_D, SINGLE_K, NORM_DIV, UPCAST)
    pos, slf, rmin, rden, g_row = _row_params(POS, SELF, RMIN, RDEN, GA, rows, row_ok, half, RULE, SQUARE)
    if not SELECT:
        m_a, s_a, m_b, s_b, n_h, s_pos = _lse_stream(
            A, C, RA, RC, GC, a_own, ra, rows, row_ok, pos, slf, rmin, rden, g_row, tl.load(EPS), N, D,
            stride_a, stride_c, scale2, RULE, FIXED_MAX, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_K,
            NORM_DIV, UPCAST, PRECISION)
        _finish_rows(LSE2, GMUL, ROUT, rows, row_ok, m_a, s_a, m_b, s_b, n_h, s_pos, pos, slf, N, scale2,
                     inv_tau, log2w, inv_m, HAS_W, POS_IN_DEN)
    else:
        lo, hi = _bracket(TV, rows, row_ok, J, j_lo, j_hi)
        e_lo = tl.load(EPS + e_lo_at)
        e_hi = tl.load(EPS + e_hi_at)
        lmax = scale2
        m_a, s_a, m_b, s_b = _empty_parts(lmax, BLOCK_M, FIXED_MAX)
        s_pos = tl.zeros([BLOCK_M], tl.float32)
        s_self = tl.zeros([BLOCK_M], tl.float32)
        n_h = tl.zeros([BLOCK_M], tl.int32)
        c_hi = tl.zeros([BLOCK_M], tl.int32)
        n_buf = tl.zeros([BLOCK_M], tl.int32)
        # the column range holding any of this block's positives and selves (other tiles skip them)
        sp_lo = tl.minimum(tl.min(tl.where(row_ok & (pos >= 0), pos, N), axis=0),
                           tl.min(tl.where(row_ok & (slf >= 0), slf, N), axis=0))
        sp_hi = tl.maximum(tl.max(tl.where(row_ok, pos, -1), axis=0), tl.max(tl.where(row_ok, slf, -1), axis=0))
        for n0 in range(0, N, BLOCK_N):
            cols = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
            col_ok = cols < N
            s, rc, c_t = sim_cols(a_own, A, ra, rows, row_ok, C, RC, cols, col_ok, D, stride_a,
                                  stride_c, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_K, NORM_DIV, UPCAST,
                                  PRECISION)
            valid = col_ok[None, :] & row_ok[:, None]
            is_pos = cols[None, :] == pos[:, None]
            is_self = cols[None, :] == slf[:, None]
            neg = valid & ~is_pos & ~is_self
            if (n0 <= sp_hi) & (n0 + BLOCK_N > sp_lo):
                s_pos += tl.sum(tl.where(is_pos, s, 0.0), axis=1)
                s_self += tl.sum(tl.where(is_self, s, 0.0), axis=1)
            if HAS_HI:
                c_hi += tl.sum((valid & (s >= hi[:, None])).to(tl.int32), axis=1)
            band = neg & (s >= lo[:, None]) & (s < hi[:, None])
            if LSE:
                low = neg & (s <= e_lo)
                high = neg & (s > e_hi)
                band = band | (neg & ~low & ~high)
                n_h += tl.sum(high.to(tl.int32), axis=1)
                m_a, s_a, m_b, s_b = _acc2(s * scale2, low, high, m_a, s_a, m_b, s_b, lmax, FIXED_MAX)
            slot = n_buf[:, None] + tl.cumsum(band.to(tl.int32), axis=1) - 1
            tl.store(BUF + rows[:, None] * cap + slot, s, mask=band & (slot < cap))
            n_buf += tl.sum(band.to(tl.int32), axis=1)
        out = RS + rows * RS_FIELDS
        tl.store(out + RS_SA, s_a, mask=row_ok)
        tl.store(out + RS_MA, m_a, mask=row_ok)
        tl.store(out + RS_SB, s_b, mask=row_ok)
        tl.store(out + RS_MB, m_b, mask=row_ok)
        tl.store(out + RS_NH, n_h.to(tl.float32), mask=row_ok)
        tl.store(out + RS_POS, s_pos, mask=row_ok)
        tl.store(out + RS_SELF, s_self, mask=row_ok)
        tl.store(out + RS_CHI, c_hi.to(tl.float32), mask=row_ok)
        tl.store(out + RS_NBUF, n_buf.to(tl.float32), mask=row_ok)


@triton.jit
def _load_buffer(BUF, rows, row_ok, cap, n_buf, CAP: tl.constexpr):
    """[len(rows), CAP] buffer values (slots past n_buf: -inf)."""
    slots = tl.arange(0, CAP)
    return tl.load(BUF + rows[:, None] * cap + slots[None, :],
                   mask=row_ok[:, None] & (slots[None, :] < n_buf[:, None]), other=float("-inf"))


@triton.jit
def _bisect(v, lo, hi, rank, x1, x2):
    """Per row: (the rank-th largest (1-based) of {v in [lo, hi)} + {x1, x2 in [lo, hi)}, their count).

    Bisection on the order-preserving key: when #{values >= lo} >= rank (the caller checks it with
    the returned count) the invariant #{>= key_lo} >= rank > #{>= key_hi} holds from the start, and
    32 halvings reach adjacent keys, so key_lo is the wanted value's key.
    """
    kv = tl.where((v >= lo[:, None]) & (v < hi[:, None]), fkey(v), -1)
    k1 = tl.where((x1 >= lo) & (x1 < hi), fkey(x1), -1)
    k2 = tl.where((x2 >= lo) & (x2 < hi), fkey(x2), -1)
    n_in = tl.sum((kv >= 0).to(tl.int32), axis=1) + (k1 >= 0).to(tl.int32) + (k2 >= 0).to(tl.int32)
    key_lo = fkey(lo)
    key_hi = fkey(hi)
    for _ in range(33):
        active = (key_hi - key_lo) > 1
        mid = key_lo + (key_hi - key_lo) // 2
        cnt = tl.sum((kv >= mid[:, None]).to(tl.int32), axis=1) + (k1 >= mid).to(tl.int32) \
            + (k2 >= mid).to(tl.int32)
        up = cnt >= rank
        key_lo = tl.where(active & up, mid, key_lo)
        key_hi = tl.where(active & ~up, mid, key_hi)
    return funkey(key_lo), n_in


@triton.jit
def _select_kernel(A, C, RA, RC, POS, SELF, TV, BUF, RS, THR, KTH, STATUS,
                   M, N, D, stride_a, stride_c, half, J, j_lo, j_hi, cap, kth,
                   SQUARE: tl.constexpr, CAP: tl.constexpr, NT: tl.constexpr, SUB: tl.constexpr,
                   MAX_PASSES: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr, UPCAST: tl.constexpr,
                   PRECISION: tl.constexpr):
    """KTH[i] = the kth largest of row i, exactly; STATUS[i] = 1 (bracket held) or 2 (repaired).

    Phase 1, per SUB rows: verify the bracket (c_hi < kth <= c_hi + #bracket, no overflow) and bisect.
    Phase 2, only if a row of this block failed: the counting refinement for the failed rows, on the
    same similarity tiles (the program's rows are a tile block of BLOCK_M rows), then collect and
    bisect. THR is scratch [rows, NT] for the thresholds of a refinement pass.
    """
    pid = tl.program_id(0)
    base = pid * BLOCK_M
    for r0 in tl.static_range(0, BLOCK_M, SUB):
        rows = (base + r0 + tl.arange(0, SUB)).to(tl.int64)
        row_ok = rows < M
        lo, hi = _bracket(TV, rows, row_ok, J, j_lo, j_hi)
        c_hi = tl.load(RS + rows * RS_FIELDS + RS_CHI, mask=row_ok, other=0.0).to(tl.int32)
        n_buf = tl.load(RS + rows * RS_FIELDS + RS_NBUF, mask=row_ok, other=0.0).to(tl.int32)
        pos, slf = _row_index(POS, SELF, rows, row_ok, half, SQUARE)
        s_pos = tl.where(pos >= 0, tl.load(RS + rows * RS_FIELDS + RS_POS, mask=row_ok, other=0.0), float("-inf"))
        s_self = tl.where(slf >= 0, tl.load(RS + rows * RS_FIELDS + RS_SELF, mask=row_ok, other=0.0), float("-inf"))
        v = _load_buffer(BUF, rows, row_ok, cap, n_buf, CAP)
        val, n_in = _bisect(v, lo, hi, kth - c_hi, s_pos, s_self)
        ok = (c_hi < kth) & (kth <= c_hi + n_in) & (n_buf <= cap)
        tl.store(KTH + rows, val, mask=row_ok & ok)
        tl.store(STATUS + rows, tl.where(ok, 1, 0).to(tl.int8), mask=row_ok)
    tl.debug_barrier()
    rows = (base + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < M
    failed = row_ok & (tl.load(STATUS + rows, mask=row_ok, other=1) == 0)
    if tl.max(failed.to(tl.int32), axis=0) > 0:
        _repair_rows(A, C, RA, RC, TV, BUF, RS, THR, KTH, STATUS, rows, row_ok, failed, M, N, D, stride_a,
                     stride_c, J, j_lo, j_hi, cap, kth, CAP, NT, SUB, MAX_PASSES, BLOCK_M, BLOCK_N, BLOCK_D,
                     SINGLE_K, NORM_DIV, UPCAST, PRECISION)


@triton.jit
def _repair_rows(A, C, RA, RC, TV, BUF, RS, THR, KTH, STATUS, rows, row_ok, failed, M, N, D, stride_a,
                 stride_c, J, j_lo, j_hi, cap, kth, CAP: tl.constexpr, NT: tl.constexpr, SUB: tl.constexpr,
                 MAX_PASSES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_D: tl.constexpr, SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr,
                 UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Exact selection for the failed rows: refine an interval [lo, hi) with exact counts
    c_lo = #{s >= lo} >= kth > c_hi = #{s >= hi} until it holds <= cap values (or one fp32 value),
    then collect them and bisect. The start uses what the fused pass proved about the row."""
    lo0, hi0 = _bracket(TV, rows, row_ok, J, j_lo, j_hi)
    c_hi0 = tl.load(RS + rows * RS_FIELDS + RS_CHI, mask=row_ok, other=0.0).to(tl.int32)
    above = c_hi0 >= kth  # the kth value is >= hi: search [hi, BIG)
    lo = tl.where(above, hi0, -_BIG)
    hi = tl.where(above, _BIG, hi0)
    c_lo = tl.where(above, c_hi0, N)
    c_hi = tl.where(above, 0, c_hi0)
    refine = failed & ((c_lo - c_hi) > cap) & ((fkey(hi) - fkey(lo)) > 1)
    ra, a_own = own_rows(A, RA, rows, row_ok, D, stride_a, BLOCK_D, SINGLE_K, NORM_DIV, UPCAST)
    jr = tl.arange(0, NT)
    for npass in range(MAX_PASSES):
        if tl.max(refine.to(tl.int32), axis=0) > 0:
            # NT thresholds evenly spaced in value (first pass) or half in value, half in key (later:
            # fp32 values crowd towards 0); each pass divides the fp32 values left by >= NT / 2
            width = (hi - lo)[:, None]
            thr = lo[:, None] + width * (jr.to(tl.float32) / NT)[None, :]
            klo = fkey(lo)[:, None]
            span = fkey(hi)[:, None] - klo
            jh = (jr % (NT // 2)).to(tl.int64)[None, :]
            value_h = lo[:, None] + width * (jh.to(tl.float32) / (NT // 2))
            key_h = funkey(klo + (span * jh) // (NT // 2))
            by_key = funkey(klo + (span * jr.to(tl.int64)[None, :]) // NT)
            mixed = tl.where(jr[None, :] < NT // 2, value_h, key_h)
            if npass > 0:
                thr = tl.where(span <= 16777216, by_key, mixed)
            thr = tl.minimum(tl.maximum(thr, lo[:, None]), hi[:, None])
            tl.store(THR + rows[:, None] * NT + jr[None, :], thr, mask=row_ok[:, None])
            tl.debug_barrier()
            cnt = tl.zeros([BLOCK_M, NT], dtype=tl.int32)
            for n0 in range(0, N, BLOCK_N):
                cols = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
                col_ok = cols < N
                s, rc, c_t = sim_cols(a_own, A, ra, rows, row_ok, C, RC, cols, col_ok, D, stride_a,
                                      stride_c, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_K, NORM_DIV, UPCAST,
                                      PRECISION)
                s = tl.where(col_ok[None, :], s, float("-inf"))
                for j in tl.static_range(NT):
                    t = tl.load(THR + rows * NT + j, mask=row_ok, other=0.0)
                    c = tl.sum((s >= t[:, None]).to(tl.int32), axis=1)
                    cnt += tl.where(jr[None, :] == j, c[:, None], 0)
            # counts fall as thresholds rise: the new lo is the largest threshold still counting
            # >= kth, the new hi the smallest one counting < kth
            okc = cnt >= kth
            new_lo = tl.max(tl.where(okc, thr, float("-inf")), axis=1)
            new_c_lo = tl.min(tl.where(okc & (thr == new_lo[:, None]), cnt, 2147483647), axis=1)
            new_hi = tl.minimum(tl.min(tl.where(okc, float("inf"), thr), axis=1), hi)
            moved = new_hi < hi
            at_hi = tl.max(tl.where((~okc) & (thr == new_hi[:, None]), cnt, -1), axis=1)
            lo = tl.where(refine, new_lo, lo)
            c_lo = tl.where(refine, new_c_lo, c_lo)
            c_hi = tl.where(refine & moved, at_hi, c_hi)
            hi = tl.where(refine, new_hi, hi)
            refine = refine & ((c_lo - c_hi) > cap) & ((fkey(hi) - fkey(lo)) > 1)
            tl.debug_barrier()
    # collect each failed row's values in [lo, hi) (self and positive included), then bisect
    n_buf = tl.zeros([BLOCK_M], tl.int32)
    for n0 in range(0, N, BLOCK_N):
        cols = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < N
        s, rc, c_t = sim_cols(a_own, A, ra, rows, row_ok, C, RC, cols, col_ok, D, stride_a, stride_c,
                              BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_K, NORM_DIV, UPCAST, PRECISION)
        inside = (s >= lo[:, None]) & (s < hi[:, None]) & col_ok[None, :] & failed[:, None]
        slot = n_buf[:, None] + tl.cumsum(inside.to(tl.int32), axis=1) - 1
        tl.store(BUF + rows[:, None] * cap + slot, s, mask=inside & (slot < cap))
        n_buf += tl.sum(inside.to(tl.int32), axis=1)
    # bisect SUB rows at a time (a [SUB, CAP] block in registers): the row state goes through THR
    tl.store(THR + rows * NT + 0, lo, mask=row_ok)
    tl.store(THR + rows * NT + 1, hi, mask=row_ok)
    tl.store(THR + rows * NT + 2, c_hi.to(tl.float32), mask=row_ok)
    tl.store(THR + rows * NT + 3, tl.minimum(n_buf, cap).to(tl.float32), mask=row_ok)
    tl.store(THR + rows * NT + 4, tl.where(failed, 1.0, 0.0), mask=row_ok)
    tl.debug_barrier()
    base = tl.min(tl.where(row_ok, rows, 2147483647), axis=0)
    for r0 in tl.static_range(0, BLOCK_M, SUB):
        sr = base + r0 + tl.arange(0, SUB).to(tl.int64)
        s_ok = (sr < base + BLOCK_M) & (sr < M)
        s_lo = tl.load(THR + sr * NT + 0, mask=s_ok, other=0.0)
        s_hi = tl.load(THR + sr * NT + 1, mask=s_ok, other=0.0)
        s_chi = tl.load(THR + sr * NT + 2, mask=s_ok, other=0.0).to(tl.int32)
        s_nb = tl.load(THR + sr * NT + 3, mask=s_ok, other=0.0).to(tl.int32)
        s_fail = s_ok & (tl.load(THR + sr * NT + 4, mask=s_ok, other=0.0) > 0.0)
        single = (fkey(s_hi) - fkey(s_lo)) <= 1
        none = tl.full([SUB], float("-inf"), tl.float32)
        v = _load_buffer(BUF, sr, s_fail & ~single, cap, s_nb, CAP)
        val, _ = _bisect(v, s_lo, s_hi, kth - s_chi, none, none)
        tl.store(KTH + sr, tl.where(single, s_lo, val), mask=s_fail)
        tl.store(STATUS + sr, tl.full([SUB], 2, tl.int8), mask=s_fail)
    # the row's buffer now holds selection values only: the settling must recompute its sums
    tl.store(RS + rows * RS_FIELDS + RS_NBUF, tl.full([BLOCK_M], 2147483647.0, tl.float32), mask=failed)


@triton.jit
def _settle_kernel(A, C, RA, RC, POS, SELF, EPS, BAND, GC, BUF, RS, LSE2, GMUL, ROUT,
                   M, N, D, stride_a, stride_c, half, e_lo_at, e_hi_at, cap, scale2, inv_tau, log2w,
                   inv_m, SQUARE: tl.constexpr, CAP: tl.constexpr, CHUNK: tl.constexpr,
                   FIXED_MAX: tl.constexpr, HAS_W: tl.constexpr,
                   POS_IN_DEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr,
                   UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Once eps is known: add each row's collected undecided values to its parts, in slot order.

    A row is settled from its buffer when e_lo <= eps <= e_hi and its buffer is complete; otherwise
    its block streams all columns again with the known eps (exact, and rare).
    """
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < M
    eps = tl.load(EPS)
    e_lo = tl.load(BAND + e_lo_at)
    e_hi = tl.load(BAND + e_hi_at)
    out = RS + rows * RS_FIELDS
    s_a = tl.load(out + RS_SA, mask=row_ok, other=0.0)
    m_a = tl.load(out + RS_MA, mask=row_ok, other=0.0)
    s_b = tl.load(out + RS_SB, mask=row_ok, other=0.0)
    m_b = tl.load(out + RS_MB, mask=row_ok, other=0.0)
    n_h = tl.load(out + RS_NH, mask=row_ok, other=0.0).to(tl.int32)
    s_pos = tl.load(out + RS_POS, mask=row_ok, other=0.0)
    n_buf = tl.load(out + RS_NBUF, mask=row_ok, other=0.0)
    pos, slf = _row_index(POS, SELF, rows, row_ok, half, SQUARE)
    in_band = tl.zeros([BLOCK_M], tl.float32) + tl.where((e_lo <= eps) & (eps <= e_hi), 1.0, 0.0)
    good = row_ok & (n_buf <= cap) & (in_band > 0.0)
    lmax = scale2
    for c0 in tl.static_range(0, CAP, CHUNK):
        slots = c0 + tl.arange(0, CHUNK)
        v = tl.load(BUF + rows[:, None] * cap + slots[None, :],
                    mask=good[:, None] & (slots[None, :].to(tl.float32) < n_buf[:, None]), other=0.0)
        live = good[:, None] & (slots[None, :].to(tl.float32) < n_buf[:, None])
        undecided = live & (v > e_lo) & (v <= e_hi)
        hier = undecided & (v > eps)
        n_h += tl.sum(hier.to(tl.int32), axis=1)
        m_a, s_a, m_b, s_b = _acc2(v * scale2, undecided & ~hier, hier, m_a, s_a, m_b, s_b, lmax,
                                   FIXED_MAX)
    bad = row_ok & ~good
    if tl.max(bad.to(tl.int32), axis=0) > 0:
        ra, a_own = own_rows(A, RA, rows, row_ok, D, stride_a, BLOCK_D, SINGLE_K, NORM_DIV, UPCAST)
        zero = tl.zeros([BLOCK_M], tl.float32)
        r_ma, r_sa, r_mb, r_sb, r_nh, r_pos = _lse_stream(
            A, C, RA, RC, GC, a_own, ra, rows, row_ok, pos, slf, zero, zero, pos, eps, N, D,
            stride_a, stride_c, scale2, 1, FIXED_MAX, BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_K, NORM_DIV,
            UPCAST, PRECISION)
        m_a = tl.where(bad, r_ma, m_a)
        s_a = tl.where(bad, r_sa, s_a)
        m_b = tl.where(bad, r_mb, m_b)
        s_b = tl.where(bad, r_sb, s_b)
        n_h = tl.where(bad, r_nh, n_h)
    _finish_rows(LSE2, GMUL, ROUT, rows, row_ok, m_a, s_a, m_b, s_b, n_h, s_pos, pos, slf, N, scale2,
                 inv_tau, log2w, inv_m, HAS_W, POS_IN_DEN)


@triton.jit
def _minmax_kernel(A, C, RA, RC, OUT_MIN, OUT_DEN, M, N, D, stride_a, stride_c,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr, UPCAST: tl.constexpr,
                   PRECISION: tl.constexpr):
    """Row minimum m_i and range M_i - m_i of s over all N columns (the fixed rule's f)."""
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < M
    ra, a_own = own_rows(A, RA, rows, row_ok, D, stride_a, BLOCK_D, SINGLE_K, NORM_DIV, UPCAST)
    lo = tl.full([BLOCK_M], float("inf"), tl.float32)
    hi = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < N
        s, rc, c_t = sim_cols(a_own, A, ra, rows, row_ok, C, RC, cols, col_ok, D, stride_a, stride_c,
                              BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_K, NORM_DIV, UPCAST, PRECISION)
        lo = tl.minimum(lo, tl.min(tl.where(col_ok[None, :], s, float("inf")), axis=1))
        hi = tl.maximum(hi, tl.max(tl.where(col_ok[None, :], s, float("-inf")), axis=1))
    tl.store(OUT_MIN + rows, lo, mask=row_ok)
    tl.store(OUT_DEN + rows, hi - lo, mask=row_ok)


@triton.jit
def _g_term(s, e, is_pos, is_self, valid, eps, rmin, rden, g_a, g_c, gsc, inv_tau, weight,
            RULE: tl.constexpr, POS_IN_DEN: tl.constexpr):
    """G for the entries of a tile seen from their anchor rows (all anchor-side inputs broadcast);
    e = 2^(l - lse2) of the entries from those rows."""
    neg = valid & ~is_pos & ~is_self
    if RULE == 1:
        h = s > eps
    elif RULE == 2:
        ok = rden > 0.0
        f = tl.where(ok, tl.div_rn(s - rmin, tl.where(ok, rden, 1.0)), 0.0)
        h = f > eps
    elif RULE == 3:
        h = g_a == g_c
    else:
        h = s != s  # all False (s is finite)
    val = tl.where(h & neg, weight * e, tl.where(neg, e, 0.0))
    pos_v = is_pos & valid
    if POS_IN_DEN:
        val = tl.where(pos_v, e - 1.0, val)
    else:
        val = tl.where(pos_v, -1.0, val)
    return gsc * val  # gsc = g_i / tau (0 for padding and empty rows)


@triton.jit
def _bwd_kernel(X, Y, RX, RY, INVX, POSA, SELFA, RMINA, RDENA, GA, GC, LSE2A, GMULA, GLOSS, EPS,
                DX, M_own, N_other, D, stride_x, stride_y, stride_dx, half, scale2, inv_tau, weight, inv_m,
                SQUARE: tl.constexpr, OWN_ANCHOR: tl.constexpr, OTHER_ANCHOR: tl.constexpr, RULE: tl.constexpr,
                ONE_EXP: tl.constexpr,
                POS_IN_DEN: tl.constexpr, FUSE_NORM: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DOUT: tl.constexpr,
                SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr, UPCAST: tl.constexpr,
                PRECISION: tl.constexpr):
    """DX[p] = sum_q H[p, q] y_q over the streamed rows q, for the program's own rows p.

    Tile T[p, q] = s(x_p, y_q). OWN_ANCHOR: p is an anchor, q its candidate: H += G_pq.
    OTHER_ANCHOR: q is an anchor, p its candidate: H += G_qp (read off T, which equals s_qp).
    Square case: x = y = the rows, both terms. Anchor statistics (POSA, ..., GMULA) are indexed by
    anchor. ONE_EXP (the launcher's bound, kernels/hex_triton.py): 2^(l - lse2_i) =
    2^(l - c) 2^(c - lse2_i), one exp2 per tile entry serving both terms and one per row, instead of
    one per entry and term. FUSE_NORM (whole rows in the program): DX is the gradient w.r.t. the raw input,
    (dz - z (z.dz)) / max(|x|, 1e-12), in DX's dtype; else dz in fp32.
    """
    pid = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < M_own
    rx, x_own = own_rows(X, RX, rows, row_ok, D, stride_x, BLOCK_D, SINGLE_K, NORM_DIV, UPCAST)
    g = tl.load(GLOSS).to(tl.float32) * inv_m
    eps = tl.load(EPS)
    if OWN_ANCHOR:
        pos_p, slf_p, rmin_p, rden_p, ga_p = _row_params(POSA, SELFA, RMINA, RDENA, GA, rows, row_ok, half,
                                                            RULE, SQUARE)
        lse_p = tl.load(LSE2A + rows, mask=row_ok, other=0.0)
        if ONE_EXP:
            f_p = tl.exp2(scale2 - lse_p)
        gsc_p = tl.load(GMULA + rows, mask=row_ok, other=0.0) * (g * inv_tau)
    gc_p = _col_groups(GC, rows, row_ok, RULE)
    dd = pid_d * BLOCK_DOUT + tl.arange(0, BLOCK_DOUT)
    d_ok = dd < D
    acc = tl.zeros([BLOCK_M, BLOCK_DOUT], tl.float32)
    for n0 in range(0, N_other, BLOCK_N):
        cols = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < N_other
        s, ry, y_t = sim_cols(x_own, X, rx, rows, row_ok, Y, RY, cols, col_ok, D, stride_x, stride_y,
                              BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_K, NORM_DIV, UPCAST, PRECISION)
        valid = row_ok[:, None] & col_ok[None, :]
        l2 = s * scale2
        if ONE_EXP:
            e_c = tl.exp2(l2 - scale2)  # 2^(l - c) <= 1: the one exp2 of the entry
        h = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        if OWN_ANCHOR:
            gc_q = _col_groups(GC, cols, col_ok, RULE)
            if ONE_EXP:
                e_p = e_c * f_p[:, None]
            else:
                e_p = tl.exp2(l2 - lse_p[:, None])
            h += _g_term(s, e_p, cols[None, :] == pos_p[:, None], cols[None, :] == slf_p[:, None], valid,
                         eps, rmin_p[:, None], rden_p[:, None], ga_p[:, None], gc_q[None, :],
                         gsc_p[:, None], inv_tau, weight, RULE, POS_IN_DEN)
        if OTHER_ANCHOR:
            pos_q, slf_q, rmin_q, rden_q, ga_q = _row_params(POSA, SELFA, RMINA, RDENA, GA, cols, col_ok,
                                                            half, RULE, SQUARE)
            lse_q = tl.load(LSE2A + cols, mask=col_ok, other=0.0)
            gsc_q = tl.load(GMULA + cols, mask=col_ok, other=0.0) * (g * inv_tau)
            if ONE_EXP:
                e_q = e_c * tl.exp2(scale2 - lse_q)[None, :]
            else:
                e_q = tl.exp2(l2 - lse_q[None, :])
            h += _g_term(s, e_q, rows[:, None] == pos_q[None, :], rows[:, None] == slf_q[None, :], valid,
                         eps, rmin_q[None, :], rden_q[None, :], ga_q[None, :], gc_p[:, None],
                         gsc_q[None, :], inv_tau, weight, RULE, POS_IN_DEN)
        if not NORM_DIV:
            h = h * ry[None, :]
        if SINGLE_K:
            yv = y_t  # the streamed tile serves both products
        else:
            yv = tl.load(Y + cols[:, None] * stride_y + dd[None, :], mask=col_ok[:, None] & d_ok[None, :],
                         other=0.0)
            if UPCAST:
                yv = yv.to(tl.float32)
            if NORM_DIV:
                yv = tl.div_rn(yv, ry[:, None])
        acc = dot_f32acc(h.to(yv.dtype), yv, acc, PRECISION)
    if FUSE_NORM:
        inv = tl.load(INVX + rows, mask=row_ok, other=1.0)
        if NORM_DIV:
            z = x_own  # already normalised on load
        else:
            z = x_own.to(tl.float32) * inv[:, None]
        radial = z * tl.sum(z * acc, axis=1)[:, None]
        clamped = (inv >= 1e12)[:, None]  # |x| <= 1e-12: z = x * 1e12 is linear in x
        out = tl.where(clamped, acc, acc - radial) * inv[:, None]
        tl.store(DX + rows[:, None] * stride_dx + dd[None, :], out.to(DX.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok[None, :])
    else:
        tl.store(DX + rows[:, None] * stride_dx + dd[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _norms_kernel(X, NORM, INV, M, D, stride, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """NORM = max(|x|, 1e-12) in fp32 (F.normalize's clamp), INV = 1 / NORM."""
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < M
    acc = tl.zeros([BLOCK_M], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(X + rows[:, None] * stride + dd[None, :], mask=row_ok[:, None] & (dd < D)[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(x * x, axis=1)
    nrm = tl.maximum(tl.sqrt_rn(acc), 1e-12)
    tl.store(NORM + rows, nrm, mask=row_ok)
    tl.store(INV + rows, tl.div_rn(1.0, nrm), mask=row_ok)
