"""What every method shares: its policy and hyperparameter section, the step input, MLP/momentum/queue helpers.

A method is an `nn.Module` holding only what differs (projector, predictor, momentum target, queue,
its loss and its HEX integration); its class attributes say how the trainer treats it (see `Method`).
The Lightning module (`train/module.py`) owns the backbone, the optimiser and the evaluation, and calls:
    loss, logs = method.loss(step)         step: StepInput (views, backbone features, labels, epoch)
    method.commit_queues()                 after the backward: the queue pushes the loss staged
    method.after_optimizer_step(global_step, total_steps, backbone)   EMA targets (momentum methods)
    method.param_groups()                  parameter groups with their own lr (default: none)
Adding a method: one file here with its `Method` subclass and `MethodParams` section, and one line in
`train/methods/__init__.py`'s registry; the config section `<name>.*`, `--method <name>` and the HEX
wiring follow from the class.
Distributed rule (see `train/distributed.py`): the mean over processes of each process's loss must
equal the single-process loss on the global batch; queues enqueue gathered keys in rank order.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from train import distributed as D

OPTIMIZERS = ("lars", "sgd", "adamw")
HEX_COMBINES = ("replace", "add")     # HEX replaces the method's contrastive loss | adds alpha * HEX
HEX_WARMUPS = ("infonce", "cosine", "off")  # the adaptive rule's warm-up (hexfast.thresholds.WARMUPS)
HEX_TEMPERATURES = ("method", "hex")  # HEX's tau: the method's own `temperature` | the config's hex.temperature


def choice(default, choices):
    """A config field whose value must be one of `choices` (checked by `train.config.validate`)."""
    return field(default=default, metadata={"choices": tuple(choices)})


def ranged(default, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False):
    """A numeric Params field with its valid range [lo, hi] (None = unbounded; open ends optional),
    checked by `train.config.validate` like every numeric field. Fields named as in
    train.config.METHOD_RANGES (lr, temperature, queue_size, ...) need no declaration."""
    return field(default=default, metadata={"range": dict(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)})


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


def mlp(dims: list[int], bn: bool = True, last_bn: bool = False, last_affine: bool = True,
        bias: bool = True) -> nn.Sequential:
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

    `push(x)` writes the rows of ALL processes (gathered, rank order), wrapping around. The write
    position stays a device tensor, so a push never waits for the device.

    A method's loss `stage`s its pushes and the trainer `commit`s them after the backward (SSLModule
    does, and before the next loss): the loss reads the queue, and its backward may read it again --
    a compiled step re-reads a graph input where eager autograd saved a copy -- so the queue must
    not change between a loss and its backward. Each loss sees the queue as it was before its batch.
    """

    def __init__(self, size: int, dim: int, normalized_random: bool = True):
        super().__init__()
        init = torch.randn(size, dim)
        if normalized_random:
            init = nn.functional.normalize(init, dim=1)
        self.register_buffer("rows", init)
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self._staged: list = []

    def stage(self, x: Tensor, labels: Tensor | None = None) -> None:
        """Push x (and labels) at the next `commit()`."""
        self._staged.append((x.detach(), labels))

    def commit(self) -> None:
        staged, self._staged = self._staged, []
        for x, labels in staged:
            self.push(x, labels)

    @torch.no_grad()
    def push(self, x: Tensor, labels: Tensor | None = None) -> None:
        x = D.gather_nograd(x.detach().to(self.rows.dtype))
        if labels is not None:
            labels = D.gather_nograd(labels)
        size, pushed = self.rows.shape[0], x.shape[0]
        start = self.ptr + max(0, pushed - size)  # a push larger than the queue keeps its last rows
        x = x[-size:]
        idx = (start + torch.arange(x.shape[0], device=x.device)) % size
        self.rows.index_copy_(0, idx, x)
        if labels is not None:
            self.labels.index_copy_(0, idx, labels[-size:].to(self.labels.dtype))
        self.ptr.copy_((self.ptr + pushed) % size)


