"""Training-step throughput (images/s): --kernel torch vs triton and DALI vs torchvision, same run.

One step = next batch from the loader (augmentation included: that is what DALI changes) +
backbone/method/probe forward and backward + LARS step, for SimCLR + HEX (adaptive), the README's
main job. On a GPU: ResNet-18 with the CIFAR stem at 32 px, global batch 256, bf16 autocast,
channels-last, on synthetic CIFAR-sized arrays; the target is triton + DALI >= 2x torch +
torchvision. On the CPU: the tiny CNN at 28 px on the embedded Fashion-MNIST subset, batch 128;
the Triton kernel is skipped there (under the interpreter every program runs in Python, so it
measures the interpreter, not the kernel). Results (images/s, ratio to torch + torchvision, the
machine) go to bench/results/step_<device>.{json,md} when the module finishes.

    pytest bench/test_step_bench.py --benchmark-only     # STEP_BENCH_BATCH=1024: another batch size
"""
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from train import config as C
from train.data import ImageDataset, augment_preset, dali_available, load_dataset, make_pretrain_loader
from train.module import SSLModule

RESULTS = Path(__file__).resolve().parent / "results"
ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
STEPS = 20 if ON_GPU else 4
BATCH = int(os.environ.get("STEP_BENCH_BATCH", 256 if ON_GPU else 128))  # e.g. 1024 on a GPU
KERNELS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not ON_GPU, reason="no GPU: the Triton interpreter measures Python, not the kernel"))]
LOADERS = ["torchvision", pytest.param("dali", marks=pytest.mark.skipif(
    not dali_available(), reason="NVIDIA DALI not installed"))]
_measured: dict = {}


def _dataset() -> ImageDataset:
    if not ON_GPU:
        return load_dataset("fashion-mnist-small")
    rng = np.random.default_rng(0)  # CIFAR-sized arrays: the loader's work matches CIFAR's
    images = rng.integers(0, 256, (16384, 32, 32, 3), dtype=np.uint8)
    return ImageDataset(name="synthetic-32px", images=images, fine=rng.integers(0, 100, 16384), num_classes=100,
                        image_size=32)


@pytest.fixture(scope="module")
def dataset():
    yield _dataset()
    _write_results()


def _config(kernel: str) -> C.Config:
    model = {"backbone": "resnet18", "small_stem": "yes"} if ON_GPU else {"backbone": "tiny"}
    return C.from_dict({"method": "simclr", "kernel": kernel, "hex": {"mode": "adaptive", "warmup_epochs": 0},
                        "model": model, "train": {"batch_size": BATCH, "epochs": 100}})


def _batches(loader):
    while True:
        yield from loader


@pytest.mark.parametrize("loader_name", LOADERS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_training_step_throughput(benchmark, dataset, kernel, loader_name):
    torch.manual_seed(0)
    cfg = _config(kernel)
    num_coarse = dataset.num_coarse if dataset.coarse is not None else 0
    module = SSLModule(cfg, num_classes=dataset.num_classes, num_coarse=num_coarse,
                       image_size=dataset.image_size, steps_per_epoch=len(dataset) // BATCH).to(DEVICE)
    module.to(memory_format=torch.channels_last)
    opt = module.configure_optimizers()["optimizer"]
    loader = make_pretrain_loader(dataset, augment_preset("symmetric", dataset.image_size), batch_size=BATCH,
                                  loader=loader_name, device=str(DEVICE), seed=0)
    batches = _batches(loader)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if ON_GPU else torch.autocast("cpu", enabled=False)

    def steps():
        for _ in range(STEPS):
            batch = next(batches)
            batch = {k: ([v.to(DEVICE, non_blocking=True) for v in x] if k == "views" else x.to(DEVICE))
                     for k, x in batch.items()}
            with autocast:
                loss, _ = module.compute_loss(batch, epoch=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if ON_GPU:
            torch.cuda.synchronize()
        return float(loss)

    steps()  # warm-up: kernel compilation / autotuning, loader start-up, allocator
    loss = benchmark.pedantic(steps, rounds=3, iterations=1, warmup_rounds=0)
    assert np.isfinite(loss)
    rate = STEPS * BATCH / benchmark.stats.stats.mean
    benchmark.extra_info["images_per_s"] = rate
    _measured[(kernel, loader_name)] = rate


def _write_results() -> None:
    if not _measured:
        return
    base = _measured.get(("torch", "torchvision"))
    rows = [{"kernel": k, "loader": loader, "images_per_s": round(r, 1),
             "vs_torch_torchvision": round(r / base, 3) if base else None}
            for (k, loader), r in sorted(_measured.items())]
    cpu = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    machine = torch.cuda.get_device_name(0) if ON_GPU else cpu
    info = {
        "what": "SimCLR + HEX (adaptive) training step incl. augmentation, images/s",
        "model": "resnet18 (CIFAR stem), 32 px, bf16" if ON_GPU else "tiny CNN, 28 px, fp32",
        "batch": BATCH, "steps_per_round": STEPS, "machine": machine,
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "results": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    tag = ("gpu" if ON_GPU else "cpu") + ("" if BATCH == (256 if ON_GPU else 128) else f"_b{BATCH}")
    (RESULTS / f"step_{tag}.json").write_text(json.dumps(info, indent=2))
    lines = [f"# Training-step throughput ({info['model']}, batch {BATCH})", "",
             f"Machine: {machine}; torch {torch.__version__}; {info['date']}", "",
             "| kernel | loader | images/s | vs torch + torchvision |", "|---|---|---|---|"]
    lines += [f"| {r['kernel']} | {r['loader']} | {r['images_per_s']} | {r['vs_torch_torchvision']} |" for r in rows]
    (RESULTS / f"step_{tag}.md").write_text("\n".join(lines) + "\n")
