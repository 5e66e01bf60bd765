"""Triton device functions shared by every HEX kernel: the one tile prologue, the similarity tile,
the hierarchy rule and the order-preserving fp32 keys.

Maths. Anchors a [M, D], candidates c [N, D] (raw, un-normalised), norms
n_i = max(|a_i|, 1e-12) computed once in fp32 by the launcher (as F.normalize does). The cosine
similarity of a tile, with fp32 accumulation, is

    fp32 inputs:       s_ik = sum_d (a_id / n_i) (c_kd / n_k)      (division on load, as the
                       reference normalises: identical normalised values, ties stay ties)
    bf16/fp16 inputs:  s_ik = (a_i . c_k) * ((1/n_i) * (1/n_k))    (normalisation folded into
                       the tile: the inputs enter the tensor cores as they are; their products
                       are exact in fp32)

No normalised copy of the inputs is ever written.

One prologue, by construction. Every kernel that needs similarities calls `own_rows` once for the
rows its program owns and `sim_cols` for every streamed column tile; nothing else computes s. With
the same tile shape (kernels/config.py) every pass therefore sees bit-identical similarities: the
sketch, the selection, the log-sum-exp, the settling, the repairs and the backward.

Symmetry. In the square case (candidates = anchors) s_ik and s_ki are bit-identical: the fp32 path
divides each operand by its own norm before the dot, the half path scales the fp32 dot by the
product (1/n_i)(1/n_k), which is commutative, and a dot's accumulation order over the features
does not depend on where an element sits in its tile. The one-kernel square backward relies on it
(it reads G_ki off the tile s_ik); tests/test_kernel_loss.py checks it on the kernel's own matrix.

Hierarchy rules (RULE constexpr, the kernel's private encoding of hexfast's Rule.kind): 0 none,
1 adaptive (s > eps), 2 fixed (f > eps with f = (s - m_i) / (M_i - m_i) in fp32 with
round-to-nearest division, 0 where M_i == m_i, exactly as hexfast.reference computes it),
3 groups (label of row == label of column).
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
def own_rows(A, RA, rows, row_ok, D, stride_a, BLOCK_D: tl.constexpr, SINGLE_K: tl.constexpr,
             NORM_DIV: tl.constexpr, UPCAST: tl.constexpr):
    """The tile prologue: (row scales, own tile). rows are int64.

    Single-K path (D <= BLOCK_D): the program's own rows are loaded once, as flash attention
    loads Q. K-loop path: the own tile is re-read per column tile inside `sim_cols` (a dummy here).
    """
    ra = tl.load(RA + rows, mask=row_ok, other=1.0)
    dk = tl.arange(0, BLOCK_D)
    if SINGLE_K:
        a_own = load_rows(A, rows, row_ok, dk, dk < D, stride_a, ra, NORM_DIV, UPCAST)
    else:
        a_own = tl.zeros([1, BLOCK_D], tl.float32)
    return ra, a_own


@triton.jit
def tf32_round(x):
    """fp32 -> the nearest tf32 value (10 explicit mantissa bits), ties away from zero, as PTX's
    cvt.rna.tf32.f32 rounds (finite x; the low 13 bits become zero)."""
    b = x.to(tl.int32, bitcast=True)
    return ((b + 0x1000) & -8192).to(tl.float32, bitcast=True)


@triton.jit
def dot_f32acc(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b with fp32 accumulation. PRECISION "tf32x3": the 3xTF32 split written out,
    a = a_hi + a_lo with a_hi, a_lo tf32 (b alike), a @ b ~ a_hi b_hi + (a_lo b_hi + a_hi b_lo) on the
    tensor cores (a_lo b_lo, below 2^-22 |a||b| per product, is dropped). The two cross products start
    from zero and are added to each other before a_hi b_hi accumulates onto them: swapping the operands
    swaps the two cross terms, and fp32 addition commutes, so s_ik and s_ki stay bit-identical (Triton's
    own "tf32x3" chains one cross product onto the other, which would break that). Other values go to
    tl.dot as they are ("ieee": the FMA units; half inputs: the tensor cores)."""
    if PRECISION == "tf32x3":
        a_hi = tf32_round(a)
        a_lo = tf32_round(a - a_hi)
        b_hi = tf32_round(b)
        b_lo = tf32_round(b - b_hi)
        cross = tl.dot(a_lo, b_hi, input_precision="tf32") + tl.dot(a_hi, b_lo, input_precision="tf32")
        acc = tl.dot(a_hi, b_hi, acc + cross, input_precision="tf32")
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def sim_cols(a_own, A, ra, rows, row_ok, C, RC, cols, col_ok, D, stride_a, stride_c,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
             SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr, UPCAST: tl.constexpr,
             PRECISION: tl.constexpr):
    """(s [BLOCK_M, BLOCK_N] fp32, column scales rc, streamed tile) for int64 columns `cols`.

    Padded rows/columns load zeros (the caller masks them). The streamed tile (single-K path: the
    whole [BLOCK_N, BLOCK_D] feature tile) is returned so that a backward can reuse it for its
    second product; on the K-loop path it is a dummy.
    """
    rc = tl.load(RC + cols, mask=col_ok, other=1.0)
    dk = tl.arange(0, BLOCK_D)
    if SINGLE_K:
        c_t = load_rows(C, cols, col_ok, dk, dk < D, stride_c, rc, NORM_DIV, UPCAST)
        acc = dot_f32acc(a_own, tl.trans(c_t), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), PRECISION)
    else:
        c_t = tl.zeros([1, BLOCK_D], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + dk
            d_ok = dd < D
            a = load_rows(A, rows, row_ok, dd, d_ok, stride_a, ra, NORM_DIV, UPCAST)
            c = load_rows(C, cols, col_ok, dd, d_ok, stride_c, rc, NORM_DIV, UPCAST)
            acc = dot_f32acc(a, tl.trans(c), acc, PRECISION)
    if not NORM_DIV:
        acc = acc * (ra[:, None] * rc[None, :])
    return acc, rc, c_t


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


@triton.jit
def fkey(x):
    """fp32 -> int64 order-preserving key in [0, 2^32) (-0.0 folded onto +0.0)."""
    b = (x + 0.0).to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF
    return tl.where(b >= 0x80000000, (~b) & 0xFFFFFFFF, b | 0x80000000)


@triton.jit
def funkey(k):
    """The inverse of `fkey`."""
    b = tl.where(k >= 0x80000000, k & 0x7FFFFFFF, (~k) & 0xFFFFFFFF)
    b = tl.where(b >= 0x80000000, b - 0x100000000, b)
    return b.to(tl.int32).to(tl.float32, bitcast=True)
