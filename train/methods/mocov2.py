"""MoCo v2 (Chen et al. 2020; solo-learn's mocov2plus): queries against an EMA key and a key queue.

Loss: (CE(q1; k2, queue2) + CE(q2; k1, queue1)) / 2, one queue per view (solo-learn); per-sample, so
each process averages its own rows, and the queues take the keys of all processes (rank order).
HEX integration (ours; the released code has none, spec §4): each query's row [q.k, q.queue] is
split by the same threshold rule (the adaptive eps over all rows of all processes), its positive
kept, hierarchical queue negatives weighted by w. For the superclass rule the queues also keep the
coarse labels of their keys (-1 for the random initial rows: never hierarchical).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hexfast.losses import mocov2

from train.methods.base import (OPTIMIZERS, Method, MethodParams, Queue, StepInput, choice, cosine_momentum,
                                ema_update, mlp, momentum_copy)


@dataclass
class MoCoV2Params(MethodParams):
    optimizer: str = choice("sgd", OPTIMIZERS)  # Table 6: SGD, lr 0.3, wd 1e-4
    lr: float = 0.3
    weight_decay: float = 1e-4
    proj_hidden_dim: int = 2048       # Table 6: 2048-256
    proj_output_dim: int = 256
    queue_size: int = 65536           # Table 6
    temperature: float = 0.2          # Table 6
    momentum: float = 0.99            # Table 6: base EMA coefficient
    final_momentum: float = 0.999     # ... rising on a cosine to this (solo-learn's mocov2plus CIFAR config)

    def check(self, cfg) -> None:
        if self.queue_size < 1 or self.temperature <= 0:
            raise ValueError("mocov2.queue_size must be >= 1 and mocov2.temperature > 0")
        if not 0.0 <= self.momentum <= self.final_momentum <= 1.0:
            raise ValueError("mocov2 needs 0 <= momentum <= final_momentum <= 1")


class MoCoV2(Method):
    name = "mocov2"
    Params = MoCoV2Params
    hex_combine = "replace"   # HEX splits each query's InfoNCE row; mocov2.temperature
    hex_temperature = "method"
    hex_warmup = "infonce"    # as SimCLR: the plain MoCo loss while epoch <= warm-up

    def __init__(self, params, feat_dim, backbone, hex_term, hex_cfg, kernel="auto"):
        super().__init__(params, feat_dim, backbone, hex_term, hex_cfg, kernel)
        h, d = params.proj_hidden_dim, params.proj_output_dim
        self.projector = mlp([feat_dim, h, d], bn=False)
        self.momentum_backbone = momentum_copy(backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.queues = torch.nn.ModuleList([Queue(params.queue_size, d), Queue(params.queue_size, d)])

    def one_side(self, q, k, queue: Queue, step):
        rows = queue.rows  # unchanged until after the backward (Queue.stage / commit)
        if self.hex is None:
            return mocov2(q, k, rows, self.p.temperature), None
        with torch.autocast(device_type=q.device.type, enabled=False):  # fp32 similarities, as the reference
            qn, kn = F.normalize(q.float(), dim=1), F.normalize(k.detach().float(), dim=1)
            s = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ rows.float().T], dim=1)
        cand = torch.cat([queue.labels.new_full((1,), -1), queue.labels.clone()])
        return self.hex.rows(s, step.epoch, step.coarse, cand)

    def loss(self, step: StepInput):
        q1, q2 = (self.projector(f) for f in step.feats)
        with torch.no_grad():
            k1, k2 = (F.normalize(self.momentum_projector(self.momentum_backbone(v)), dim=1) for v in step.views)
        l1, stats = self.one_side(q1, k2, self.queues[1], step)
        l2, _ = self.one_side(q2, k1, self.queues[0], step)
        self.queues[0].stage(k1, step.coarse)
        self.queues[1].stage(k2, step.coarse)
        logs = {} if stats is None else {"hex": stats}
        return (l1 + l2) / 2, logs

    def after_optimizer_step(self, global_step, total_steps, backbone):
        tau = cosine_momentum(self.p.momentum, global_step, total_steps, final=self.p.final_momentum)
        ema_update(backbone, self.momentum_backbone, tau)
        ema_update(self.projector, self.momentum_projector, tau)
