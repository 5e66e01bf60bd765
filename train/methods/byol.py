"""BYOL (Grill et al. 2020): online predictor regresses an EMA target's projection of the other view.

Per-sample loss (each process averages its rows). The EMA coefficient rises from `momentum` to 1 on a
cosine over training (a pure function of the step, so resume is exact). HEX integration (ours; the
released code has none, spec §4): alpha * HEX(z1, z2) + (1 - alpha) * BYOL on the online projector
outputs, as for Barlow.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from hexfast.losses import byol

from train.methods.base import Method, MethodParams, StepInput, cosine_momentum, ema_update, mlp, momentum_copy


@dataclass
class BYOLParams(MethodParams):
    lr: float = 1.0                   # Table 6: LARS, lr 1.0
    weight_decay: float = 1e-5
    proj_hidden_dim: int = 4096       # Table 6: 4096-256-4096
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096
    momentum: float = 0.99            # Table 6: base EMA coefficient (-> 1.0 on a cosine)


class BYOL(Method):
    name = "byol"
    Params = BYOLParams
    # as Barlow/VICReg: alpha * HEX added, HEX from epoch 0, tau = hex.temperature
    hex_combine, hex_warmup, hex_temperature = "add", "off", "hex"
    augment = "asymmetric"

    def __init__(self, params, feat_dim, backbone, hex_term, hex_cfg, kernel="auto"):
        super().__init__(params, feat_dim, backbone, hex_term, hex_cfg, kernel)
        h, d = params.proj_hidden_dim, params.proj_output_dim
        self.projector = mlp([feat_dim, h, d])
        self.predictor = mlp([d, params.pred_hidden_dim, d])
        self.momentum_backbone = momentum_copy(backbone)
        self.momentum_projector = momentum_copy(self.projector)

    def loss(self, step: StepInput):
        z1, z2 = (self.projector(f) for f in step.feats)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1, t2 = (self.momentum_projector(self.momentum_backbone(v)) for v in step.views)
        base = byol(p1, t2) + byol(p2, t1)  # solo-learn sums the two directions
        logs = {"byol_loss": base.detach()}
        return self.add_hex(base, logs, z1, z2, step), logs

    def after_optimizer_step(self, global_step, total_steps, backbone):
        tau = cosine_momentum(self.p.momentum, global_step, total_steps)
        ema_update(backbone, self.momentum_backbone, tau)
        ema_update(self.projector, self.momentum_projector, tau)
