"""Augmented two-view throughput: our two backends against a plain PIL DataLoader, same run.

Cases: in-memory arrays at 32 px (CIFAR-like) and 96 px (STL-10-like), JPEG files decoded and
cropped to 224 px (ImageNet-like). Each round is one full epoch of the loader (workers / pipeline
start-up included for the torchvision loader, as in training); every loader uses all CPU cores;
on a GPU machine our views are made on the GPU. The baseline ("pil") is what a user would write
without this project: torchvision.transforms (v1) on PIL images, the same recipe per view
(RandomResizedCrop, ColorJitter p 0.8, RandomGrayscale, PIL's GaussianBlur as solo-learn and lightly
use it, RandomSolarize, flip, ToTensor, Normalize), a torch DataLoader of (view1, view2) samples
with one worker per core.
Results (images/s, ratios, the machine) are written to bench/results/data_throughput_<device>.{json,md}
when the module finishes.

    pytest bench/test_data_bench.py --benchmark-only
"""
import json
import platform
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from train.data import ImageDataset, augment_preset, dali_available, load_dataset, make_pretrain_loader
from train.data.torch_loader import default_workers

RESULTS = Path(__file__).resolve().parent / "results"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
# name -> (image side, output side, samples per epoch, batch size); smaller on a CPU-only machine
CASES = {
    "arrays-32px": (32, 32, 16384 if ON_GPU else 4096, 256),
    "arrays-96px": (96, 96, 8192 if ON_GPU else 1024, 128),
    "jpeg-224px": (288, 224, 2048 if ON_GPU else 256, 64),
}
BACKENDS = ["torchvision", pytest.param("dali", marks=pytest.mark.skipif(
    not dali_available(), reason="NVIDIA DALI not installed")), "pil"]
_measured: dict = {}


def _dataset(case: str, tmp_root: Path) -> ImageDataset:
    side, _, n, _ = CASES[case]
    rng = np.random.default_rng(0)
    if not case.startswith("jpeg"):
        imgs = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        return ImageDataset(name=case, images=imgs, fine=np.zeros(n, np.int64), image_size=side)
    from PIL import Image
    folder = tmp_root / case / "c"
    folder.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, (side, side + 64, 3), dtype=np.uint8)
    for k in range(n):  # natural-ish content: a shifted noise texture, JPEG quality 90
        Image.fromarray(np.roll(base, k, axis=1)).save(folder / f"{k}.jpg", quality=90)
    return load_dataset("imagefolder", tmp_root / case, image_size=CASES[case][1], verify="none")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_bench")
    cache = {}
    yield lambda case: cache.setdefault(case, _dataset(case, root))
    _write_results()


class _PilBlur:
    """PIL's Gaussian blur with sigma drawn uniformly (solo-learn's and lightly's GaussianBlur: PIL's C
    filter, much faster than torchvision's tensor blur on a PIL image)."""

    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, im):
        import random

        from PIL import ImageFilter

        return im.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


class _PilViews(torch.utils.data.Dataset):
    """The baseline: one sample = (view 1, view 2) by torchvision.transforms on a PIL image."""

    def __init__(self, ds: ImageDataset, aug):
        from torchvision import transforms as T

        self.ds = ds
        self.views = []
        for r in aug.views:
            steps = [T.RandomResizedCrop(r.size, scale=r.crop_scale, ratio=r.crop_ratio),
                     T.RandomApply([T.ColorJitter(r.brightness, r.contrast, r.saturation, r.hue)], p=r.jitter_prob),
                     T.RandomGrayscale(p=r.grayscale_prob)]
            if r.blur_prob > 0:
                steps.append(T.RandomApply([_PilBlur(r.blur_sigma)], p=r.blur_prob))
            if r.solarize_prob > 0:
                steps.append(T.RandomSolarize(128, p=r.solarize_prob))
            steps += [T.RandomHorizontalFlip(r.flip_prob), T.ToTensor(), T.Normalize(ds.mean, ds.std)]
            self.views.append(T.Compose(steps))

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        from PIL import Image

        if self.ds.images is not None:
            im = Image.fromarray(self.ds.images[i].squeeze(-1) if self.ds.images.shape[-1] == 1 else self.ds.images[i])
        else:
            with Image.open(self.ds.files[i]) as f:
                im = f.convert("RGB")
        return [v(im) for v in self.views]


