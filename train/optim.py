"""Optimisers and the learning-rate schedule.

LARS follows solo-learn / lightly semantics (You et al. 2017 with the SimCLR exclusions): SGD with
momentum where each parameter's step is scaled by the trust ratio eta ||w|| / (||g|| + wd ||w||);
biases and normalisation parameters (1-D tensors) get neither the adaptation nor weight decay, and
neither do parameter groups marked `lars_exclude` (the online linear probe). It is 40 lines, tested
against a hand-computed step, rather than a dependency for one class.
"""
from __future__ import annotations

import math

import torch
from torch.optim import Optimizer


class LARS(Optimizer):
    """LARS. Group options: lr, momentum, weight_decay, eta, clip_lr (LARC), lars_exclude."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02,
                 clip_lr: bool = False, exclude_bias_n_norm: bool = True):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip_lr=clip_lr,
                        lars_exclude=False, exclude_bias_n_norm=exclude_bias_n_norm)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                plain = group["lars_exclude"] or (group["exclude_bias_n_norm"] and p.ndim == 1)
                if not plain:
                    # solo-learn: decay and trust ratio only where both norms are non-zero
                    wd = group["weight_decay"]
                    p_norm, g_norm = torch.norm(p), torch.norm(d_p)
                    ratio = group["eta"] * p_norm / (g_norm + wd * p_norm)
                    if group["clip_lr"]:
                        ratio = torch.clamp(ratio / group["lr"], max=1.0)
                    ok = (p_norm > 0) & (g_norm > 0)
                    d_p = torch.where(ok, (d_p + wd * p) * ratio, d_p)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d_p.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d_p)
                p.add_(buf, alpha=-group["lr"])
        return loss


def build_optimizer(name: str, groups: list[dict], *, lr: float, weight_decay: float, momentum: float,
                    lars_eta: float, lars_clip: bool, betas=(0.9, 0.999)) -> Optimizer:
    """`name` in (lars, sgd, adamw) over parameter `groups` (dicts with params and overrides)."""
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=lars_eta, clip_lr=lars_clip)
    groups = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    raise ValueError(f"unknown optimizer {name!r}; valid: lars, sgd, adamw")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, start_factor: float = 0.0,
                  min_factor: float = 0.0) -> float:
    """lr multiplier: linear from start_factor to 1 over warmup_steps, then cosine to min_factor."""
    if warmup_steps > 0 and step < warmup_steps:
        return start_factor + (1 - start_factor) * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
