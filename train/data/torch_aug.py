"""Batched augmentation in PyTorch (the torchvision backend), on whatever device the tensors live.

Geometry: one batched call crops, resizes and flips a whole batch (``grid_sample`` when no crop
is shrunk, else ``torchvision.ops.roi_align``, which box-averages like an antialiased resize). Colour: torchvision's
ColorJitter maths applied per sample in a fixed order (brightness, contrast, saturation, hue), with
the hue rotated in YIQ space as DALI's ``color_twist`` does (so that the two backends agree), then
grayscale, Gaussian blur (reflect padding), solarisation and normalisation.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .augment import ViewRecipe
from .params import ViewParams

# ITU-R 601 luma (what torchvision's rgb_to_grayscale and DALI use) and the YIQ basis.
LUMA = (0.299, 0.587, 0.114)
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                        dtype=torch.float64)
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _t(a, device, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), device=device).to(dtype)


def to_float_rgb(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, C] (C = 1 or 3) -> float32 [B, 3, H, W] in [0, 1] (grey replicated)."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def crop_resize_flip(x: torch.Tensor, p: ViewParams, size: int) -> torch.Tensor:
    """float [B, 3, H, W] -> [B, 3, size, size]: crop each sample's box, resize, flip where asked.

    When no box is larger than the output (the usual case for in-memory datasets at their native
    size) this is plain bilinear sampling, done by grid_sample with the flip folded into the
    affine map (twice as fast); otherwise roi_align averages the input under each output pixel,
    i.e. an antialiased shrink, matching DALI's antialiased resize.
    """
    if (p.height <= size).all() and (p.width <= size).all():
        return _sample_boxes(x, p, size)
    from torchvision.ops import roi_align

    b = x.shape[0]
    boxes = torch.stack([torch.arange(b, dtype=torch.float32), _t(p.left, "cpu"), _t(p.top, "cpu"),
                         _t(p.left + p.width, "cpu"), _t(p.top + p.height, "cpu")], dim=1)
    out = roi_align(x, boxes.to(x.device), output_size=(size, size), spatial_scale=1.0,
                    sampling_ratio=-1, aligned=True)
    flip = _t(p.flip, x.device, torch.bool)[:, None, None, None]
    return torch.where(flip, out.flip(-1), out)


def _sample_boxes(x: torch.Tensor, p: ViewParams, size: int) -> torch.Tensor:
    """Bilinear crop-resize-flip: output u in [-1, 1] maps to input (w / W) u + (2 left + w) / W - 1."""
    b, _, h_in, w_in = x.shape
    w, h = _t(p.width, "cpu"), _t(p.height, "cpu")
    sign = torch.where(_t(p.flip, "cpu", torch.bool), -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = sign * w / w_in
    theta[:, 0, 2] = (2 * _t(p.left, "cpu") + w) / w_in - 1
    theta[:, 1, 1] = h / h_in
    theta[:, 1, 2] = (2 * _t(p.top, "cpu") + h) / h_in - 1
    grid = F.affine_grid(theta.to(x.device), [b, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype)
    return torch.einsum("bchw,c->bhw", x, w)[:, None]


def _hue_matrices(shift: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] RGB->RGB matrices rotating the IQ chroma plane by ``shift`` turns."""
    a = -shift.double() * 2 * math.pi  # DALI rotates IQ clockwise for a positive hue
    c, s = torch.cos(a), torch.sin(a)
    rot = torch.zeros(len(a), 3, 3, dtype=torch.float64, device=a.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    m = _YIQ2RGB.to(a.device) @ rot @ _RGB2YIQ.to(a.device)
    return m.float()


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, window: int) -> torch.Tensor:
    """Separable per-sample Gaussian blur, reflect padding; sigma 0 leaves a sample unchanged."""
    b, c, h, w = x.shape
    r = window // 2
    d = torch.arange(-r, r + 1, device=x.device, dtype=torch.float32)
    s = sigma.clamp_min(1e-6)[:, None]
    k = torch.exp(-0.5 * (d[None] / s) ** 2)
    k = k / k.sum(1, keepdim=True)                                  # [B, window]
    k = k.repeat_interleave(c, 0)                                   # one kernel per (sample, channel)
    y = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def photometric(x: torch.Tensor, p: ViewParams, recipe: ViewRecipe, mean, std) -> torch.Tensor:
    """Colour jitter, grayscale, blur, solarisation and normalisation of float [B, 3, S, S] in [0, 1]."""
    dev = x.device
    col = lambda a: _t(a, dev)[:, None, None, None]  # noqa: E731  per-sample factor, broadcastable
    if recipe.jitter_prob > 0:
        x = (x * col(p.brightness)).clamp_(0, 1)
        m = _gray(x).mean(dim=(2, 3), keepdim=True)
        cf = col(p.contrast)
        x = (cf * x + (1 - cf) * m).clamp_(0, 1)
        sf = col(p.saturation)
        x = (sf * x + (1 - sf) * _gray(x)).clamp_(0, 1)
        if recipe.hue > 0:
            x = torch.einsum("bij,bjhw->bihw", _hue_matrices(_t(p.hue, dev)), x).clamp_(0, 1)
    if recipe.grayscale_prob > 0:
        x = torch.where(col(p.gray).bool(), _gray(x).expand_as(x), x)
    if recipe.blur_prob > 0:
        x = gaussian_blur(x, _t(p.sigma, dev), recipe.blur_window)
    if recipe.solarize_prob > 0:
        x = torch.where(col(p.solarize).bool() & (x >= 0.5), 1 - x, x)
    mean_t = torch.tensor(mean, device=dev, dtype=x.dtype)[None, :, None, None]
    std_t = torch.tensor(std, device=dev, dtype=x.dtype)[None, :, None, None]
    return (x - mean_t) / std_t
