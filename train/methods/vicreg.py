"""VICReg (Bardes et al. 2022): invariance + variance + covariance of the two views' embeddings.

Multi-process: computed from embeddings gathered over processes (same value everywhere).
HEX integration (released code, spec §4): alpha * 5 * HEX(z1, z2) + (1 - alpha) * VICReg
("scaled by 5", hex.vicreg_scale).
"""
from __future__ import annotations

from dataclasses import dataclass

from hexfast.losses import vicreg

from train import distributed as D
from train.methods.base import Method, MethodParams, StepInput, mlp


@dataclass
class VICRegParams(MethodParams):
    lr: float = 0.3                   # Table 6: LARS, lr 0.3, wd 1e-4
    weight_decay: float = 1e-4
    proj_hidden_dim: int = 2048       # Table 6: 2048-2048
    proj_output_dim: int = 2048
    sim_loss_weight: float = 25.0     # Table 6: 25 / 25 / 1
    var_loss_weight: float = 25.0
    cov_loss_weight: float = 1.0


class VICReg(Method):
    name = "vicreg"
    Params = VICRegParams
    # released VICReg: 5 * alpha * HEX added, HEX from epoch 0, tau = hex.temperature
    hex_combine, hex_warmup, hex_temperature = "add", "off", "hex"

    def __init__(self, params, feat_dim, backbone, hex_term, hex_cfg, kernel="auto"):
        super().__init__(params, feat_dim, backbone, hex_term, hex_cfg, kernel)
        h = params.proj_hidden_dim
        self.projector = mlp([feat_dim, h, h, params.proj_output_dim])

    def loss(self, step: StepInput):
        z1, z2 = (self.projector(f) for f in step.feats)
        p = self.p
        base = vicreg(D.gather(z1), D.gather(z2), p.sim_loss_weight, p.var_loss_weight, p.cov_loss_weight)
        logs = {"vicreg_loss": base.detach()}
        return self.add_hex(base, logs, z1, z2, step, scale=self.hex_cfg.vicreg_scale), logs
