"""Augmented two-view throughput: DALI against the torchvision DataLoader, in the same run.

Cases: in-memory arrays at 32 px (CIFAR-like) and 96 px (STL-10-like), JPEG files decoded and
cropped to 224 px (ImageNet-like). Each round is one full epoch of the loader (workers / pipeline
start-up included for the torchvision loader, as in training); both loaders use all CPU cores;
on a GPU machine the views are made on the GPU. Results (images/s, ratios, the machine) are
written to bench/results/data_throughput_<device>.{json,md} when the module finishes.

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
    not dali_available(), reason="NVIDIA DALI not installed"))]
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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_two_view_throughput(benchmark, datasets, case, backend):
    ds = datasets(case)
    _, out_side, n, batch = CASES[case]
    loader = make_pretrain_loader(ds, augment_preset("asymmetric", out_side), batch_size=batch,
                                  loader=backend, device=DEVICE, num_workers=default_workers())
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
        rows.append(row)
    tag = re.sub(r"[^a-z0-9]+", "-", machine.get("gpu", "cpu").lower()).strip("-")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"data_throughput_{tag}.json").write_text(
        json.dumps({"machine": machine, "results": rows}, indent=2) + "\n")
    lines = [f"# Data loader throughput ({tag})", "",
             "Augmented two-view images per second (one sample = two views), asymmetric preset, "
             "one full epoch per round, mean of 3 rounds. Machine: "
             + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".", "",
             "| case | torchvision | DALI | DALI / torchvision |", "|---|---|---|---|"]
    for r in rows:
        tv = r.get("torchvision_two_view_images_per_s", "-")
        da = r.get("dali_two_view_images_per_s", "-")
        lines.append(f"| {r['case']} | {tv} | {da} | {r.get('dali_over_torchvision', '-')} |")
    (RESULTS / f"data_throughput_{tag}.md").write_text("\n".join(lines) + "\n")
