"""SimCLR (Chen et al. 2020): InfoNCE between two views; with HEX the loss itself is HEX.

HEX integration (released code, spec §4): HEX replaces InfoNCE after the warm-up; `--hex none` is
plain InfoNCE (NT-Xent). Both go through the same `HexTerm`, so the multi-process path is shared.
"""
from __future__ import annotations

from dataclasses import dataclass

from train.methods.base import Method, MethodParams, StepInput, mlp


@dataclass
class SimCLRParams(MethodParams):
    lr: float = 0.4                   # Table 6: LARS, lr 0.4, wd 1e-5
    weight_decay: float = 1e-5
    proj_hidden_dim: int = 2048       # Table 6: projector 2048-128
    proj_output_dim: int = 128
    temperature: float = 0.1          # Table 6

    def check(self, cfg) -> None:
        if self.temperature <= 0:
            raise ValueError(f"simclr.temperature must be > 0, got {self.temperature}")


class SimCLR(Method):
    name = "simclr"
    Params = SimCLRParams
    hex_combine = "replace"   # HEX is the loss; its tau is simclr.temperature
    hex_temperature = "method"
    hex_warmup = "infonce"    # released SimCLR: plain InfoNCE while epoch <= warm-up
    always_hex = True         # `--hex none` still uses the HexTerm (as InfoNCE)

    def __init__(self, params, feat_dim, backbone, hex_term, hex_cfg, kernel="auto"):
        super().__init__(params, feat_dim, backbone, hex_term, hex_cfg, kernel)
        # solo-learn's SimCLR projector: Linear-ReLU-Linear, no BatchNorm
        self.projector = mlp([feat_dim, params.proj_hidden_dim, params.proj_output_dim], bn=False)

    def loss(self, step: StepInput):
        z1, z2 = (self.projector(f) for f in step.feats)
        loss, stats = self.hex.square(z1, z2, step.epoch, self.hex_groups(step))
        return loss, {"hex": stats}
