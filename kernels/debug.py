"""The kernel's own similarity matrix, materialised: for tests only (it is O(M * N) by design).

`similarity_matrix(anchors, candidates)` writes the very fp32 values every HEX kernel computes
(the shared tile prologue of kernels/_tiles.py, the same tile shape), so tests can check that the
streamed selection returns exactly `torch.kthvalue` of them, that the square case is symmetric,
and compare the kernel's values with the reference's.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._tiles import own_rows, sim_cols
from kernels.config import check_inputs


@triton.jit
def _store_sim_kernel(A, C, RA, RC, OUT, M, N, D, stride_a, stride_c,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr, UPCAST: tl.constexpr,
                      PRECISION: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < M
    ra, a_own = own_rows(A, RA, rows, row_ok, D, stride_a, BLOCK_D, SINGLE_K, NORM_DIV, UPCAST)
    for n0 in range(0, N, BLOCK_N):
        cols = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < N
        s, rc, c_t = sim_cols(a_own, A, ra, rows, row_ok, C, RC, cols, col_ok, D, stride_a, stride_c,
                              BLOCK_M, BLOCK_N, BLOCK_D, SINGLE_K, NORM_DIV, UPCAST, PRECISION)
        tl.store(OUT + rows[:, None] * N + cols[None, :], s, mask=row_ok[:, None] & col_ok[None, :])


def similarity_matrix(anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[M, N] fp32: the similarities exactly as the HEX kernels compute them (tests only)."""
    from kernels.hex_triton import _Operands

    a = check_inputs("anchors", anchors.detach())
    c = a if candidates is anchors else check_inputs("candidates", candidates.detach())
    op = _Operands(a, None if c is a else c)
    out = torch.empty((op.m, op.n), device=a.device, dtype=torch.float32)
    _store_sim_kernel[op.grid(op.m)](*op.sim(), out, op.m, op.n, op.d, a.stride(0), op.c.stride(0),
                                     **op.meta())
    return out
