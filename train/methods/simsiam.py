"""SimSiam (Chen & He 2021): predictor + stop-gradient, negative cosine between views.

Per-sample loss: each process averages its own rows. HEX integration (ours; the released code has
none, spec §4): alpha * HEX(z1, z2) + (1 - alpha) * SimSiam on the projector outputs, as for Barlow.
"""
from __future__ import annotations

from dataclasses import dataclass

from hexfast.losses import simsiam

from train.methods.base import OPTIMIZERS, Method, MethodParams, StepInput, choice, mlp


@dataclass
class SimSiamParams(MethodParams):
    optimizer: str = choice("sgd", OPTIMIZERS)  # Table 6: SGD, lr 0.5, wd 1e-5
    lr: float = 0.5
    weight_decay: float = 1e-5
    proj_hidden_dim: int = 2048       # Table 6: 2048-2048-512
    proj_output_dim: int = 2048
    pred_hidden_dim: int = 512


class SimSiam(Method):
    name = "simsiam"
    Params = SimSiamParams
    # as Barlow/VICReg: alpha * HEX added, HEX from epoch 0, tau = hex.temperature
    hex_combine, hex_warmup, hex_temperature = "add", "off", "hex"

    def __init__(self, params, feat_dim, backbone, hex_term, hex_cfg, kernel="auto"):
        super().__init__(params, feat_dim, backbone, hex_term, hex_cfg, kernel)
        h, d = params.proj_hidden_dim, params.proj_output_dim
        # solo-learn: bias-free hidden layers, a final BatchNorm without affine on the projector
        self.projector = mlp([feat_dim, h, h, d], last_bn=True, last_affine=False, bias=False)
        self.predictor = mlp([d, params.pred_hidden_dim, d], bias=False)

    def loss(self, step: StepInput):
        z1, z2 = (self.projector(f) for f in step.feats)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        base = (simsiam(p1, z2) + simsiam(p2, z1)) / 2
        logs = {"simsiam_loss": base.detach()}
        return self.add_hex(base, logs, z1, z2, step), logs
