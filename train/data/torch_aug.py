"""Batched augmentation in PyTorch (the torchvision backend), on whatever device the tensors live.

Geometry: arrays are cropped, resized and flipped as one batch (``grid_sample`` when no crop is
shrunk, else ``torchvision.ops.roi_align``, which box-averages like an antialiased resize); decoded
files, whose sizes differ, are cropped on their uint8 pixels and resized one by one with
antialiased bilinear interpolation (torchvision's RandomResizedCrop; PyTorch's uint8 kernel).
Colour: torchvision's ColorJitter maths per sample in a fixed order (brightness, contrast,
saturation, hue), with the hue rotated in YIQ space as DALI's ``color_twist`` does (so that the
two backends agree), then grayscale, Gaussian blur (reflect padding), solarisation, normalisation.

Cost. The per-sample draws live on the host (params.py), so each operator runs only on the samples
drawn for it, selected without a device sync: the colour jitter on its 80 %, grayscale on its 20 %,
blur and solarisation on theirs (`_select`; the others pass through untouched). Brightness and
contrast scale in place, saturation and hue are each one 3x3 colour matrix per sample (built on
the host, one batched matmul pass), and a view's per-sample numbers reach the device in one
non-blocking copy, so on a GPU the whole view is queued without waiting. On the CPU (the loader's
workers) photometric_chunks runs the chain a few samples at a time, so that it works in cache, and
the blur kernels hold no float32 denormals.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .augment import ViewRecipe
from .params import ViewParams

# ITU-R 601 luma (what torchvision's rgb_to_grayscale and DALI use) and the YIQ basis.
LUMA = (0.299, 0.587, 0.114)
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def upload(a, device, dtype=None) -> torch.Tensor:
    """A host array on `device`: pinned and copied without blocking on a GPU (no sync)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype is not None:
        t = t.to(dtype)
    device = torch.device(device)
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


@lru_cache(maxsize=64)
def _constant(values: tuple, device: str, shape: tuple) -> torch.Tensor:
    """A small constant tensor, copied to `device` once."""
    return upload(np.asarray(values, dtype=np.float32).reshape(shape), device)


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
    boxes = np.stack([np.arange(b), p.left, p.top, p.left + p.width, p.top + p.height], 1).astype(np.float32)
    out = roi_align(x, upload(boxes, x.device), output_size=(size, size), spatial_scale=1.0,
                    sampling_ratio=-1, aligned=True)
    flip = upload(p.flip, x.device)[:, None, None, None]
    return torch.where(flip, out.flip(-1), out)


