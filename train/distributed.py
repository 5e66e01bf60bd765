"""Process-group helpers that keep multi-process losses equal to the single-process loss.

The rule every method follows (see `train/methods/base.py`): each process's loss L_r satisfies
mean_r L_r = L, the loss of one process on the global batch. Gathers are differentiable and their
backward *sums* the gradients that every process sends back to a tensor's owner, so process r
receives d(sum_r' L_r')/dx_r = W dL/dx_r, and DDP's gradient averaging (divide by W) leaves exactly
dL/dtheta. Two ways to satisfy the rule:
  - a per-row loss: each process averages its own rows against gathered candidates (SimCLR, HEX);
  - a batch-statistics loss (Barlow, VICReg): each process computes the full loss from gathered
    embeddings (the same value everywhere).
Gathering without autograd, or all-reducing a loss term and then dividing by W, gives gradients off
by the world size: the bug other SSL libraries have shipped.

BatchNorm: `AllReduceBatchNorm` normalises with statistics over the global batch (all-reduced sums,
with gradients), like SyncBatchNorm, but also on the CPU (gloo), where SyncBatchNorm refuses to run.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient for this process's slice.

    (torch.distributed.nn.functional.all_gather does the same but is deprecated in favour of a
    private API; this uses only the stable collectives.)
    """

    @staticmethod
    def forward(ctx, x):
        ctx.n = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        r = dist.get_rank()
        return grad[r * ctx.n : (r + 1) * ctx.n]


class _AllReduceWithGrad(torch.autograd.Function):
    """Sum over processes; the backward sums the gradients as well."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def gather(x: Tensor) -> Tensor:
    """cat over processes (rank order) of x [n, ...] -> [W n, ...]; gradients flow back (summed)."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_nograd(x: Tensor) -> Tensor:
    """cat over processes of x (no autograd), e.g. keys entering a queue."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum over processes with autograd (backward sums the gradients too)."""
    if not is_distributed():
        return x
    return _AllReduceWithGrad.apply(x)


@torch.no_grad()
def all_reduce_sum_nograd(x: Tensor) -> Tensor:
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x


def global_mean_nograd(values: Tensor) -> Tensor:
    """Mean of a per-row tensor [n] over all rows of all processes (e.g. the adaptive eps)."""
    values = values.detach()
    if not is_distributed():
        return values.mean()
    total = all_reduce_sum_nograd(torch.stack([values.sum(), values.new_full((), float(values.numel()))]))
    return total[0] / total[1]


def row_offsets(n: int, device) -> Tensor:
    """Global row index of this process's local rows 0..n-1 in a gathered tensor."""
    return rank() * n + torch.arange(n, device=device)


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch: per-channel sums all-reduced (with autograd) in training.

    Equal to BatchNorm on the concatenated batch of all processes (1d: [N, C] or [N, C, L]; 2d:
    [N, C, H, W]). Single-process or eval mode: plain batch norm. Statistics in float32.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input [N, C, ...], got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        count = xf.new_full((1,), float(x.numel() // x.shape[1]))  # filled on the device: no host copy
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
        stats = all_reduce_sum(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * (var.detach() * n / (n - 1).clamp_min(1)))
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d/2d in `module` by AllReduceBatchNorm (weights and buffers kept)."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(module, AllReduceBatchNorm):
        new = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                new.weight.copy_(module.weight)
                new.bias.copy_(module.bias)
            # frozen copies (EMA targets) must stay frozen, or DDP waits for their gradients
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        if module.track_running_stats:
            new.running_mean.copy_(module.running_mean)
            new.running_var.copy_(module.running_var)
            new.num_batches_tracked.copy_(module.num_batches_tracked)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module
