"""Per-sample random parameters of every view, drawn on the host from a seeded numpy generator.

Both backends (DALI and torchvision) consume these same draws, so that they apply one policy with
one distribution, a batch is reproducible from (seed, rank, epoch, step) alone (exact resume), and
the views of a sample are independent (separate draws from one stream).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .augment import ViewRecipe

_CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop.get_params tries 10 boxes before falling back


@dataclass
class ViewParams:
    """Parameters of one view for a batch of B samples (numpy [B] arrays)."""

    top: np.ndarray         # int64 crop box in input pixels
    left: np.ndarray
    height: np.ndarray
    width: np.ndarray
    flip: np.ndarray        # bool, horizontal flip
    brightness: np.ndarray  # float32 factors (1 = unchanged)
    contrast: np.ndarray
    saturation: np.ndarray  # grayscale is not folded in here; see `gray`
    hue: np.ndarray         # float32 shift as a fraction of the hue circle (0 = unchanged)
    gray: np.ndarray        # bool
    sigma: np.ndarray       # float32 blur sigma in output pixels (0 = no blur)
    solarize: np.ndarray    # bool

    def rows(self, sl: slice) -> "ViewParams":
        """The parameters of the samples ``sl`` of the batch."""
        return ViewParams(**{name: value[sl] for name, value in vars(self).items()})


def batch_rng(seed: int, rank: int, epoch: int, step: int) -> np.random.Generator:
    """The generator of one batch: independent of worker count, resumable from the position alone."""
    return np.random.default_rng([seed, rank, epoch, step, 0x5EED])


def crop_boxes(heights, widths, scale, ratio, rng: np.random.Generator):
    """torchvision's RandomResizedCrop box rule, vectorised: (top, left, h, w) int64 [B] each."""
    heights = np.asarray(heights, dtype=np.int64)
    widths = np.asarray(widths, dtype=np.int64)
    b = len(heights)
    area = (heights * widths).astype(np.float64)
    target = area[:, None] * rng.uniform(scale[0], scale[1], size=(b, _CROP_ATTEMPTS))
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), size=(b, _CROP_ATTEMPTS)))
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w > 0) & (h > 0) & (w <= widths[:, None]) & (h <= heights[:, None])
    first = np.argmax(ok, axis=1)
    found = ok[np.arange(b), first]
    h = h[np.arange(b), first]
    w = w[np.arange(b), first]
    # fallback: the whole image, cropped centrally to the nearest allowed aspect ratio
    in_ratio = widths / heights
    fw = np.where(in_ratio < ratio[0], widths, np.where(in_ratio > ratio[1],
                  np.rint(heights * ratio[1]).astype(np.int64), widths))
    fh = np.where(in_ratio < ratio[0], np.rint(widths / ratio[0]).astype(np.int64), heights)
    h = np.where(found, h, fh)
    w = np.where(found, w, fw)
    u = rng.random((b, 2))
    top = np.where(found, np.floor(u[:, 0] * (heights - h + 1)).astype(np.int64), (heights - h) // 2)
    left = np.where(found, np.floor(u[:, 1] * (widths - w + 1)).astype(np.int64), (widths - w) // 2)
    return top, left, h, w


def _factor(rng, on, strength, b):
    f = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=b).astype(np.float32)
    return np.where(on, f, np.float32(1.0))


def draw_view(recipe: ViewRecipe, heights, widths, rng: np.random.Generator) -> ViewParams:
    """Parameters of ``recipe`` for a batch whose input images have the given sizes."""
    b = len(heights)
    top, left, h, w = crop_boxes(heights, widths, recipe.crop_scale, recipe.crop_ratio, rng)
    jitter = rng.random(b) < recipe.jitter_prob
    brightness = _factor(rng, jitter, recipe.brightness, b)
    contrast = _factor(rng, jitter, recipe.contrast, b)
    saturation = _factor(rng, jitter, recipe.saturation, b)
    hue = np.where(jitter, rng.uniform(-recipe.hue, recipe.hue, size=b), 0.0).astype(np.float32)
    gray = rng.random(b) < recipe.grayscale_prob
    blur = rng.random(b) < recipe.blur_prob
    sigma = np.where(blur, rng.uniform(*recipe.blur_sigma, size=b), 0.0).astype(np.float32)
    solarize = rng.random(b) < recipe.solarize_prob
    flip = rng.random(b) < recipe.flip_prob
    return ViewParams(top, left, h, w, flip, brightness, contrast, saturation, hue, gray, sigma,
                      solarize)
