"""What every launcher needs about its inputs: contiguous tensors, row norms, constexprs.

The norms are computed here once in fp32 (O(n) memory): max(|x|, 1e-12), the clamp of F.normalize.
The kernels apply them inside each tile (kernels/_tiles.py); no normalised copy is written.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.config import TileConfig, check_inputs, feature_blocks, interpreting, tile_config

NORM_EPS = 1e-12  # F.normalize's default clamp of the norm


@dataclass
class Prepared:
    a: torch.Tensor  # anchors [M, D], contiguous, input dtype
    c: torch.Tensor  # candidates [N, D]
    ra: torch.Tensor  # [M] fp32 row scale the kernels take: norms (norm_div) or inverse norms
    rc: torch.Tensor  # [N] fp32
    inv_a: torch.Tensor  # [M] fp32 inverse norms (for the normalisation's backward)
    inv_c: torch.Tensor  # [N]
    norm_div: bool  # fp32 inputs: tiles divided by the norms on load, as F.normalize does
    cfg: TileConfig
    upcast: bool  # upcast loaded tiles to fp32 (interpreter: bf16/fp16 are computed wrongly there)
    precision: str  # tl.dot input precision

    @property
    def m(self) -> int:
        return self.a.shape[0]

    @property
    def n(self) -> int:
        return self.c.shape[0]

    @property
    def d(self) -> int:
        return self.a.shape[1]

    def sim_args(self):
        """The leading arguments every similarity kernel takes."""
        return (self.a, self.c, self.ra, self.rc)

    @property
    def blocks(self) -> tuple[bool, int, int]:
        """(single_k, BLOCK_D, BLOCK_DOUT) for this D."""
        return feature_blocks(self.cfg, self.d, half=not self.norm_div)

    def sim_meta(self):
        cfg = self.cfg
        single_k, block_d, _ = self.blocks
        return dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d, SINGLE_K=single_k,
                    NORM_DIV=self.norm_div, UPCAST=self.upcast, PRECISION=self.precision,
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def norms(x: torch.Tensor) -> torch.Tensor:
    """[rows] fp32 max(|x|, 1e-12): the same op (and bits) as F.normalize's denominator."""
    return torch.linalg.vector_norm(x.float(), dim=1).clamp_min(NORM_EPS)


def prepare(anchors: torch.Tensor, candidates: torch.Tensor) -> Prepared:
    same = anchors is candidates
    a = check_inputs("anchors", anchors)
    c = a if same else check_inputs("candidates", candidates)
    if a.shape[1] != c.shape[1]:
        raise ValueError(f"anchors and candidates need the same D, got {a.shape[1]} and {c.shape[1]}")
    if a.dtype != c.dtype:
        raise TypeError(f"anchors and candidates need one dtype, got {a.dtype} and {c.dtype}")
    if a.device != c.device:
        raise ValueError(f"anchors and candidates must be on one device, got {a.device} and {c.device}")
    na = norms(a)
    nc = na if same else norms(c)
    inv_a = na.reciprocal()
    inv_c = inv_a if same else nc.reciprocal()
    norm_div = a.dtype == torch.float32
    # fp32 inputs: "ieee" keeps the similarities (and so the masks near the threshold) at fp32
    # accuracy; tf32 would move s by ~1e-3 and flip many decisions against the reference.
    precision = "ieee" if a.dtype == torch.float32 else "tf32"
    ra, rc = (na, nc) if norm_div else (inv_a, inv_c)
    return Prepared(a, c, ra, rc, inv_a, inv_c, norm_div, tile_config(), upcast=interpreting(),
                    precision=precision)
