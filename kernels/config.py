"""Launch configurations of the HEX kernels, and the checks every launcher shares.

Every kernel that computes a similarity tile uses the SAME (BLOCK_M, BLOCK_N, BLOCK_D, num_warps):
the selection passes, the log-sum-exp pass and both backward kernels must see bit-identical
similarities, so that the exact quantile is the quantile of the values the masks are decided on and
a pair is hierarchical in the backward exactly when it was in the forward. A tile computed with a
different shape could round differently (another MMA instruction, another accumulation order).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class TileConfig:
    block_m: int  # anchor rows per program
    block_n: int  # candidate columns per inner step
    block_d: int  # feature chunk of the similarity dot (the K loop), K-loop path
    block_dout: int  # feature chunk of a backward output block (grid axis 1), K-loop path
    num_warps: int
    num_stages: int
    single_k_max: int  # D up to this: one K step, the program's own tile loaded once (see below)


# GPU: 64x64 tiles at 8 warps. For D <= 256 the whole feature dimension is one tile
# (BLOCK_D = next power of two >= D): each program loads its own rows once, as flash attention
# loads Q, and streams the other side through a software-pipelined loop; the backward reuses the
# streamed tile for both of its products. Larger D uses a K loop of 64 and [64, 128] output chunks.
# ptxas registers and spills per kernel: bench/results/kernel_resources.json.
GPU_CONFIG = TileConfig(block_m=64, block_n=64, block_d=64, block_dout=128, num_warps=8,
                        num_stages=2, single_k_max=256)
# The interpreter runs each program in Python: few, large programs keep the CPU tests fast.
INTERPRETER_CONFIG = TileConfig(block_m=128, block_n=128, block_d=64, block_dout=256, num_warps=4,
                                num_stages=1, single_k_max=256)


# fp32 inputs: every similarity and backward dot as three tf32 tensor-core dots (the 3xTF32 split,
# kernels/_tiles.py: dot_f32acc), as accurate as the full-fp32 dot: tests/test_kernel_fp32_dot.py
# emulates the candidates and checks the chosen one's error against an fp64 matmul stays within a
# small factor of fp32's ("tf32" alone is 170-420x worse, "bf16x3" 6-11x). "ieee" is the FMA-unit dot.
FP32_DOT = "tf32x3"
FP32_DOTS = ("ieee", "tf32x3")


def dot_precision(dtype: torch.dtype) -> str:
    """The PRECISION constexpr of the tiles for inputs of `dtype`.

    Half inputs: "tf32" (unused: their dots are bf16/fp16 on the tensor cores). fp32: FP32_DOT on
    the GPU. Under the interpreter "ieee": it ignores input_precision and does one numpy fp32 matmul
    per tl.dot, so the CPU tests' numbers do not change with FP32_DOT. HEXFAST_FP32_DOT overrides
    both (the tests run the tf32x3 split's three dots through the interpreter; a GPU can time "ieee").
    """
    if dtype != torch.float32:
        return "tf32"
    override = os.environ.get("HEXFAST_FP32_DOT")
    if override:
        if override not in FP32_DOTS:
            raise ValueError(f"HEXFAST_FP32_DOT must be one of {', '.join(FP32_DOTS)}, got {override!r}")
        return override
    return "ieee" if interpreting() else FP32_DOT


def feature_blocks(cfg: TileConfig, d: int, precision: str, arch: int | None = None) -> tuple[bool, int, int]:
    """(single_k, BLOCK_D, BLOCK_DOUT) for feature dimension d (tl.dot needs K >= 16) with the dot
    `precision` (`dot_precision`) on a GPU of compute capability `arch` (90 for sm_90; None: newest).

    ptxas on the shipped tiles (bench/results/kernel_resources.json) decides. Half inputs: single K.
    fp32 "ieee" (FMA units): the K loop of 64 everywhere; a whole [64, 128] fp32 K step per tile spills
    thousands of bytes. fp32 "tf32x3": single K from sm_90 on (every forward pass but the finisher
    compiles without spills, the K loop spills in most), the K loop below (on sm_80 the single K step
    spills 1.5-18 KB per kernel, the K loop 0.8-1.7 KB). The interpreter: single K (few, large programs).
    """
    single = precision == "tf32" or (precision == "tf32x3" and (arch is None or arch >= 90))
    if d <= cfg.single_k_max and (single or interpreting()):
        width = max(16, 1 << (d - 1).bit_length())
        return True, width, width
    return False, cfg.block_d, cfg.block_dout

# Refinement (repair path only): thresholds counted per row in one pass; each pass narrows a
# failed row's interval at least 4-fold in fp32 keys, so MAX_REPAIR_PASSES bounds the worst case
# (32-bit keys, plus the first, value-spaced pass). 8, not 16: fewer registers (no spills on sm_80).
SELECT_THRESHOLDS = 8
MAX_REPAIR_PASSES = 24
# The sketch: every row against SKETCH_MIN evenly strided columns, or 1/SKETCH_FRACTION of them
# when that is more (dot work: at most 1/4 of one similarity pass at N = 1024, 1/8 above 2048).
SKETCH_MIN = 256
SKETCH_FRACTION = 8
# Margins of the sample order statistics, in standard deviations of X ~ Binomial(K, S/N), the number
# of sampled entries at or above a row's kth value: the selection bracket (a miss costs a repair of
# that row's block) and the eps band (a miss costs one more stream for every row).
SELECT_SIGMAS = 4.0
BAND_SIGMAS = 3.0
# The collect buffer holds at most CAP values per row (a power of two, O(n) memory in all).
CAP_MIN, CAP_MAX = 32, 2048
# Sketch rows per launch are chunked so that its [rows, S] buffer stays below this many elements.
SKETCH_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class SelectPlan:
    """Where the fused selection looks, for rows of n_cols values and the kth largest."""
    kth: int  # 1-based rank from the top
    samples: int  # S sampled columns
    top: int  # sorted sample values kept per row (torch.topk)
    j_lo: int  # index into the sorted sample for the bracket's lower end, -1: unbounded
    j_hi: int  # for its upper end, -1: unbounded
    e_lo_at: int  # eps band: column mean of the sorted sample at this index (lower end)
    e_hi_at: int  # (upper end)
    cap: int  # collect buffer per row


def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def select_plan(n_cols: int, kth: int) -> SelectPlan:
    """The sketch size, bracket and band ranks, and buffer size for the kth largest of n_cols.

    With S sampled columns of a row and X = #{sampled >= kth value} ~ Binomial(K, S/N)
    (mean K_s = K S / N): the row's kth value lies below the j-th largest sample value when X >= j and
    at or above it when X < j. So the bracket takes the sample ranks K_s -+ SELECT_SIGMAS sqrt(K_s)
    (+2 below for ties), the band K_s -+ BAND_SIGMAS sqrt(K_s). A rank past the sample is unbounded.
    """
    import math

    s = n_cols if n_cols <= SKETCH_MIN else max(SKETCH_MIN, n_cols // SKETCH_FRACTION)
    ks = kth * s / n_cols
    sd = math.sqrt(ks)
    hi_rank = math.floor(ks - SELECT_SIGMAS * sd)  # 1-based sample ranks
    lo_rank = math.ceil(ks + SELECT_SIGMAS * sd) + 2
    e_hi_rank = max(1, math.floor(ks - BAND_SIGMAS * sd))
    e_lo_rank = min(s, math.ceil(ks + BAND_SIGMAS * sd) + 1)
    j_hi = hi_rank - 1 if hi_rank >= 1 else -1
    j_lo = lo_rank - 1 if lo_rank <= s else -1
    top = min(s, max(lo_rank if j_lo >= 0 else 0, e_lo_rank))
    # expected values collected per row: the bracket's ranks and the band's, scaled to the full row
    span = ((lo_rank if j_lo >= 0 else s) - max(hi_rank, 0)) * n_cols / s
    band = (e_lo_rank - e_hi_rank + 1) * n_cols / s
    cap = min(CAP_MAX, _pow2(int(2 * (span + band)) + 16), _pow2(n_cols + 2))
    return SelectPlan(kth=kth, samples=s, top=top, j_lo=j_lo, j_hi=j_hi, e_lo_at=e_lo_rank - 1,
                      e_hi_at=e_hi_rank - 1, cap=max(CAP_MIN, cap))


SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def tile_config() -> TileConfig:
    """The tiles of every pass. HEXFAST_TILES="BLOCK,WARPS,STAGES" overrides the GPU configuration
    (the tile sweep of bench/_tile_sweep.py; every pass takes the same tiles, so they stay exact)."""
    cfg = INTERPRETER_CONFIG if interpreting() else GPU_CONFIG
    override = os.environ.get("HEXFAST_TILES")
    if override and not interpreting():
        try:
            block, warps, stages = (int(v) for v in override.split(","))
        except ValueError:
            raise ValueError(f"HEXFAST_TILES must be 'BLOCK,WARPS,STAGES' (e.g. 128,8,3), got {override!r}") from None
        cfg = TileConfig(block_m=block, block_n=block, block_d=cfg.block_d, block_dout=cfg.block_dout,
                         num_warps=warps, num_stages=stages, single_k_max=cfg.single_k_max)
    # the candidates' backward streams anchor tiles in the transposed orientation: the same tile
    # shape then computes the same similarities bit for bit
    assert cfg.block_m == cfg.block_n, "HEX tiles must be square"
    return cfg


def check_inputs(name: str, x: torch.Tensor) -> torch.Tensor:
    """Validate one [rows, D] input of the kernel; returns it contiguous."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, D], got shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} needs at least one row and one feature, got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"the Triton HEX kernel supports {', '.join(str(d) for d in SUPPORTED_DTYPES)} inputs, "
            f"got {name}.dtype={x.dtype} (use kernel='torch' for other dtypes)"
        )
    if x.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"the Triton HEX kernel needs CUDA tensors ({name} is on {x.device}); on a machine "
            "without a GPU set TRITON_INTERPRET=1 before importing kernels, or use kernel='torch'"
        )
    return x.contiguous()
