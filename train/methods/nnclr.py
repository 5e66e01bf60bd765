"""NNCLR (Dwibedi et al. 2021): the nearest neighbour of z1 in a support queue predicts p2.

Standard loss (solo-learn): (CE(nn1 . p2^T) + CE(nn2 . p1^T)) / 2, one direction each, p gathered
over processes. HEX integration (released code, spec §4): each half becomes the two-view HEX of
cat[nn, p] (nn_i's positive is p_i and back), symmetrised; the adaptive warm-up uses the raw-cosine
eps 0.9 instead of InfoNCE.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hexfast.hex_loss import hex_rect_loss

from train import distributed as D
from train.methods.base import Method, MethodParams, Queue, StepInput, mlp


@dataclass
class NNCLRParams(MethodParams):
    lr: float = 1.0                   # Table 6: LARS, lr 1.0
    weight_decay: float = 1e-5
    proj_hidden_dim: int = 2048       # Table 6: 2048-4096-256
    pred_hidden_dim: int = 4096
    proj_output_dim: int = 256
    queue_size: int = 98304           # Table 6 support set
    temperature: float = 0.2          # Table 6 (CIFAR)

    def check(self, cfg) -> None:
        if self.queue_size < 1 or self.temperature <= 0:
            raise ValueError("nnclr.queue_size must be >= 1 and nnclr.temperature > 0")


def contrastive_rect(anchors, candidates_local, temperature, kernel):
    """CE of anchors [n, D] against candidates gathered over processes, row i's positive being
    candidate i of this process: solo-learn's `nnclr_loss_func` with gather(p), as HEX rule none."""
    cands = D.gather(candidates_local)
    pos = D.row_offsets(anchors.shape[0], anchors.device)
    return hex_rect_loss(anchors, cands, pos, torch.full_like(pos, -1), temperature=temperature, rule="none",
                         hierarchy_weight=1.0, positive_in_denominator=True, kernel=kernel)


class NNCLR(Method):
    name = "nnclr"
    augment = "asymmetric"  # the released/solo-learn configs use asymmetric.yaml (solarisation on view 2)
    Params = NNCLRParams
    hex_combine = "replace"   # each half of the loss becomes HEX, with nnclr.temperature
    hex_temperature = "method"
    hex_warmup = "cosine"     # released: the raw-cosine eps 0.9 during the warm-up

    def __init__(self, params, feat_dim, backbone, hex_term, hex_cfg, kernel="auto"):
        super().__init__(params, feat_dim, backbone, hex_term, hex_cfg, kernel)
        d = params.proj_output_dim
        self.projector = mlp([feat_dim, params.proj_hidden_dim, params.proj_hidden_dim, d], last_bn=True)
        self.predictor = mlp([d, params.pred_hidden_dim, d])
        self.queue = Queue(params.queue_size, d)

    @torch.no_grad()
    def find_nn(self, z):
        idx = (F.normalize(z, dim=1) @ self.queue.rows.T).argmax(dim=1)
        return self.queue.rows[idx], idx

    def pair_loss(self, nn, p, step):
        if self.hex is None:
            return contrastive_rect(nn, p, self.p.temperature, self.kernel), None
        return self.hex.square(nn, p, step.epoch, self.hex_groups(step))

    def loss(self, step: StepInput):
        z1, z2 = (self.projector(f) for f in step.feats)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        nn1, idx1 = self.find_nn(z1)
        nn2, _ = self.find_nn(z2)
        l1, stats = self.pair_loss(nn1, p2, step)
        l2, _ = self.pair_loss(nn2, p1, step)
        nn_acc = (self.queue.labels[idx1] == step.fine).float().mean()
        self.queue.stage(F.normalize(z1.detach(), dim=1), step.fine)
        logs = {"nn_acc": nn_acc}
        if stats is not None:
            logs["hex"] = stats
        return (l1 + l2) / 2, logs
