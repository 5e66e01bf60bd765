"""Statistical checks, measured on the output images, that both backends apply the policy:
crop area distribution, flip rate, jitter bounds and probability, grayscale rate, views differ."""
import numpy as np
import pytest
import torch

from train.data import AugmentConfig, ImageDataset, ViewRecipe, dali_available, make_pretrain_loader

BACKENDS = ["torchvision", pytest.param("dali", marks=pytest.mark.skipif(
    not dali_available(), reason="NVIDIA DALI not installed"))]
SIDE, N = 64, 512
UNIT = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # outputs stay in [0, 1]
NO_COLOUR = dict(jitter_prob=0.0, grayscale_prob=0.0)


def coordinate_images(n=N):
    """R = column / (SIDE - 1), G = row / (SIDE - 1): a crop's box can be read off its pixels."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / (SIDE - 1)
    img = np.stack([xx, yy, np.full_like(xx, 0.5)], -1) * 255
    return ImageDataset(name="coords", images=np.repeat(img.round().astype(np.uint8)[None], n, 0),
                        image_size=SIDE, **UNIT)


def views(ds, recipe, backend, n_views=1, batch=N):
    aug = AugmentConfig(views=(recipe,) * n_views)
    b = next(iter(make_pretrain_loader(ds, aug, batch_size=batch, loader=backend, num_workers=0)))
    return b["views"], b["index"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_crop_area_distribution_and_flip_rate(backend):
    (x,), _ = views(coordinate_images(), ViewRecipe(size=16, **NO_COLOUR), backend)
    r, g = x[:, 0], x[:, 1]
    # box side ~ range of the coordinate across the output, scaled back (+1 pixel of the grid)
    w = (r[:, :, -1] - r[:, :, 0]).mean(1).abs() * (SIDE - 1) * 16 / 15
    h = (g[:, -1, :] - g[:, 0, :]).mean(1) * (SIDE - 1) * 16 / 15
    area = (w * h / SIDE**2).numpy()
    assert area.min() > 0.06 and area.max() <= 1.05
    # torchvision's rule at 64x64, scale (0.08, 1), ratio (3/4, 4/3): mean area ~0.50-0.53
    assert 0.45 < area.mean() < 0.58
    assert 0.15 < np.quantile(area, 0.1) < 0.25 and np.quantile(area, 0.9) > 0.8
    ratio = (w / h).numpy()
    assert ratio.min() > 0.7 and ratio.max() < 1.43
    flipped = (r[:, :, -1] < r[:, :, 0]).float().mean(1) > 0.5
    assert 0.43 < flipped.float().mean() < 0.57


@pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI not installed")
def test_backends_measure_the_same_crops():
    recipe = ViewRecipe(size=16, **NO_COLOUR)
    a = views(coordinate_images(128), recipe, "torchvision", batch=128)[0][0]
    b = views(coordinate_images(128), recipe, "dali", batch=128)[0][0]
    torch.testing.assert_close(a, b, atol=4e-3, rtol=0)


def grey_constant(value=128, n=N):
    return ImageDataset(name="grey", images=np.full((n, 8, 8, 3), value, np.uint8), image_size=8, **UNIT)


@pytest.mark.parametrize("backend", BACKENDS)
def test_brightness_bounds_and_probability(backend):
    recipe = ViewRecipe(size=8, crop_scale=(1.0, 1.0), flip_prob=0.0, grayscale_prob=0.0,
                        jitter_prob=0.8, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0)
    (x,), _ = views(grey_constant(), recipe, backend)
    factor = x.mean((1, 2, 3)) / (128 / 255)
    assert factor.min() >= 0.6 - 1e-4 and factor.max() <= 1.4 + 1e-4
    changed = (factor - 1).abs() > 1e-3
    assert 0.73 < changed.float().mean() < 0.87  # p = 0.8
    f = factor[changed]
    assert f.min() < 0.65 and f.max() > 1.35  # the whole range is used
    assert 0.4 < (f > 1).float().mean() < 0.6


@pytest.mark.parametrize("backend", BACKENDS)
def test_contrast_saturation_hue_bounds(backend):
    rng = np.random.default_rng(0)
    colour = rng.integers(40, 216, (N, 1, 1, 3)).repeat(8, 1).repeat(8, 2).astype(np.uint8)
    colour[:, :4] = 255 - colour[:, :4]  # two halves: contrast has something to act on
    ds = ImageDataset(name="c", images=colour, image_size=8, **UNIT)
    base = dict(size=8, crop_scale=(1.0, 1.0), flip_prob=0.0, grayscale_prob=0.0, jitter_prob=1.0,
                brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    x0 = torch.from_numpy(colour).permute(0, 3, 1, 2).float() / 255
    (c,), idx = views(ds, ViewRecipe(**{**base, "contrast": 0.4}), backend)
    spread = (c[:, :, :4].mean((2, 3)) - c[:, :, 4:].mean((2, 3))).abs().sum(1)
    x0 = x0[idx]  # the loader shuffles
    spread0 = (x0[:, :, :4].mean((2, 3)) - x0[:, :, 4:].mean((2, 3))).abs().sum(1)
    k = spread / spread0
    assert k.min() > 0.6 - 0.02 and k.max() < 1.4 + 0.02 and k.min() < 0.7 and k.max() > 1.2
    (h,), idx_h = views(ds, ViewRecipe(**{**base, "hue": 0.1}), backend)
    assert torch.equal(idx, idx_h)
    y = torch.tensor([0.299, 0.587, 0.114])
    luma_shift = (torch.einsum("bchw,c->b", h, y) - torch.einsum("bchw,c->b", x0, y)).abs() / 64
    assert luma_shift.max() < 0.03  # a hue rotation keeps the luma (up to clamping)
    assert (h - x0).abs().amax((1, 2, 3)).max() > 0.05  # but changes the colour


@pytest.mark.parametrize("backend", BACKENDS)
def test_grayscale_rate_and_independent_views(backend):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (N, 8, 8, 3), dtype=np.uint8)
    ds = ImageDataset(name="rgb", images=img, image_size=8, **UNIT)
    recipe = ViewRecipe(size=8, jitter_prob=0.0, grayscale_prob=0.2)
    (a, b), _ = views(ds, recipe, backend, n_views=2)
    grey_a = ((a[:, 0] - a[:, 1]).abs().amax((1, 2)) < 1e-2) & ((a[:, 1] - a[:, 2]).abs().amax((1, 2)) < 1e-2)
    grey_b = ((b[:, 0] - b[:, 1]).abs().amax((1, 2)) < 1e-2) & ((b[:, 1] - b[:, 2]).abs().amax((1, 2)) < 1e-2)
    assert 0.14 < grey_a.float().mean() < 0.26 and 0.14 < grey_b.float().mean() < 0.26
    # the two views of a sample are drawn independently: grey in one says nothing of the other
    both = (grey_a & grey_b).float().mean()
    assert both < 0.09
    assert ((a - b).abs().amax((1, 2, 3)) > 0.05).float().mean() > 0.99  # views differ


@pytest.mark.parametrize("backend", BACKENDS)
def test_solarize_and_blur_probabilities(backend):
    img = np.zeros((N, 16, 16, 3), np.uint8)
    img[:, :, 8:] = 255  # a vertical edge
    ds = ImageDataset(name="edge", images=img, image_size=16, **UNIT)
    recipe = ViewRecipe(size=16, crop_scale=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0,
                        grayscale_prob=0.0, solarize_prob=0.2, blur_prob=0.5)
    (x,), _ = views(ds, recipe, backend)
    solarised = x[:, 0, 0, 12] < 0.5  # the white half turned black
    assert 0.14 < solarised.float().mean() < 0.26
    blurred = (x[:, 0, 0, 7] > 0.01) & (x[:, 0, 0, 7] < 0.99) | (x[:, 0, 0, 8] > 0.01) & (x[:, 0, 0, 8] < 0.99)
    assert 0.42 < blurred.float().mean() < 0.58
