"""Training-step throughput in one process: {torch, triton} x {torchvision, dali} x {eager, compiled}.

One step = the next batch from the loader (augmentation included: that is what DALI changes) +
forward and backward of backbone, method and probes + the LARS step + the queue/EMA updates, for
SimCLR + HEX (adaptive), the README's main job. Per case: images/s over the timed steps, the
data-wait fraction (host time blocked in the loader / wall time; near 0 when the loader keeps
ahead), the first steps' time (compilation, autotuning, CUDA graph capture, loader start-up) and,
on a GPU, the host syncs of one step counted by torch.cuda.set_sync_debug_mode. Then the loader
alone (all cores, two-view samples/s) on 32 px arrays and 224 px JPEGs. A JSON (and a Markdown
table) is written after every case, so a run cut short keeps what it measured.

On a GPU: the full grid, batch 256 and 1024, ResNet-18 with the CIFAR stem at 32 px on synthetic
CIFAR-sized arrays, bf16 autocast, channels-last, compiled = train.compile=reduce-overhead; most
important cases first (plan(): the torch + torchvision eager baseline, the issue's target triton +
dali + reduce-overhead, the loaders at 32 px, those two steps at batch 1024; then the other eager
cases, the loaders at 224 px, and last the other compiled cases, which spend most of their time
compiling). Targets (issue 14): target >= 4x 5,837 img/s at batch 256 and >= 2x the baseline of
the same run; DALI loader >= 3x the torchvision DataLoader at 32 px.
On the CPU: a reduced subset, labelled as such in the output: kernel torch only (under the
Triton interpreter every program runs in Python, so it would time the interpreter), eager only
(compiling on the CPU times Inductor's C++ build; tests/test_train_compile.py checks the compiled
step's results), the tiny CNN at 28 px on the embedded Fashion-MNIST subset, batch 128.

    python -m bench.test_step_bench OUT_DIR            # writes OUT_DIR/step_grid_<device>.{json,md}
    pytest bench/test_step_bench.py --benchmark-only   # the same into bench/results/
Environment: STEP_BENCH_BATCHES (e.g. "256"), STEP_BENCH_STEPS (timed steps per case).
"""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

from train import config as C
from train.data import ImageDataset, augment_preset, dali_available, load_dataset, make_pretrain_loader
from train.data.torch_loader import default_workers
from train.module import SSLModule

RESULTS = Path(__file__).resolve().parent / "results"
ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
BATCHES = [int(b) for b in os.environ.get("STEP_BENCH_BATCHES", "256,1024" if ON_GPU else "128").split(",")]
STEPS = int(os.environ.get("STEP_BENCH_STEPS", 30 if ON_GPU else 15))
WARMUP = 8 if ON_GPU else 2   # reduce-overhead records its CUDA graphs after a few warm-up runs
COMPILED = "reduce-overhead"
SUBSET = None if ON_GPU else (
    "CPU subset: kernel torch only (the Triton interpreter would time Python), eager only (compiling on "
    "the CPU times Inductor's C++ build), tiny CNN at 28 px, batch 128; the full grid runs on a GPU")


def plan() -> list[tuple]:
    """The cases in order of importance, so that a run cut short by its time limit keeps what matters:
    ("step", batch, kernel, loader, compile) or ("loader", px, loader)."""
    if not ON_GPU:
        return [("step", b, "torch", lo, "off") for b in BATCHES for lo in ("torchvision", "dali")] + \
            [("loader", px, lo) for px in (32, 224) for lo in ("torchvision", "dali")]
    first, rest = BATCHES[0], BATCHES[1:]
    eager = [("triton", "torchvision", "off"), ("torch", "dali", "off"), ("triton", "dali", "off")]
    compiled = [("torch", "torchvision", COMPILED), ("triton", "torchvision", COMPILED), ("torch", "dali", COMPILED)]
    key = [("torch", "torchvision", "off"), ("triton", "dali", COMPILED)]  # the baseline, the target
    cases = [("step", first, *c) for c in key] + [("loader", 32, lo) for lo in ("torchvision", "dali")]
    cases += [("step", b, *c) for b in rest for c in key]
    cases += [("step", b, *c) for b in BATCHES for c in eager] + [("loader", 224, lo) for lo in ("torchvision", "dali")]
    return cases + [("step", b, *c) for b in BATCHES for c in compiled]


# ---------------------------------------------------------------------------------------------
# data


def step_dataset() -> ImageDataset:
    if not ON_GPU:
        return load_dataset("fashion-mnist-small")
    n = 32768  # CIFAR-sized arrays: the loader's work matches CIFAR's
    rng = np.random.default_rng(0)
    return ImageDataset(name="synthetic-32px", images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                        fine=rng.integers(0, 100, n), num_classes=100, image_size=32)