class Method(nn.Module):
    """Base class: subclasses set `name`, `Params`, the policy attributes below, and implement `loss`.

    Policy (class attributes; the trainer reads nothing else about a method):
      augment          augmentation preset of train.data ("symmetric"; BYOL-style methods "asymmetric")
      hex_combine      "replace": HEX replaces the method's contrastive loss (SimCLR, NNCLR, All4One,
                       MoCo v2); "add": the loss becomes alpha * HEX + (1 - alpha) * loss (`add_hex`)
      hex_warmup       the adaptive rule's warm-up under hex.warmup=auto (spec §3): "infonce",
                       "cosine" (the raw-cosine eps hex.warmup_eps) or "off" (HEX from epoch 0)
      hex_temperature  "method": HEX uses the method's own `temperature` field; "hex": hex.temperature
      always_hex       the method's plain loss is a HexTerm too (`--hex none` = InfoNCE through it)
    The defaults suit a non-contrastive method (add, no warm-up, hex.temperature).
    """

    name = ""
    Params = MethodParams
    augment = "symmetric"
    hex_combine = "add"
    hex_warmup = "off"
    hex_temperature = "hex"
    always_hex = False

    def __init__(self, params, feat_dim: int, backbone: nn.Module, hex_term, hex_cfg, kernel: str = "auto"):
        super().__init__()
        self.p = params
        self.kernel = kernel     # for the method's own contrastive terms (NNCLR baseline)
        self.hex = hex_term      # train.hexterm.HexTerm or None (the method's plain loss)
        self.hex_cfg = hex_cfg   # the config's `hex` section (alpha, scales)

    @classmethod
    def check_policy(cls) -> None:
        """The class attributes hold valid values (run for every registered method)."""
        for attr, valid in (("hex_combine", HEX_COMBINES), ("hex_warmup", HEX_WARMUPS),
                            ("hex_temperature", HEX_TEMPERATURES)):
            if getattr(cls, attr) not in valid:
                raise ValueError(f"{cls.__name__}.{attr} = {getattr(cls, attr)!r}; valid: {', '.join(valid)}")
        if not cls.name or not isinstance(cls.name, str):
            raise ValueError(f"{cls.__name__}.name must be the method's config name")
        if cls.hex_temperature == "method" and "temperature" not in {f.name for f in dataclasses.fields(cls.Params)}:
            raise ValueError(f"{cls.__name__}.hex_temperature = 'method' needs a `temperature` field in "
                             f"{cls.Params.__name__}")

    @classmethod
    def hex_tau(cls, params, hex_cfg) -> float:
        """The temperature of this method's HEX term (params: its section; hex_cfg: the `hex` section)."""
        return params.temperature if cls.hex_temperature == "method" else hex_cfg.temperature

    def param_groups(self) -> list[dict]:
        """Parameter groups with their own peak lr: [{"params": [...], "lr": float}] (default none)."""
        return []

    def loss(self, step: StepInput) -> tuple[Tensor, dict]:
        raise NotImplementedError

    def after_optimizer_step(self, global_step: int, total_steps: int, backbone: nn.Module) -> None:
        """Called after every optimizer step (EMA targets)."""

    def commit_queues(self) -> None:
        """Apply the queue pushes the last loss staged (see `Queue`); the trainer calls it after the
        backward."""
        for m in self.modules():
            if isinstance(m, Queue):
                m.commit()

    def hex_groups(self, step: StepInput):
        """Coarse labels when the superclass rule is active."""
        return step.coarse

    def add_hex(self, loss: Tensor, logs: dict, z1: Tensor, z2: Tensor, step: StepInput, scale: float = 1.0):
        """alpha * scale * HEX(z1, z2) + (1 - alpha) * loss: hex_combine = "add", the integration for
        methods whose released code has no contrastive term (Barlow, VICReg, BYOL, SimSiam; spec §4)."""
        if self.hex is None:
            return loss
        h, stats = self.hex.square(z1, z2, step.epoch, self.hex_groups(step))
        logs["hex_loss"] = h.detach()
        logs["hex"] = stats
        alpha = self.hex_cfg.alpha
        return alpha * scale * h + (1 - alpha) * loss