class _PilLoader:
    """A torch DataLoader over _PilViews (persistent workers, like ours); yields {"views": [...]}."""

    def __init__(self, ds, aug, batch):
        self.loader = torch.utils.data.DataLoader(
            _PilViews(ds, aug), batch_size=batch, shuffle=True, drop_last=True, num_workers=default_workers(),
            persistent_workers=True, prefetch_factor=4, pin_memory=ON_GPU)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for views in self.loader:
            yield {"views": [v.to(DEVICE, non_blocking=True) for v in views]}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_two_view_throughput(benchmark, datasets, case, backend):
    ds = datasets(case)
    _, out_side, n, batch = CASES[case]
    aug = augment_preset("asymmetric", out_side)
    if backend == "pil":
        loader = _PilLoader(ds, aug, batch)
    else:
        loader = make_pretrain_loader(ds, aug, batch_size=batch, loader=backend, device=DEVICE,
                                      num_workers=default_workers())
    next(iter(loader))  # warm up: imports, pipeline build, first allocations

    def epoch():
        count = 0
        for b in loader:
            count += b["views"][0].shape[0]
        if ON_GPU:
            torch.cuda.synchronize()
        return count

    count = benchmark.pedantic(epoch, rounds=3, iterations=1, warmup_rounds=1)
    assert count == len(loader) * batch
    rate = count / benchmark.stats.stats.mean
    benchmark.extra_info.update(images_per_s=round(rate, 1), views=2, case=case, device=DEVICE)
    _measured.setdefault(case, {})[backend] = rate


def _machine() -> dict:
    cpu = platform.processor()
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.*)", text).group(1)
    except (OSError, AttributeError):
        pass
    info = {"cpu": cpu, "cores": default_workers(), "python": platform.python_version(),
            "torch": torch.__version__, "device": DEVICE}
    try:
        import torchvision
        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if dali_available():
        import nvidia.dali
        info["dali"] = nvidia.dali.__version__
    if ON_GPU:
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _write_results() -> None:
    if not _measured:
        return
    machine = _machine()
    rows = []
    for case, rates in _measured.items():
        row = {"case": case, "batch": CASES[case][3], "samples_per_epoch": CASES[case][2],
               **{f"{k}_two_view_images_per_s": round(v, 1) for k, v in rates.items()}}
        if "dali" in rates and "torchvision" in rates:
            row["dali_over_torchvision"] = round(rates["dali"] / rates["torchvision"], 2)
        for k in ("torchvision", "dali"):
            if k in rates and "pil" in rates:
                row[f"{k}_over_pil"] = round(rates[k] / rates["pil"], 2)
        rows.append(row)
    tag = re.sub(r"[^a-z0-9]+", "-", machine.get("gpu", "cpu").lower()).strip("-")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"data_throughput_{tag}.json").write_text(
        json.dumps({"machine": machine, "results": rows}, indent=2) + "\n")
    lines = [f"# Data loader throughput ({tag})", "",
             "Augmented two-view images per second (one sample = two views), asymmetric preset, "
             "one full epoch per round, mean of 3 rounds. Machine: "
             + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".", "",
             "| case | PIL DataLoader | torchvision backend | DALI backend | torchvision / PIL | DALI / PIL |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        tv = r.get("torchvision_two_view_images_per_s", "-")
        da = r.get("dali_two_view_images_per_s", "-")
        pil = r.get("pil_two_view_images_per_s", "-")
        lines.append(f"| {r['case']} | {pil} | {tv} | {da} | {r.get('torchvision_over_pil', '-')} | "
                     f"{r.get('dali_over_pil', '-')} |")
    (RESULTS / f"data_throughput_{tag}.md").write_text("\n".join(lines) + "\n")