def loader_dataset(px: int, root: Path) -> tuple[ImageDataset, int]:
    """(dataset, batch) for the loader-alone cases: 32 px arrays, or JPEG files cropped to 224 px."""
    rng = np.random.default_rng(0)
    if px == 32:
        n = 16384 if ON_GPU else 4096
        return ImageDataset(name="arrays-32px", images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                            fine=np.zeros(n, np.int64), image_size=32), 256
    from PIL import Image

    n = 1024 if ON_GPU else 64
    folder = root / "jpeg" / "c"
    folder.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, (288, 352, 3), dtype=np.uint8)
    for k in range(n):  # a shifted noise texture, JPEG quality 90 (as bench/test_data_bench.py)
        Image.fromarray(np.roll(base, k, axis=1)).save(folder / f"{k}.jpg", quality=90)
    return load_dataset("imagefolder", root / "jpeg", image_size=224, verify="none"), (128 if ON_GPU else 32)


def _forever(loader):
    while True:
        yield from loader


def _sync():
    if ON_GPU:
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# cases


def _config(kernel: str, compile_mode: str, batch: int) -> C.Config:
    model = {"backbone": "resnet18", "small_stem": "yes"} if ON_GPU else {"backbone": "tiny"}
    return C.from_dict({"method": "simclr", "kernel": kernel, "hex": {"mode": "adaptive", "warmup_epochs": 0},
                        "model": model, "train": {"batch_size": batch, "epochs": 100, "compile": compile_mode,
                                                  "channels_last": ON_GPU}})


def run_step_case(ds: ImageDataset, kernel: str, loader_name: str, compile_mode: str, batch: int) -> dict:
    torch.manual_seed(0)
    module = SSLModule(_config(kernel, compile_mode, batch), num_classes=ds.num_classes,
                       num_coarse=ds.num_coarse if ds.coarse is not None else 0, image_size=ds.image_size,
                       steps_per_epoch=len(ds) // batch).to(DEVICE)
    if ON_GPU:
        module.to(memory_format=torch.channels_last)
    opt = module.configure_optimizers()["optimizer"]
    loader = make_pretrain_loader(ds, augment_preset("symmetric", ds.image_size), batch_size=batch,
                                  loader=loader_name, device=str(DEVICE), num_workers=default_workers())
    batches = _forever(loader)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if ON_GPU else torch.autocast("cpu", enabled=False)
    count = [0]

    def step() -> float:
        t0 = time.perf_counter()
        b = next(batches)
        wait = time.perf_counter() - t0
        with autocast:
            loss, _ = module.compute_loss(b, epoch=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        module.method.commit_queues()
        opt.step()
        count[0] += 1
        module.method.after_optimizer_step(count[0], module.total_steps, module.backbone)
        return wait

    t0 = time.perf_counter()
    for _ in range(WARMUP):
        step()
    _sync()
    first_s = time.perf_counter() - t0
    syncs = None
    if ON_GPU:  # one step with every host sync reported (after the warm-up: graphs recorded)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:  # the synchronize below is ours, outside the mode
                torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0][:160] for w in caught if "synchroniz" in str(w.message)]
        _sync()
    t0 = time.perf_counter()
    waits = sum(step() for _ in range(STEPS))
    _sync()
    wall = time.perf_counter() - t0
    return {"images_per_s": round(STEPS * batch / wall, 1), "data_wait_fraction": round(waits / wall, 3),
            "warmup_s": round(first_s, 1), "steps": STEPS,
            "host_syncs_per_step": None if syncs is None else len(syncs), "sync_examples": (syncs or [])[:3]}


def run_loader_case(ds: ImageDataset, batch: int, loader_name: str) -> dict:
    loader = make_pretrain_loader(ds, augment_preset("asymmetric", 32 if ds.image_size == 32 else 224),
                                  batch_size=batch, loader=loader_name, device=str(DEVICE),
                                  num_workers=default_workers())
    it = _forever(loader)
    for _ in range(2):  # start-up: workers / pipeline build, first allocations
        next(it)
    _sync()
    n = min(len(loader), 40 if ON_GPU else 4)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    _sync()
    wall = time.perf_counter() - t0
    return {"two_view_samples_per_s": round(n * batch / wall, 1), "batches": n, "batch": batch}


