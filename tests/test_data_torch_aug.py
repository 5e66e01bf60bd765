"""The batched torchvision backend applies each operator only to the samples drawn for it, with the
same result as running every operator on every sample (the draws that switch an operator off make
it an identity there); file crops are torchvision's resized_crop on the uint8 pixels."""
import numpy as np
import pytest
import torch

from train.data import ViewRecipe, augment_preset
from train.data import torch_aug as TA
from train.data.params import batch_rng, draw_view
from train.hostsync import HostSyncCounter

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
RECIPES = {
    "asymmetric-view1": augment_preset("asymmetric", 64).views[0],   # blur on every sample
    "asymmetric-view2": augment_preset("asymmetric", 64).views[1],   # blur 10 %, solarisation 20 %
    "half": ViewRecipe(size=64, jitter_prob=0.5, grayscale_prob=0.5, blur_prob=0.5, solarize_prob=0.5),
}


def _batch(recipe, n=48, seed=0):
    rng = batch_rng(seed, 0, 0, 0)
    p = draw_view(recipe, [64] * n, [64] * n, rng)
    x = torch.from_numpy(np.random.default_rng(seed).random((n, 3, 64, 64), dtype=np.float32))
    return x, p


@pytest.mark.parametrize("name", list(RECIPES))
def test_selected_samples_equal_the_full_computation(name):
    recipe = RECIPES[name]
    x, p = _batch(recipe)
    full = TA.photometric(x.clone(), p, recipe, MEAN, STD, select=False)
    fast = TA.photometric(x.clone(), p, recipe, MEAN, STD)
    touched = (p.brightness != 1) | (p.contrast != 1) | (p.saturation != 1) | (p.hue != 0) | p.gray \
        | (p.sigma > 0) | p.solarize
    assert 0 < touched.sum() < len(touched) or name == "asymmetric-view1"
    # samples an operator ran on: the same arithmetic on the same values
    assert torch.equal(fast[touched], full[touched])
    # the others: the full computation's identity operators round at most at float32 resolution
    torch.testing.assert_close(fast[~touched], full[~touched], rtol=0, atol=1e-6)
    untouched = (x[~touched] - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    torch.testing.assert_close(fast[~touched], untouched, rtol=0, atol=1e-6)


def test_each_operator_sees_only_its_samples(monkeypatch):
    recipe = RECIPES["half"]
    x, p = _batch(recipe)
    seen = {}
    for name in ("jitter", "grey", "gaussian_blur"):
        original = getattr(TA, name)

        def spy(xs, *a, _name=name, _original=original, **k):
            seen[_name] = xs.shape[0]
            return _original(xs, *a, **k)
        monkeypatch.setattr(TA, name, spy)
    TA.photometric(x, p, recipe, MEAN, STD)
    drawn = (p.brightness != 1) | (p.contrast != 1) | (p.saturation != 1) | (p.hue != 0)
    assert seen == {"jitter": drawn.sum(), "grey": p.gray.sum(), "gaussian_blur": (p.sigma > 0).sum()}
    assert all(0 < v < len(drawn) for v in seen.values())


def test_a_view_reads_no_device_value():
    recipe = RECIPES["half"]
    x, p = _batch(recipe)
    with HostSyncCounter() as c:
        TA.photometric(TA.crop_resize_flip(x, p, 32), p, recipe, MEAN, STD)
    assert not c.syncs, [(s.op, s.where) for s in c.syncs]


def test_file_crops_are_torchvision_resized_crop_on_uint8():
    from torchvision.transforms.v2 import functional as TF

    rng = np.random.default_rng(0)
    images = [torch.from_numpy(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
              [(288, 352), (100, 61), (37, 45), (224, 224)]]
    recipe = ViewRecipe(size=56)
    p = draw_view(recipe, [im.shape[0] for im in images], [im.shape[1] for im in images], batch_rng(0, 0, 0, 1))
    p.flip[:2] = (True, False)
    out = TA.crop_images(images, p, 56)
    assert out.dtype == torch.uint8 and out.shape == (4, 3, 56, 56)
    for k, im in enumerate(images):
        want = TF.resized_crop(im.permute(2, 0, 1), int(p.top[k]), int(p.left[k]), int(p.height[k]),
                               int(p.width[k]), [56, 56], antialias=True)
        if p.flip[k]:
            want = TF.horizontal_flip(want)
        assert torch.equal(out[k], want), k
