"""Barlow Twins (Zbontar et al. 2021): cross-correlation of the two views towards the identity.

Multi-process: the loss is computed from embeddings gathered over processes (the same value on every
process), so its batch statistics are global. HEX integration (released code, spec §4):
alpha * HEX(z1, z2) + (1 - alpha) * Barlow, alpha = hex.alpha (0.1), tau = hex.temperature (0.1).
The released code weights only its adaptive variant by alpha (fixed/superclass add HEX unweighted);
here every HEX mode uses the alpha weighting.
"""
from __future__ import annotations

from dataclasses import dataclass

from hexfast.losses import barlow_twins

from train import distributed as D
from train.methods.base import Method, MethodParams, StepInput, mlp


@dataclass
class BarlowParams(MethodParams):
    lr: float = 0.3                   # Table 6: LARS, lr 0.3, wd 1e-4
    weight_decay: float = 1e-4
    proj_hidden_dim: int = 2048       # Table 6: 2048-2048
    proj_output_dim: int = 2048
    lamb: float = 0.0051              # off-diagonal weight: solo-learn's default (Table 6 gives none)
    scale_loss: float = 0.1           # Table 6


class Barlow(Method):
    name = "barlow"
    augment = "asymmetric"  # the released/solo-learn configs use asymmetric.yaml (solarisation on view 2)
    Params = BarlowParams
    # released Barlow Twins: alpha * HEX added, HEX from epoch 0, tau = hex.temperature
    hex_combine, hex_warmup, hex_temperature = "add", "off", "hex"

    def __init__(self, params, feat_dim, backbone, hex_term, hex_cfg, kernel="auto"):
        super().__init__(params, feat_dim, backbone, hex_term, hex_cfg, kernel)
        h = params.proj_hidden_dim
        self.projector = mlp([feat_dim, h, h, params.proj_output_dim])

    def loss(self, step: StepInput):
        z1, z2 = (self.projector(f) for f in step.feats)
        base = barlow_twins(D.gather(z1), D.gather(z2), self.p.lamb, self.p.scale_loss)
        logs = {"barlow_loss": base.detach()}
        return self.add_hex(base, logs, z1, z2, step), logs