# ---------------------------------------------------------------------------------------------
# the grid and its output


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_cores": default_workers(),
            "device": str(DEVICE)}
    try:  # the code measured (a checkout; "+dirty" when it has uncommitted changes)
        head = subprocess.run(["git", "describe", "--always", "--dirty=+dirty"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=20).stdout.strip()
        if head:
            info["commit"] = head
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        info["cpu"] = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    except (OSError, AttributeError):
        info["cpu"] = platform.processor()
    if ON_GPU:
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    for name in ("triton", "torchvision", "lightning"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    if dali_available():
        import nvidia.dali
        info["dali"] = nvidia.dali.__version__
    return info


def _skip_reason(kernel: str, loader_name: str) -> str | None:
    if loader_name == "dali" and not dali_available():
        return "NVIDIA DALI not installed"
    if kernel == "triton" and not ON_GPU:
        return "no GPU: the Triton interpreter would time Python"
    return None


def _write(out_dir: Path, report: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "cpu" if not ON_GPU else re.sub(r"[^a-z0-9]+", "-", report["machine"]["gpu"].lower()).strip("-")
    path = out_dir / f"step_grid_{tag}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Training step and loader throughput ({tag})", "", report["what"], "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()) + ".", ""]
    if report.get("subset"):
        lines += [f"**{report['subset']}.**", ""]
    base = {r["batch"]: r["images_per_s"] for r in report["steps"]
            if (r["kernel"], r["loader"], r["compile"]) == ("torch", "torchvision", "off") and "images_per_s" in r}
    lines += ["| batch | kernel | loader | compile | images/s | vs torch+torchvision eager | data wait | "
              "warm-up s | host syncs / step |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["steps"]:
        if "images_per_s" not in r:
            lines.append(f"| {r['batch']} | {r['kernel']} | {r['loader']} | {r['compile']} | "
                         f"{r.get('skipped') or 'error: ' + r.get('error', '')[:80]} | | | | |")
            continue
        ratio = round(r["images_per_s"] / base[r["batch"]], 2) if r["batch"] in base else "-"
        syncs = "-" if r["host_syncs_per_step"] is None else r["host_syncs_per_step"]
        lines.append(f"| {r['batch']} | {r['kernel']} | {r['loader']} | {r['compile']} | {r['images_per_s']} | "
                     f"{ratio} | {r['data_wait_fraction']:.1%} | {r['warmup_s']} | {syncs} |")
    lines += ["", "Loader alone (all cores, asymmetric preset, two-view samples/s):", "",
              "| data | loader | samples/s |", "|---|---|---|"]
    for r in report["loaders"]:
        value = r.get("two_view_samples_per_s") or r.get("skipped") or "error: " + r.get("error", "")[:80]
        lines.append(f"| {r['data']} | {r['loader']} | {value} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return path


def run_grid(out_dir: Path, log=print) -> dict:
    report = {
        "what": "SimCLR + HEX (adaptive) training step incl. augmentation; "
                + ("ResNet-18 (CIFAR stem), 32 px, bf16, channels-last" if ON_GPU else "tiny CNN, 28 px, fp32")
                + f"; {STEPS} timed steps after {WARMUP} warm-up steps; compiled = train.compile="
                + (COMPILED if ON_GPU else "(not timed)"),
        "subset": SUBSET, "machine": machine(), "date": time.strftime("%Y-%m-%d"), "steps": [], "loaders": []}
    ds = step_dataset()

    def record(target: list, row: dict, fn) -> None:
        t0 = time.perf_counter()
        try:
            row.update(fn())
        except Exception as err:  # one failing case must not lose the others
            row["error"] = f"{type(err).__name__}: {err}"
            log(traceback.format_exc(limit=3))
        target.append(row)
        log(f"{row}  ({time.perf_counter() - t0:.0f} s)")
        _write(out_dir, report)

    with tempfile.TemporaryDirectory() as tmp:
        loader_data = {}
        for case in plan():
            if case[0] == "loader":
                _, px, loader_name = case
                row = {"data": f"{px} px " + ("arrays" if px == 32 else "JPEG"), "loader": loader_name}
                reason = _skip_reason("torch", loader_name)
                if reason:
                    record(report["loaders"], {**row, "skipped": reason}, dict)
                    continue
                if px not in loader_data:
                    loader_data[px] = loader_dataset(px, Path(tmp))
                record(report["loaders"], row, lambda: run_loader_case(*loader_data[px], loader_name))
                continue
            _, batch, kernel, loader_name, compile_mode = case
            row = {"batch": batch, "kernel": kernel, "loader": loader_name, "compile": compile_mode}
            reason = _skip_reason(kernel, loader_name)
            if reason:
                record(report["steps"], {**row, "skipped": reason}, dict)
                continue
            record(report["steps"], row, lambda: run_step_case(ds, kernel, loader_name, compile_mode, batch))
            torch._dynamo.reset()
    return report


def test_step_grid(benchmark):
    report = benchmark.pedantic(lambda: run_grid(RESULTS), rounds=1, iterations=1)
    done = [r for r in report["steps"] if "images_per_s" in r]
    assert done and not [r for r in report["steps"] if "error" in r], report["steps"]
    assert all(np.isfinite(r["images_per_s"]) and 0 <= r["data_wait_fraction"] <= 1 for r in done)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "gpu_out"))
    print(f"written to {_write(out, run_grid(out))}")