def _sample_boxes(x: torch.Tensor, p: ViewParams, size: int) -> torch.Tensor:
    """Bilinear crop-resize-flip: output u in [-1, 1] maps to input (w / W) u + (2 left + w) / W - 1."""
    b, _, h_in, w_in = x.shape
    theta = np.zeros((b, 2, 3), dtype=np.float32)
    theta[:, 0, 0] = np.where(p.flip, -1.0, 1.0) * p.width / w_in
    theta[:, 0, 2] = (2 * p.left + p.width) / w_in - 1
    theta[:, 1, 1] = p.height / h_in
    theta[:, 1, 2] = (2 * p.top + p.height) / h_in - 1
    grid = F.affine_grid(upload(theta, x.device), [b, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def crop_images(images: list[torch.Tensor], p: ViewParams, size: int) -> torch.Tensor:
    """uint8 [H_k, W_k, 3] images of any sizes -> uint8 [B, 3, size, size]: each sample's box cut from
    its uint8 pixels (only the crop is touched), flipped, resized with antialiased bilinear
    interpolation (torchvision's RandomResizedCrop) and rounded to uint8, as PIL does."""
    out = torch.empty(len(images), 3, size, size, dtype=torch.uint8)
    for k, im in enumerate(images):
        top, left, h, w = int(p.top[k]), int(p.left[k]), int(p.height[k]), int(p.width[k])
        crop = im[top:top + h, left:left + w].permute(2, 0, 1)[None]  # channels-last memory: uint8 fast path
        if p.flip[k]:
            crop = crop.flip(-1)
        out[k] = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return out


# ---------------------------------------------------------------------------------------------
# colour


def _select(mask: np.ndarray) -> np.ndarray | None:
    """Indices of the samples an operator applies to; None = all of them (no gather needed)."""
    idx = np.flatnonzero(mask)
    return None if len(idx) == len(mask) else idx


def on_samples(x: torch.Tensor, idx: np.ndarray | None, fn) -> torch.Tensor:
    """x with fn applied to the samples `idx` (host indices; None = all). fn(xs, idx) gets those
    samples as a fresh tensor it may change in place and returns their new values."""
    if idx is None:
        return fn(x, None)
    if len(idx) == 0:
        return x
    rows = upload(idx, x.device)
    return x.index_copy(0, rows, fn(x.index_select(0, rows), idx))


def _take(a: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
    return a if idx is None else a[idx]


def saturation_matrices(s: np.ndarray) -> np.ndarray:
    """[n, 3, 3]: x -> s x + (1 - s) grey(x), grey = LUMA . x (torchvision's adjust_saturation)."""
    eye, grey = np.eye(3), np.tile(np.asarray(LUMA), (3, 1))
    return s[:, None, None] * eye + (1 - s[:, None, None]) * grey


def hue_matrices(shift: np.ndarray) -> np.ndarray:
    """[n, 3, 3] RGB->RGB matrices rotating the IQ chroma plane by ``shift`` turns (float64)."""
    a = -np.asarray(shift, dtype=np.float64) * 2 * math.pi  # DALI rotates IQ clockwise for a positive hue
    c, s = np.cos(a), np.sin(a)
    rot = np.zeros((len(a), 3, 3))
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    return _YIQ2RGB @ rot @ _RGB2YIQ


def _colour_matrix(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Per-sample 3x3 colour matrix m [n, 3, 3] applied to x [n, 3, H, W], clamped to [0, 1]."""
    n, c, h, w = x.shape
    return torch.bmm(m, x.reshape(n, c, h * w)).view(n, c, h, w).clamp_(0, 1)


def jitter(x: torch.Tensor, p: ViewParams, idx, hue: bool) -> torch.Tensor:
    """torchvision's brightness, contrast, saturation, hue (fixed order, each clamped to [0, 1]) on the
    samples x [n, 3, H, W] whose draws are p's at idx (None: all)."""
    n = x.shape[0]
    b, c, s = (_take(a, idx).astype(np.float64) for a in (p.brightness, p.contrast, p.saturation))
    mats = [saturation_matrices(s)] + ([hue_matrices(_take(p.hue, idx))] if hue else [])
    # one upload: brightness, contrast, then the colour matrices
    packed = np.concatenate([b[:, None], c[:, None]] + [m.reshape(n, 9) for m in mats], 1).astype(np.float32)
    dev = upload(packed, x.device)
    bf, cf = dev[:, 0].view(n, 1, 1, 1), dev[:, 1].view(n, 1, 1, 1)
    x = (x * bf).clamp_(0, 1)  # the caller's tensor is left as it was
    # contrast pivots at the mean grey of the brightened image: the luma of the channel means
    grey_mean = (x.mean(dim=(2, 3)) * _constant(LUMA, str(x.device), (1, 3))).sum(1).view(n, 1, 1, 1)
    x.mul_(cf).add_((1 - cf) * grey_mean).clamp_(0, 1)
    for k in range(len(mats)):
        x = _colour_matrix(x, dev[:, 2 + 9 * k:11 + 9 * k].view(n, 3, 3))
    return x


def grey(x: torch.Tensor) -> torch.Tensor:
    """The luma of x [n, 3, H, W] on all three channels."""
    g = torch.einsum("bchw,c->bhw", x, _constant(LUMA, str(x.device), (3,)))[:, None]
    return g.expand_as(x)


def blur_kernels(sigma: torch.Tensor, window: int) -> torch.Tensor:
    """[B, window] normalised 1-D Gaussian kernels; sigma 0 gives the identity kernel."""
    r = window // 2
    d = torch.arange(-r, r + 1, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (d[None] / sigma.clamp_min(1e-6)[:, None]) ** 2)
    k = k / k.sum(1, keepdim=True)
    # Tails under 1e-30 are float32 denormals (sigma 0.3: exp(-89) at 4 px) or make denormal
    # products, which x86 CPUs compute several times slower (a whole blur: 4x); zeroed, they
    # change no output by more than 1e-28.
    return k.masked_fill_(k < 1e-30, 0.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, window: int) -> torch.Tensor:
    """Separable per-sample Gaussian blur, reflect padding; sigma 0 leaves a sample unchanged."""
    b, c, h, w = x.shape
    r = window // 2
    k = blur_kernels(sigma, window)                                 # [B, window]
    k = k.repeat_interleave(c, 0, output_size=b * c)                # one kernel per (sample, channel)
    y = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def photometric(x: torch.Tensor, p: ViewParams, recipe: ViewRecipe, mean, std,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Colour jitter, grayscale, blur, solarisation and normalisation of float [B, 3, S, S] in [0, 1],
    each operator on the samples drawn for it only. out: where the normalised views are written
    (else a new tensor)."""
    if recipe.jitter_prob > 0:
        drawn = (p.brightness != 1) | (p.contrast != 1) | (p.saturation != 1) | (p.hue != 0)
        x = on_samples(x, _select(drawn), lambda xs, idx: jitter(xs, p, idx, recipe.hue > 0))
    if recipe.grayscale_prob > 0:
        x = on_samples(x, _select(p.gray), lambda xs, idx: grey(xs))
    if recipe.blur_prob > 0:
        x = on_samples(x, _select(p.sigma > 0),
                       lambda xs, idx: gaussian_blur(xs, upload(_take(p.sigma, idx), x.device), recipe.blur_window))
    if recipe.solarize_prob > 0:
        x = on_samples(x, _select(p.solarize), lambda xs, idx: torch.where(xs >= 0.5, 1 - xs, xs))
    dev = str(x.device)
    out = torch.sub(x, _constant(tuple(mean), dev, (1, 3, 1, 1)), out=out)
    return out.div_(_constant(tuple(std), dev, (1, 3, 1, 1)))


# Samples per chunk on the CPU: about this many bytes of float32 pixels, so that a chunk and the
# operators' temporaries stay in a core's L2 cache (2 samples at 224 px, a whole batch at 32 px).
CHUNK_BYTES = 3 << 19


def photometric_chunks(x: torch.Tensor, p: ViewParams, recipe: ViewRecipe, mean, std,
                       chunk: int | None = None) -> torch.Tensor:
    """photometric() of uint8 or float [B, 3, S, S] views, `chunk` samples at a time (default: by
    CHUNK_BYTES), each chunk converted to float in [0, 1] on its own: on a CPU the chain of
    operators then works in cache instead of streaming the whole batch through memory once per
    operator. Every operator is per sample, so the result is photometric()'s on the whole batch
    (up to float32 rounding: a convolution or matmul may sum in another order for another batch
    size)."""
    b, c, h, w = x.shape
    if chunk is None:
        chunk = max(1, CHUNK_BYTES // (4 * c * h * w))
    out = torch.empty(b, c, h, w, dtype=torch.float32, device=x.device)
    for start in range(0, b, chunk):
        sl = slice(start, start + chunk)
        xs = x[sl].float().div_(255) if x.dtype == torch.uint8 else x[sl]
        photometric(xs, p.rows(sl), recipe, mean, std, out=out[sl])
    return out
