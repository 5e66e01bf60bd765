"""Pretraining loaders (DALI in CPU mode and torchvision): exact epochs, sharding, resume,
determinism, agreement between the backends, encoded files, the evaluation loader, bad arguments."""
import logging

import numpy as np
import pytest
import torch

from train.data import (AugmentConfig, ImageDataset, ViewRecipe, augment_preset, dali_available,
                        load_dataset, make_eval_loader, make_pretrain_loader)

BACKENDS = ["torchvision", pytest.param("dali", marks=pytest.mark.skipif(
    not dali_available(), reason="NVIDIA DALI not installed"))]


def arrays(n=50, side=12, channels=3, seed=0, **kw):
    rng = np.random.default_rng(seed)
    return ImageDataset(name="toy", images=rng.integers(0, 256, (n, side, side, channels), dtype=np.uint8),
                        fine=np.arange(n) % 5, image_size=side, **kw)


def collect(loader, epochs=1):
    out = []
    for _ in range(epochs):
        out.append([b for b in loader])
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world_size", [1, 2])
def test_every_epoch_exact_no_skip_no_repeat(backend, world_size):
    ds = arrays(n=53)
    aug = augment_preset("symmetric", 8)
    loaders = [make_pretrain_loader(ds, aug, batch_size=8, loader=backend, seed=3, rank=r,
                                    world_size=world_size, num_workers=0) for r in range(world_size)]
    steps = 53 // (8 * world_size)
    assert all(len(ld) == steps for ld in loaders)
    epochs = 4
    per_rank = [collect(ld, epochs) for ld in loaders]  # no set_epoch: it advances by itself
    orders = []
    for e in range(epochs):
        seen = []
        for r in range(world_size):
            batches = per_rank[r][e]
            assert len(batches) == steps  # exactly len(loader) batches, every epoch
            for b in batches:
                assert b["views"][0].shape == (8, 3, 8, 8) and len(b["views"]) == 2
                assert torch.equal(b["fine"], b["index"] % 5)  # labels travel with their samples
                assert (b["coarse"] == -1).all()
            seen.append(torch.cat([b["index"] for b in batches]))
        allidx = torch.cat(seen)
        assert len(allidx) == steps * 8 * world_size == len(torch.unique(allidx))  # once per epoch
        if world_size == 2:
            assert not set(seen[0].tolist()) & set(seen[1].tolist())  # shards are disjoint
        orders.append(allidx)
    assert not torch.equal(orders[0], orders[1])  # reshuffled every epoch
    assert all(ld.epoch == epochs - 1 for ld in loaders)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_mid_epoch_exactly(backend):
    ds = arrays(n=40)
    aug = augment_preset("asymmetric", 8)
    kw = dict(batch_size=8, loader=backend, seed=1, num_workers=0)
    ref = make_pretrain_loader(ds, aug, **kw)
    ref_batches = collect(ref, 2)[1]  # epoch 1, uninterrupted
    a = make_pretrain_loader(ds, aug, **kw)
    collect(a, 1)
    a.set_epoch(1)
    for k, _ in enumerate(a):
        if k == 1:
            break
    state = a.state_dict()
    assert (state["epoch"], state["step"]) == (1, 2)
    b = make_pretrain_loader(ds, aug, **kw)
    b.load_state_dict(state)
    rest = list(b)
    assert len(rest) == len(b) - 2
    for got, want in zip(rest, ref_batches[2:]):
        assert torch.equal(got["index"], want["index"])
        for gv, wv in zip(got["views"], want["views"]):
            assert torch.equal(gv, wv)  # same augmentation draws too
    assert len(list(b)) == len(b) and b.epoch == 2  # then carries on with the next epoch


@pytest.mark.parametrize("backend", BACKENDS)
def test_break_continue_and_set_epoch(backend):
    ds = arrays(n=40)
    ld = make_pretrain_loader(ds, augment_preset("symmetric", 8), batch_size=8, loader=backend,
                              num_workers=0)
    ref = [b["index"] for b in make_pretrain_loader(ds, augment_preset("symmetric", 8), batch_size=8,
                                                    loader=backend, num_workers=0)]
    first = []
    for b in ld:
        first.append(b["index"])
        if len(first) == 2:
            break
    rest = [b["index"] for b in ld]  # the same loader continues where the loop was left
    assert all(torch.equal(x, y) for x, y in zip(first + rest, ref)) and len(first + rest) == len(ref)
    ld.set_epoch(5)
    e5 = [b["index"] for b in ld]
    ld.set_epoch(0)
    again = [b["index"] for b in ld]
    assert len(e5) == len(ld) and not torch.equal(e5[0], ref[0])
    assert all(torch.equal(x, y) for x, y in zip(again, ref))
    it = iter(ld)
    held = next(it)["views"][0]
    snapshot = held.clone()
    next(it)
    assert torch.equal(held, snapshot)  # a yielded batch is not overwritten by the next one


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_under_seed(backend):
    ds = arrays(n=24)
    aug = augment_preset("asymmetric", 8)
    run = lambda seed, workers=0: next(iter(make_pretrain_loader(  # noqa: E731
        ds, aug, batch_size=8, loader=backend, seed=seed, num_workers=workers)))
    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a["views"], b["views"]))
    assert not torch.equal(a["index"], c["index"])
    if backend == "torchvision":  # worker processes do not change the draws
        d = run(0, workers=2)
        assert all(torch.equal(x, y) for x, y in zip(a["views"], d["views"]))


@pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI not installed")
@pytest.mark.parametrize("channels", [1, 3])
def test_backends_agree_shape_dtype_range_and_values(channels):
    ds = arrays(n=32, side=16, channels=channels, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    aug = augment_preset("asymmetric", 16, blur_prob=0.5)
    outs = {k: next(iter(make_pretrain_loader(ds, aug, batch_size=16, loader=k, num_workers=0)))
            for k in ("torchvision", "dali")}
    tv, dali = outs["torchvision"], outs["dali"]
    assert torch.equal(tv["index"], dali["index"]) and torch.equal(tv["fine"], dali["fine"])
    lo = min((0 - m) / s for m, s in zip(ds.mean, ds.std))
    hi = max((1 - m) / s for m, s in zip(ds.mean, ds.std))
    for a, b in zip(tv["views"], dali["views"]):
        assert a.shape == b.shape == (16, 3, 16, 16) and a.dtype == b.dtype == torch.float32
        for x in (a, b):
            assert lo - 1e-4 <= x.min() and x.max() <= hi + 1e-4
        # the same draws, the same maths: per pixel agreement up to interpolation details and
        # the clamping inside DALI's saturation / hue twist
        diff = (a - b).abs() * 0.2  # back to [0, 1] units (std >= 0.2)
        assert diff.mean() < 0.003 and torch.quantile(diff.flatten(), 0.99) < 0.02
    if channels == 1:  # grey replicated to RGB before colouring: channels equal up to normalisation
        x = tv["views"][0] * torch.tensor(ds.std)[:, None, None] + torch.tensor(ds.mean)[:, None, None]
        assert torch.allclose(x[:, 0], x[:, 1], atol=1e-5) and torch.allclose(x[:, 1], x[:, 2], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_recipe_is_exact_normalisation(backend):
    ds = arrays(n=8, side=10, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    ident = ViewRecipe(size=10, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_prob=0,
                       grayscale_prob=0, flip_prob=0)
    b = next(iter(make_pretrain_loader(ds, AugmentConfig(views=(ident,)), batch_size=8,
                                       loader=backend, num_workers=0)))
    want = (torch.from_numpy(ds.images[b["index"].numpy()]).permute(0, 3, 1, 2).float() / 255
            - torch.tensor(ds.mean)[:, None, None]) / torch.tensor(ds.std)[:, None, None]
    torch.testing.assert_close(b["views"][0], want, atol=1e-5, rtol=1e-5)


def _png_tree(root, sizes):
    from PIL import Image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    for k, (h, w) in enumerate(sizes):
        smooth = np.stack([xx, yy, 1 - xx * yy], -1)[:h, :w] * 255  # smooth: resize-friendly
        arr = np.clip(smooth + rng.normal(0, 3, smooth.shape), 0, 255).astype(np.uint8)
        (root / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / f"c{k % 2}" / f"{k}.png")


@pytest.mark.parametrize("backend", BACKENDS)
def test_encoded_files(tmp_path, backend):
    _png_tree(tmp_path, [(40, 30), (25, 50), (64, 64), (33, 33), (20, 45), (50, 21)])
    ds = load_dataset("imagefolder", tmp_path, image_size=16)
    aug = augment_preset("symmetric", 16, num_views=3)
    b = next(iter(make_pretrain_loader(ds, aug, batch_size=4, loader=backend, num_workers=0)))
    assert len(b["views"]) == 3 and all(v.shape == (4, 3, 16, 16) for v in b["views"])
    assert torch.equal(b["fine"], torch.tensor([int(ds.fine[i]) for i in b["index"]]))
    if backend == "dali":
        tv = next(iter(make_pretrain_loader(ds, aug, batch_size=4, loader="torchvision", num_workers=0)))
        for a, d in zip(tv["views"], b["views"]):
            assert ((a - d).abs() * 0.225).mean() < 0.005


def test_eval_loader(tmp_path):
    ds = arrays(n=21, side=12, channels=1, mean=(0.3,) * 3, std=(0.5,) * 3)
    ev = make_eval_loader(ds, batch_size=8)
    batches = list(ev)
    assert len(ev) == len(batches) == 3 and [len(b[1]) for b in batches] == [8, 8, 5]  # no drop
    x, fine, coarse = batches[0]
    assert x.shape == (8, 3, 12, 12) and (coarse == -1).all() and fine.tolist() == list(np.arange(8) % 5)
    want = (torch.from_numpy(ds.images[:8]).permute(0, 3, 1, 2).float() / 255 - 0.3) / 0.5
    torch.testing.assert_close(x, want.expand(-1, 3, -1, -1))
    assert torch.equal(list(make_eval_loader(ds, batch_size=8))[2][0], batches[2][0])
    big = next(iter(make_eval_loader(ds, batch_size=4, image_size=20)))[0]
    assert big.shape == (4, 3, 20, 20)
    _png_tree(tmp_path, [(40, 30), (25, 50), (64, 64)])
    files = make_eval_loader(load_dataset("imagefolder", tmp_path), batch_size=2, image_size=16)
    assert [b[0].shape for b in files] == [(2, 3, 16, 16), (1, 3, 16, 16)]


def test_default_dataset_two_views():
    ds = load_dataset()
    b = next(iter(make_pretrain_loader(ds, augment_preset("symmetric", 28), batch_size=64,
                                       loader="torchvision", num_workers=0)))
    assert [v.shape for v in b["views"]] == [(64, 3, 28, 28)] * 2
    assert (b["coarse"] >= 0).all() and (b["coarse"] < 6).all()
    assert not torch.allclose(b["views"][0], b["views"][1])  # views differ


def test_bad_loader_arguments(monkeypatch, caplog):
    ds = arrays(n=20)
    aug = augment_preset("symmetric", 8)
    with pytest.raises(ValueError, match="unknown loader 'ffcv'.*'torchvision'"):
        make_pretrain_loader(ds, aug, batch_size=4, loader="ffcv")
    with pytest.raises(ValueError, match="unknown device 'mps'"):
        make_pretrain_loader(ds, aug, batch_size=4, device="mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            make_pretrain_loader(ds, aug, batch_size=4, device="cuda")
    with pytest.raises(ValueError, match="fewer than one batch"):
        make_pretrain_loader(ds, aug, batch_size=16, world_size=2, rank=1, loader="torchvision")
    with pytest.raises(ValueError, match="rank"):
        make_pretrain_loader(ds, aug, batch_size=4, world_size=2, rank=2, loader="torchvision")
    with pytest.raises(TypeError, match="AugmentConfig"):
        make_pretrain_loader(ds, {"views": []}, batch_size=4, loader="torchvision")
    ld = make_pretrain_loader(ds, aug, batch_size=4, loader="torchvision")
    state = ld.state_dict()
    other = make_pretrain_loader(ds, aug, batch_size=4, loader="torchvision", seed=9)
    with pytest.raises(ValueError, match="checkpoint has seed=0"):
        other.load_state_dict(state)
    import train.data.loaders as L
    monkeypatch.setattr(L, "dali_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert L.choose_loader("auto", "cuda") == "torchvision"
    assert "DALI is not installed" in caplog.text
    monkeypatch.setattr(L, "dali_available", lambda: True)
    assert L.choose_loader("auto", "cuda") == "dali" and L.choose_loader("dali", "cpu") == "dali"
    assert make_pretrain_loader(ds, aug, batch_size=4).backend == "torchvision"  # auto on the CPU
    monkeypatch.setattr(L, "dali_available", lambda: False)
    with pytest.raises(ValueError, match="DALI is not installed"):
        make_pretrain_loader(ds, aug, batch_size=4, loader="dali")



def test_auto_is_torchvision_on_the_cpu_for_image_folders_too(monkeypatch, tmp_path):
    """loader='auto' on the CPU: the batched torchvision backend for image folders as for arrays,
    also where DALI is installed (bench/results/data_throughput_cpu.md: 3.3x DALI's CPU operators
    at 224 px JPEGs on 2 cores); DALI on a GPU."""
    import train.data.loaders as L

    monkeypatch.setattr(L, "dali_available", lambda: True)
    _png_tree(tmp_path, [(40, 30), (25, 50), (64, 64), (33, 33)])
    files = load_dataset("imagefolder", tmp_path, image_size=16)
    assert make_pretrain_loader(files, augment_preset("symmetric", 16), batch_size=2, num_workers=0).backend \
        == "torchvision"
    assert L.choose_loader("auto", "cuda") == "dali"
