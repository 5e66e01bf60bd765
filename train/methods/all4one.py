"""All4One (Estepa et al. 2023): NNCLR + an attention-NNCLR term over the k nearest neighbours
(a transformer reads the NN sequence) + a feature-redundancy term, with a momentum target.

Loss (released code, solo-learn's `all4one.py`): 0.5 att + 0.5 nnclr + 0.5 feature, where
    nnclr   = (CE(nn1[:, 0] . p2) + CE(nn2[:, 0] . p1)) / 2            tau = temperature
    att     = (CE(rich1 . strange2) + CE(rich2 . strange1)) / 2         tau = 0.1
    feature = 10 (0.5 sqrt(mean (diag C - 1)^2) + 0.5 sqrt(mean offdiag C^2)), C = cross-correlation
              of the momentum and online projections normalised over the batch, both directions.
rich_i = transformer(pos_enc(NN_k(zm_i)))[0]; strange_i = transformer(pos_enc([p2_i; NN_{k-1}(zm_i)]))[0];
NNs are looked up with the momentum projections in a queue of momentum projections.
HEX integration (released code, spec §4), all4one.hex_variant:
    both      the nnclr and attention terms become two-view HEX of cat[nn, p] / cat[rich, strange]
              (first nearest neighbour), the warm-up using eps = 0.9 (released type 'adaptive')
    combined  nnclr = standard nnclr + its HEX (summed), attention term standard (released type
              'combined_adaptive')
Multi-process: per-row terms average local rows; the feature term uses gathered projections.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from train import distributed as D
from train.hexterm import HexTerm
from train.methods.base import (Method, MethodParams, Queue, StepInput, choice, cosine_momentum, ema_update, mlp,
                                momentum_copy)
from train.methods.nnclr import contrastive_rect

NUM_NEIGHBOURS = 5      # the released code's sequence length (topk 5, PositionalEncodingPermute1D(5))
ATT_TEMPERATURE = 0.1   # the released attention term uses nnclr_loss_func's default temperature


@dataclass
class All4OneParams(MethodParams):
    lr: float = 1.0                   # Table 6: as NNCLR (LARS, lr 1.0) plus momentum 0.99
    weight_decay: float = 1e-5
    proj_hidden_dim: int = 2048
    pred_hidden_dim: int = 4096
    proj_output_dim: int = 256        # must be divisible by transformer_heads
    queue_size: int = 98304
    temperature: float = 0.2
    momentum: float = 0.99
    transformer_layers: int = 3       # released: 3 layers, 8 heads, feed-forward 2 d, dropout 0.1
    transformer_heads: int = 8
    transformer_dropout: float = 0.1
    transformer_lr: float = 0.1       # released: the transformer's own lr (not batch-scaled)
    hex_variant: str = choice("both", ("both", "combined"))  # see the module docstring

    def check(self, cfg) -> None:
        if self.proj_output_dim % self.transformer_heads:
            raise ValueError(f"all4one.proj_output_dim ({self.proj_output_dim}) must be divisible by "
                             f"all4one.transformer_heads ({self.transformer_heads})")
        if self.queue_size < NUM_NEIGHBOURS or self.temperature <= 0:
            raise ValueError(f"all4one.queue_size must be >= {NUM_NEIGHBOURS} and all4one.temperature > 0")


def sequence_encoding(length: int, dim: int) -> torch.Tensor:
    """[length, dim] additive encoding equal to the released Summer(PositionalEncodingPermute1D(5)):
    sinusoids along the feature axis with `length` channels, transposed onto the sequence."""
    channels = 2 * ((length + 1) // 2)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, channels, 2).float() / channels))
    angle = torch.arange(dim).float()[:, None] * inv_freq[None, :]
    emb = torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)[:, :length]  # [dim, length]
    return emb.T.contiguous()


def off_diagonal(x):
    n = x.shape[0]
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


class All4One(Method):
    name = "all4one"
    augment = "asymmetric"  # the released/solo-learn configs use asymmetric.yaml (solarisation on view 2)
    Params = All4OneParams
    hex_combine = "replace"   # the nnclr and attention terms become HEX; all4one.temperature for nnclr
    hex_temperature = "method"
    hex_warmup = "cosine"     # released: the raw-cosine eps 0.9 during the warm-up

    def __init__(self, params, feat_dim, backbone, hex_term, hex_cfg, kernel="auto"):
        super().__init__(params, feat_dim, backbone, hex_term, hex_cfg, kernel)
        h, d = params.proj_hidden_dim, params.proj_output_dim
        self.projector = mlp([feat_dim, h, h, d], last_bn=True)
        self.predictor = mlp([d, params.pred_hidden_dim, d])
        self.predictor2 = mlp([d, params.pred_hidden_dim, d])
        layer = nn.TransformerEncoderLayer(d_model=d, nhead=params.transformer_heads, dim_feedforward=2 * d,
                                           dropout=params.transformer_dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers=params.transformer_layers,
                                                 enable_nested_tensor=False)
        self.register_buffer("pos_enc", sequence_encoding(NUM_NEIGHBOURS, d), persistent=False)
        self.momentum_backbone = momentum_copy(backbone)
        self.momentum_projector = momentum_copy(self.projector)
        self.queue = Queue(params.queue_size, d)
        # the attention term has its own temperature but the same threshold schedule
        self.att_hex = None if hex_term is None else HexTerm(hex_term.schedule, ATT_TEMPERATURE, hex_term.kernel)

    def param_groups(self):
        """The transformer trains with its own peak lr (released code), on the same warm-up + cosine
        schedule as the rest (as solo-learn's scheduler does for every group)."""
        return [{"params": list(self.transformer.parameters()), "lr": self.p.transformer_lr}]

    @torch.no_grad()
    def find_nn(self, zm):
        sim = zm @ self.queue.rows.T
        idx = sim.topk(NUM_NEIGHBOURS, dim=1).indices
        return self.queue.rows[idx], idx[:, 0]

    def term(self, hex_term, a, b, tau, step):
        if hex_term is None:
            return contrastive_rect(a, b, tau, self.kernel), None
        return hex_term.square(a, b, step.epoch, self.hex_groups(step))

    def loss(self, step: StepInput):
        z1, z2 = (self.projector(f) for f in step.feats)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        q1, q2 = self.predictor2(z1), self.predictor2(z2)
        with torch.no_grad():
            m1, m2 = (F.normalize(self.momentum_projector(self.momentum_backbone(v)), dim=-1) for v in step.views)
        nn1, idx1 = self.find_nn(m1)
        nn2, _ = self.find_nn(m2)
        k = NUM_NEIGHBOURS
        rich1 = self.transformer(nn1 + self.pos_enc)[:, 0]
        rich2 = self.transformer(nn2 + self.pos_enc)[:, 0]
        strange1 = self.transformer(torch.cat([q1[:, None], nn1], 1)[:, :k] + self.pos_enc)[:, 0]
        strange2 = self.transformer(torch.cat([q2[:, None], nn2], 1)[:, :k] + self.pos_enc)[:, 0]

        # feature term on the global batch (normalised over the batch dimension)
        gm1, gm2, g1, g2 = (F.normalize(D.gather(x), dim=0) for x in (m1, m2, z1, z2))
        c1, c2 = gm1.T @ g2, gm2.T @ g1
        on = ((torch.diagonal(c1).add(-1).pow(2).mean() + torch.diagonal(c2).add(-1).pow(2).mean()) * 0.5).sqrt()
        off = ((off_diagonal(c1).pow(2).mean() + off_diagonal(c2).pow(2).mean()) * 0.5).sqrt()
        feature = (0.5 * on + 0.5 * off) * 10

        n1, stats = self.term(self.hex, nn1[:, 0], p2, self.p.temperature, step)
        n2, _ = self.term(self.hex, nn2[:, 0], p1, self.p.temperature, step)
        combined = self.hex is not None and self.p.hex_variant == "combined"
        att_hex = None if combined else self.att_hex
        a1, _ = self.term(att_hex, rich1, strange2, ATT_TEMPERATURE, step)
        a2, _ = self.term(att_hex, rich2, strange1, ATT_TEMPERATURE, step)
        nnclr, att = (n1 + n2) / 2, (a1 + a2) / 2
        if combined:  # the standard nnclr term as well, summed with its HEX
            s1, _ = self.term(None, nn1[:, 0], p2, self.p.temperature, step)
            s2, _ = self.term(None, nn2[:, 0], p1, self.p.temperature, step)
            nnclr = nnclr + (s1 + s2) / 2
        nn_acc = (self.queue.labels[idx1] == step.fine).float().mean()
        self.queue.stage(m1, step.fine)
        logs = {"nnclr_loss": nnclr.detach(), "att_loss": att.detach(), "feature_loss": feature.detach(),
                "nn_acc": nn_acc}
        if stats is not None:
            logs["hex"] = stats
        return 0.5 * att + 0.5 * nnclr + 0.5 * feature, logs

    def after_optimizer_step(self, global_step, total_steps, backbone):
        tau = cosine_momentum(self.p.momentum, global_step, total_steps)
        ema_update(backbone, self.momentum_backbone, tau)
        ema_update(self.projector, self.momentum_projector, tau)
