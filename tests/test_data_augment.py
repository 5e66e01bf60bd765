"""The typed augmentation config: presets, validation, dict round trip, parameter draws."""
import numpy as np
import pytest
import torch

from train.data import AugmentConfig, ViewRecipe, augment_preset
from train.data.params import batch_rng, crop_boxes, draw_view


def test_presets_follow_solo_learn():
    sym = augment_preset("symmetric", 224)
    asym = augment_preset("asymmetric", 224)
    assert sym.num_views == asym.num_views == 2
    v0, v1 = asym.views
    assert (v0.blur_prob, v1.blur_prob, v0.solarize_prob, v1.solarize_prob) == (1.0, 0.1, 0.0, 0.2)
    for v in sym.views + asym.views:
        assert v.size == 224 and v.crop_scale == (0.08, 1.0) and v.flip_prob == 0.5
        assert (v.jitter_prob, v.brightness, v.contrast, v.saturation, v.hue) == (0.8, 0.4, 0.4, 0.2, 0.1)
        assert v.grayscale_prob == 0.2
    small = augment_preset("asymmetric", 32)
    assert [v.blur_prob for v in small.views] == [0.0, 0.0]  # no blur at 32 px (solo-learn CIFAR)
    assert [v.solarize_prob for v in small.views] == [0.0, 0.2]
    four = augment_preset("asymmetric", 96, num_views=4, crop_scale=(0.2, 1.0))
    assert [v.solarize_prob for v in four.views] == [0.0, 0.2, 0.0, 0.2]
    assert all(v.crop_scale == (0.2, 1.0) for v in four.views)


def test_round_trip_and_unknown_keys():
    cfg = augment_preset("symmetric", 64, num_views=3)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    d = cfg.to_dict()
    d["views"][1]["solarise_prob"] = 0.2
    with pytest.raises(ValueError, match=r"unknown ViewRecipe key\(s\) \['solarise_prob'\].*solarize_prob"):
        AugmentConfig.from_dict(d)
    with pytest.raises(ValueError, match="unknown AugmentConfig key"):
        AugmentConfig.from_dict({"views": [], "crops": 2})
    with pytest.raises(ValueError, match="unknown augmentation preset 'byol'.*asymmetric"):
        augment_preset("byol", 32)
    with pytest.raises(ValueError, match="unknown ViewRecipe field"):
        augment_preset("symmetric", 32, blur=0.5)


@pytest.mark.parametrize("bad", [dict(flip_prob=1.5), dict(crop_scale=(0.5, 0.1)), dict(size=1),
                                 dict(brightness=-0.1), dict(hue=0.7), dict(crop_ratio=(0, 1)),
                                 dict(blur_sigma=(0.0, 1.0))])
def test_recipe_validation(bad):
    with pytest.raises(ValueError):
        ViewRecipe(**bad)
    with pytest.raises(ValueError, match="at least one view"):
        AugmentConfig(views=())


def test_blur_window_is_odd_tenth_of_size():
    assert ViewRecipe(size=224).blur_window == 23
    assert ViewRecipe(size=96).blur_window == 9
    assert ViewRecipe(size=32).blur_window == 3


def _ks(a, b):
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return np.abs(fa - fb).max()


@pytest.mark.parametrize("hw", [(32, 32), (375, 500)])
def test_crop_boxes_match_torchvision_distribution(hw):
    from torchvision.transforms import RandomResizedCrop
    n = 3000
    h, w = hw
    top, left, ch, cw = crop_boxes([h] * n, [w] * n, (0.08, 1.0), (3 / 4, 4 / 3),
                                   np.random.default_rng(0))
    assert (top >= 0).all() and (left >= 0).all() and (top + ch <= h).all() and (left + cw <= w).all()
    torch.manual_seed(0)
    img = torch.zeros(1, h, w)
    ref = np.array([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)])
    crit = 1.95 * np.sqrt(2 / n)  # KS critical value at alpha = 0.001 (fixed seeds: deterministic)
    assert _ks(ch * cw / (h * w), ref[:, 2] * ref[:, 3] / (h * w)) < crit
    assert _ks(cw / ch, ref[:, 3] / ref[:, 2]) < crit
    assert _ks(top / np.maximum(1, h - ch), ref[:, 0] / np.maximum(1, h - ref[:, 2])) < crit


def test_views_draw_independently():
    rng = batch_rng(0, 0, 0, 0)
    v = ViewRecipe()
    a, b = draw_view(v, [32] * 500, [32] * 500, rng), draw_view(v, [32] * 500, [32] * 500, rng)
    assert not np.array_equal(a.top, b.top) and not np.array_equal(a.brightness, b.brightness)
    # flips of the two views are uncorrelated
    assert abs(np.corrcoef(a.flip, b.flip)[0, 1]) < 0.15
    assert 0.4 < a.flip.mean() < 0.6 and 0.72 < (a.brightness != 1).mean() < 0.88
    on = a.brightness != 1
    assert a.brightness[on].min() >= 0.6 and a.brightness[on].max() <= 1.4
    assert (a.sigma == 0).all() and not a.solarize.any()  # blur / solarize off in the default recipe
