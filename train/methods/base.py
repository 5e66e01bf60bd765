"""What every method shares: its hyperparameter section, the step input, MLP/momentum/queue helpers.

A method is an `nn.Module` holding only what differs (projector, predictor, momentum target, queue,
its loss and its HEX integration). The Lightning module (`train/module.py`) owns the backbone, the
optimiser and the evaluation, and calls:
    loss, logs = method.loss(step)         step: StepInput (views, backbone features, labels, epoch)
    method.after_optimizer_step(step, total_steps)   EMA targets (momentum methods)
Distributed rule (see `train/distributed.py`): the mean over processes of each process's loss must
equal the single-process loss on the global batch; queues enqueue gathered keys in rank order.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from train import distributed as D

OPTIMIZERS = ("lars", "sgd", "adamw")


def choice(default, choices):
    """A config field whose value must be one of `choices` (checked by `train.config.validate`)."""
    return field(default=default, metadata={"choices": tuple(choices)})


@dataclass
class MethodParams:
    """Fields every method has; each method's subclass sets the defaults of supplement Table 6."""

    optimizer: str = choice("lars", OPTIMIZERS)  # lars (solo-learn semantics) | sgd | adamw
    lr: float = 0.4                   # base lr at batch 256 (scaled by batch / 256 when optim.scale_lr)
    weight_decay: float = 1e-5

    def check(self, cfg) -> None:
        """Method-specific range checks; raise ValueError naming the key."""


@dataclass
class StepInput:
    """One training step as a method sees it (local rows of this process).

    views: list of [n, 3, H, W] augmented images; feats: list of [n, F] backbone features (grad);
    fine / coarse: [n] labels (-1 = none); index: [n] dataset indices; epoch: 0-based epoch.
    backbone: the online backbone (momentum methods copy it once).
    """

    views: list
    feats: list
    fine: Tensor
    coarse: Tensor
    index: Tensor
    epoch: int


def mlp(dims: list[int], bn: bool = True, last_bn: bool = False, last_affine: bool = True, bias: bool = True) -> nn.Sequential:
    """Linear(-BN)-ReLU blocks through `dims`, a final Linear (optionally + BN)."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 2):
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
        if bn:
            layers.append(nn.BatchNorm1d(dims[i + 1]))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(dims[-2], dims[-1]))
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1], affine=last_affine))
    return nn.Sequential(*layers)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy for an EMA target (same initial weights, no gradients)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def cosine_momentum(base: float, step: int, total_steps: int, final: float = 1.0) -> float:
    """EMA coefficient rising from `base` to `final` on a cosine over training (BYOL; solo-learn)."""
    progress = min(step, total_steps) / max(total_steps, 1)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, tau: float) -> None:
    """target <- tau target + (1 - tau) online, parameters only (solo-learn's MomentumUpdater: the
    target's BatchNorm statistics are its own, from its own forward passes)."""
    for po, pt in zip(online.parameters(), target.parameters()):
        pt.mul_(tau).add_(po.detach(), alpha=1 - tau)


class Queue(nn.Module):
    """A FIFO of rows [size, D] (+ optional int labels) kept in buffers, so checkpoints carry it.

    `push(x)` writes the rows of ALL processes (gathered, rank order), wrapping around.
    """

    def __init__(self, size: int, dim: int, normalized_random: bool = True):
        super().__init__()
        init = torch.randn(size, dim)
        if normalized_random:
            init = nn.functional.normalize(init, dim=1)
        self.register_buffer("rows", init)
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, x: Tensor, labels: Tensor | None = None) -> None:
        x = D.gather_nograd(x.detach().to(self.rows.dtype))
        if labels is not None:
            labels = D.gather_nograd(labels)
        size, pushed = self.rows.shape[0], x.shape[0]
        start = int(self.ptr) + max(0, pushed - size)  # a push larger than the queue keeps its last rows
        x = x[-size:]
        idx = (start + torch.arange(x.shape[0], device=x.device)) % size
        self.rows[idx] = x
        if labels is not None:
            self.labels[idx] = labels[-size:]
        self.ptr.fill_((int(self.ptr) + pushed) % size)


class Method(nn.Module):
    """Base class: subclasses set `name`, `Params`, `augment` and implement `loss`."""

    name = ""
    Params = MethodParams
    augment = "symmetric"  # augmentation preset of train.data (BYOL-style methods: "asymmetric")

    def __init__(self, params, feat_dim: int, backbone: nn.Module, hex_term, hex_cfg, kernel: str = "auto"):
        super().__init__()
        self.p = params
        self.kernel = kernel     # for the method's own contrastive terms (NNCLR baseline)
        self.hex = hex_term      # train.hexterm.HexTerm or None (the method's plain loss)
        self.hex_cfg = hex_cfg   # the config's `hex` section (alpha, scales)

    def loss(self, step: StepInput) -> tuple[Tensor, dict]:
        raise NotImplementedError

    def after_optimizer_step(self, global_step: int, total_steps: int, backbone: nn.Module) -> None:
        """Called after every optimizer step (EMA targets)."""

    def hex_groups(self, step: StepInput):
        """Coarse labels when the superclass rule is active."""
        return step.coarse

    def add_hex(self, loss: Tensor, logs: dict, z1: Tensor, z2: Tensor, step: StepInput, scale: float = 1.0):
        """alpha * scale * HEX(z1, z2) + (1 - alpha) * loss, the integration for methods whose
        released code has no contrastive term (Barlow, VICReg, BYOL, SimSiam; spec §4)."""
        if self.hex is None:
            return loss
        h, stats = self.hex.square(z1, z2, step.epoch, self.hex_groups(step))
        logs["hex_loss"] = h.detach()
        logs["hex"] = stats
        alpha = self.hex_cfg.alpha
        return alpha * scale * h + (1 - alpha) * loss
