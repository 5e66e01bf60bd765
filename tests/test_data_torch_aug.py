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


def _every_operator_on_every_sample(x, p, recipe):
    """The reference: each operator on the whole batch, the draws that switch it off making it an
    identity there (brightness, contrast, saturation 1, hue 0, sigma 0) or a masked select."""
    if recipe.jitter_prob > 0:
        x = TA.jitter(x, p, None, recipe.hue > 0)
    if recipe.grayscale_prob > 0:
        x = torch.where(torch.from_numpy(p.gray)[:, None, None, None], TA.grey(x), x)
    if recipe.blur_prob > 0:
        x = TA.gaussian_blur(x, torch.from_numpy(p.sigma), recipe.blur_window)
    if recipe.solarize_prob > 0:
        x = torch.where(torch.from_numpy(p.solarize)[:, None, None, None] & (x >= 0.5), 1 - x, x)
    return torch.sub(x, torch.tensor(MEAN)[None, :, None, None]).div_(torch.tensor(STD)[None, :, None, None])


@pytest.mark.parametrize("name", list(RECIPES))
def test_selected_samples_equal_the_full_computation(name):
    recipe = RECIPES[name]
    x, p = _batch(recipe)
    full = _every_operator_on_every_sample(x.clone(), p, recipe)
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


def test_blur_kernels_hold_no_denormals():
    """Gaussian tails under 1e-30 are zeroed: float32 denormals (sigma 0.3 has exp(-89) at 4 px)
    made a whole blur about 4x slower on x86; the kernels still sum to 1 and match exp()."""
    sigma = torch.linspace(0.1, 2.0, 400)
    k = TA.blur_kernels(sigma, 23)
    tiny = torch.finfo(torch.float32).tiny
    assert not ((k > 0) & (k < tiny)).any()
    assert ((k == 0) | (k >= 1e-30)).all()
    torch.testing.assert_close(k.sum(1), torch.ones(400), rtol=0, atol=1e-6)
    d = torch.arange(-11, 12, dtype=torch.float64)
    exact = torch.exp(-0.5 * (d[None] / sigma.double()[:, None]) ** 2)
    exact = exact / exact.sum(1, keepdim=True)
    torch.testing.assert_close(k.double(), exact, rtol=1e-5, atol=1e-28)
    assert (TA.blur_kernels(torch.zeros(1), 5) == torch.tensor([[0.0, 0, 1, 0, 0]])).all()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_chunks_equal_the_whole_batch(dtype):
    """photometric_chunks (the CPU workers' path): a few samples at a time, same views."""
    recipe = RECIPES["half"]
    _, p = _batch(recipe, n=10)
    u8 = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (10, 3, 64, 64), dtype=np.uint8))
    x = u8 if dtype == torch.uint8 else u8.float().div_(255)
    whole = TA.photometric(u8.float().div_(255), p, recipe, MEAN, STD)
    for chunk in (1, 3, None):
        torch.testing.assert_close(TA.photometric_chunks(x, p, recipe, MEAN, STD, chunk=chunk), whole,
                                   rtol=0, atol=2e-6)


def test_cpu_workers_colour_a_few_samples_at_a_time(monkeypatch, tmp_path):
    """At 224 px a worker's photometric() sees 2 samples at a time (in L2), not the whole batch."""
    from PIL import Image

    from train.data import load_dataset, make_pretrain_loader
    from train.data.torch_loader import _BatchMaker

    rng = np.random.default_rng(0)
    (tmp_path / "c").mkdir()
    for k in range(6):
        Image.fromarray(rng.integers(0, 256, (240, 250, 3), dtype=np.uint8)).save(tmp_path / "c" / f"{k}.jpg")
    ds = load_dataset("imagefolder", tmp_path, image_size=224, verify="none")
    loader = make_pretrain_loader(ds, augment_preset("asymmetric", 224), batch_size=6, loader="torchvision",
                                  device="cpu", num_workers=0)
    sizes = []
    original = TA.photometric
    monkeypatch.setattr(TA, "photometric", lambda x, *a, **k: sizes.append(x.shape[0]) or original(x, *a, **k))
    views = _BatchMaker(loader)[(0, 0)]["views"]
    assert [v.shape for v in views] == [(6, 3, 224, 224)] * 2
    assert sizes == [2] * 6


def test_jpeg_files_decode_without_pil_to_pil_pixels(monkeypatch, tmp_path):
    """RGB and grey JPEGs go through libjpeg-turbo straight into a tensor (PIL is not asked), with
    PIL's pixels; other files (PNG, CMYK JPEG) still go through PIL."""
    from PIL import Image

    from train.data import torch_loader

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    files = {"rgb.jpg": Image.fromarray(rgb), "grey.jpg": Image.fromarray(rgb[..., 0]),
             "cmyk.jpg": Image.fromarray(np.concatenate([rgb, rgb[..., :1]], -1), mode="CMYK"),
             "rgb.png": Image.fromarray(rgb)}
    want = {}
    for name, im in files.items():
        im.save(tmp_path / name, quality=90)
        with Image.open(tmp_path / name) as f:
            want[name] = torch.from_numpy(np.asarray(f.convert("RGB")).copy())
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda f, *a, **k: opened.append(f) or real_open(f, *a, **k))
    for name in files:
        opened.clear()
        got = torch_loader.decode_file(str(tmp_path / name))
        assert got.dtype == torch.uint8 and got.is_contiguous() and torch.equal(got, want[name]), name
        assert bool(opened) == (name in ("cmyk.jpg", "rgb.png")), name
