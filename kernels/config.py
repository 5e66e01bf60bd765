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


def feature_blocks(cfg: TileConfig, d: int, half: bool) -> tuple[bool, int, int]:
    """(single_k, BLOCK_D, BLOCK_DOUT) for feature dimension d (tl.dot needs K >= 16).

    Only half-precision inputs take the single-K path on the GPU: the fp32 "ieee" dot runs on FMA
    units, and a whole [64, 128] fp32 K step per tile spills thousands of bytes (ptxas), while
    the K loop of 64 does not.
    """
    if d <= cfg.single_k_max and (half or interpreting()):
        width = max(16, 1 << (d - 1).bit_length())
        return True, width, width
    return False, cfg.block_d, cfg.block_dout

# Thresholds counted per row in one selection pass (each pass narrows a row's interval 16-fold).
SELECT_THRESHOLDS = 16
# Once at most this many values of a row lie in its interval, one pass collects them and a sort
# finishes the selection. Memory: rows x SELECT_CAPACITY fp32, i.e. O(n).
SELECT_CAPACITY = 256

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def tile_config() -> TileConfig:
    return INTERPRETER_CONFIG if interpreting() else GPU_CONFIG


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
