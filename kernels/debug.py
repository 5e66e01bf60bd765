"""The kernel's own similarity matrix, materialised: for tests only (it is O(M * N) by design).

`similarity_matrix(anchors, candidates)` writes the very fp32 values every HEX kernel computes
(same `sim_tile`, same tile shape), so tests can check that the streamed selection returns exactly
`torch.kthvalue` of them, and compare the kernel's values with the reference's.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._tiles import load_rows, sim_of_tiles, sim_tile
from kernels.prepare import prepare


@triton.jit
def _store_sim_kernel(A, C, RA, RC, OUT, M, N, D, stride_a, stride_c,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      SINGLE_K: tl.constexpr, NORM_DIV: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    ra = tl.load(RA + rows64, mask=row_ok, other=1.0)
    if SINGLE_K:  # the program's own rows, loaded once (flash attention's Q)
        dk = tl.arange(0, BLOCK_D)
        dk_ok = dk < D
        a_own = load_rows(A, rows64, row_ok, dk, dk_ok, stride_a, ra, NORM_DIV, UPCAST)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        cols64 = cols.to(tl.int64)
        rc = tl.load(RC + cols64, mask=col_ok, other=1.0)
        if SINGLE_K:
            c_t = load_rows(C, cols64, col_ok, dk, dk_ok, stride_c, rc, NORM_DIV, UPCAST)
            s = sim_of_tiles(a_own, c_t, ra, rc, NORM_DIV, PRECISION)
        else:
            s = sim_tile(A, C, ra, rc, rows64, row_ok, cols64, col_ok, D, stride_a,
                         stride_c, BLOCK_M, BLOCK_N, BLOCK_D, NORM_DIV, UPCAST, PRECISION)
        tl.store(OUT + rows64[:, None] * N + cols64[None, :], s, mask=row_ok[:, None] & col_ok[None, :])


def similarity_matrix(anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[M, N] fp32: the similarities exactly as the HEX kernels compute them (tests only)."""
    a = anchors.detach()
    p = prepare(a, a if candidates is anchors else candidates.detach())
    out = torch.empty((p.m, p.n), device=p.a.device, dtype=torch.float32)
    _store_sim_kernel[(triton.cdiv(p.m, p.cfg.block_m),)](*p.sim_args(), out, p.m, p.n, p.d,
                                                          p.a.stride(0), p.c.stride(0), **p.sim_meta())
    return out
