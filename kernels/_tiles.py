"""Triton device functions shared by every HEX kernel: the similarity tile and the hierarchy rule.

Maths. Anchors a [M, D], candidates c [N, D] (raw, un-normalised), norms
n_i = max(|a_i|, 1e-12) computed once in fp32 by the launcher (as F.normalize does). The cosine
similarity of a tile, with fp32 accumulation, is

    fp32 inputs:       s_ik = sum_d (a_id / n_i) (c_kd / n_k)      (division on load, as the
                       reference normalises: identical normalised values, ties stay ties)
    bf16/fp16 inputs:  s_ik = ((a_i . c_k) * (1/n_i)) * (1/n_k)    (normalisation folded into
                       the tile: the inputs enter the tensor cores as they are; their products
                       are exact in fp32)

No normalised copy of the inputs is ever written.

Every kernel computes s with the same tile shape and the same path (kernels/config.py): for
D <= 256 one K step (`load_rows` once for the program's own rows, `sim_of_tiles` per streamed
tile), otherwise the K loop of `sim_tile`. So all passes see bit-identical similarities: the
quantile selection, the log-sum-exp pass and the backward.

Hierarchy rules (RULE constexpr): 0 none, 1 adaptive (s > eps), 2 fixed (f > eps with
f = (s - m_i) / (M_i - m_i) in fp32 with round-to-nearest division, 0 where M_i == m_i, exactly as
hexfast.reference computes it), 3 groups (label of row == label of column).
"""
import triton
import triton.language as tl

RULE_IDS = {"none": 0, "adaptive": 1, "fixed": 2, "groups": 3}


@triton.jit
def load_rows(ptr, rows, row_ok, dd, d_ok, stride, scale, NORM_DIV: tl.constexpr, UPCAST: tl.constexpr):
    """[len(rows), len(dd)] tile of an input; with NORM_DIV divided by the row norms `scale` (fp32)."""
    x = tl.load(ptr + rows[:, None] * stride + dd[None, :], mask=row_ok[:, None] & d_ok[None, :],
                other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    if NORM_DIV:
        x = tl.div_rn(x, scale[:, None])
    return x


@triton.jit
def sim_tile(a_ptr, c_ptr, sa, sc, rows, row_ok, cols, col_ok, D, stride_a, stride_c,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
             NORM_DIV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """[BLOCK_M, BLOCK_N] fp32 cosine similarities of anchor rows `rows` against columns `cols`.

    rows/cols are int64 row indices into a/c; padded rows/columns load zeros (the caller masks them).
    NORM_DIV (fp32 inputs): sa/sc are the row norms and tiles are divided by them on load, the
    same rounding as F.normalize, so s equals the reference wherever the dot products are exact.
    Otherwise (bf16/fp16) sa/sc are inverse norms folded into the fp32 result.
    UPCAST: convert loaded tiles to fp32 (the interpreter computes bf16 wrongly).
    PRECISION: tl.dot input precision ("ieee" for fp32: exact fp32 products).
    """
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        d_ok = dd < D
        a = load_rows(a_ptr, rows, row_ok, dd, d_ok, stride_a, sa, NORM_DIV, UPCAST)
        c = load_rows(c_ptr, cols, col_ok, dd, d_ok, stride_c, sc, NORM_DIV, UPCAST)
        acc = tl.dot(a, tl.trans(c), acc, input_precision=PRECISION)
    if not NORM_DIV:
        acc = (acc * sa[:, None]) * sc[None, :]
    return acc


@triton.jit
def sim_of_tiles(a, c, sa, sc, NORM_DIV: tl.constexpr, PRECISION: tl.constexpr):
    """Single-K path: s from already loaded tiles a [BM, BLOCK_D] and c [BN, BLOCK_D] (load_rows)."""
    acc = tl.dot(a, tl.trans(c), input_precision=PRECISION)
    if not NORM_DIV:
        acc = (acc * sa[:, None]) * sc[None, :]
    return acc


@triton.jit
def hier_mask(s, eps, row_min, row_den, g_row, g_col, RULE: tl.constexpr):
    """[BLOCK_M, BLOCK_N] bool: entries that pass the hierarchy rule (self/positive not removed)."""
    if RULE == 1:
        h = s > eps
    elif RULE == 2:
        den = row_den[:, None]
        ok = den > 0.0
        f = tl.where(ok, tl.div_rn(s - row_min[:, None], tl.where(ok, den, 1.0)), 0.0)
        h = f > eps
    elif RULE == 3:
        h = g_row[:, None] == g_col[None, :]
    else:
        h = tl.zeros_like(s) != 0.0  # all False
    return h
