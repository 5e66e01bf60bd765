"""The implementations the loss benchmark times, the grid it runs, and its results file.

Implementations (same inputs, adaptive threshold, q = 0.99, w = 0, positive excluded):
  reference  hexfast.reference.hex_reference, eager
  compiled   torch.compile(hex_reference)
  triton     hex_loss(kernel="triton") (the fused kernel)
  matmul3    the floor: S = x x^T (forward), then S x and S^T x (the backward's two products),
             plain torch.mm of the same shapes in the input dtype
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess

import torch

from hexfast.reference import hex_reference

LOSS_KW = dict(temperature=0.1, threshold="adaptive", quantile=0.99, hierarchy_weight=0.0,
               positive_in_denominator=False)
IMPLS = ("reference", "compiled", "triton", "matmul3")

if torch.cuda.is_available():
    # n = 2B. The eager reference up to 8192 (at 32768 one fwd+bwd takes seconds and ~30 GB of
    # n^2 intermediates), torch.compile at two shapes; the kernel and the floor everywhere.
    GRID = [(n, d, dt) for n in (512, 2048, 8192, 32768, 65536) for d in (128, 256)
            for dt in (torch.bfloat16,)]
    GRID += [(2048, 128, torch.float32), (8192, 128, torch.float32)]
    LIMITS = {"reference": 8192, "compiled": 8192, "triton": 1 << 30, "matmul3": 1 << 30}
    # torch.compile costs ~1 min per shape and pass: timed at the target shape only
    COMPILED_SHAPES = {(8192, 128, torch.bfloat16)}
    ROUNDS = 10
else:
    # CPU: the kernel runs only under the Triton interpreter (Python per program): one tiny size.
    GRID = [(256, 128, torch.float32), (1024, 128, torch.float32), (1024, 256, torch.bfloat16)]
    LIMITS = {"reference": 1 << 30, "compiled": 256, "triton": 256, "matmul3": 1 << 30}
    COMPILED_SHAPES = {(256, 128, torch.float32)}
    ROUNDS = 3

SKIP_REASONS = {
    "reference": "the eager reference's n x n intermediates exceed a sensible share of memory",
    "compiled": "torch.compile is timed at selected shapes only (about a minute of compilation each)",
    "triton": "on the CPU the kernel runs under the Triton interpreter: timed at 2B = 256 only",
    "matmul3": "",
}

_compiled = None


def skip_reason(impl: str, n: int, d: int, dtype) -> str | None:
    if n > LIMITS[impl]:
        return SKIP_REASONS[impl]
    if impl == "compiled" and (n, d, dtype) not in COMPILED_SHAPES:
        return SKIP_REASONS[impl]
    return None


def loss_fn(impl: str):
    """fn(z1, z2) -> loss for one implementation."""
    global _compiled
    if impl == "reference":
        return lambda z1, z2: hex_reference(z1, z2, **LOSS_KW)[0]
    if impl == "compiled":
        if _compiled is None:
            _compiled = torch.compile(lambda z1, z2: hex_reference(z1, z2, **LOSS_KW)[0])
        return _compiled
    if impl == "triton":
        from hexfast.hex_loss import hex_loss

        return lambda z1, z2: hex_loss(z1, z2, kernel="triton", **LOSS_KW)
    if impl == "matmul3":
        return None
    raise ValueError(f"unknown implementation {impl!r}; valid: {', '.join(IMPLS)}")


def make_step(impl: str, n: int, d: int, dtype, backward: bool):
    """A zero-argument callable running one (synchronised) forward or forward+backward."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(n + d)
    b = n // 2
    z1 = torch.randn(b, d, device=dev, generator=g).to(dtype).requires_grad_(backward)
    z2 = torch.randn(b, d, device=dev, generator=g).to(dtype).requires_grad_(backward)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    if impl == "matmul3":
        x = torch.cat([z1, z2]).detach()

        def step():
            s = x @ x.T
            if backward:
                s @ x
                s.T @ x
            sync()
        return step
    fn = loss_fn(impl)

    def step():
        loss = fn(z1, z2)
        if backward:
            torch.autograd.grad(loss, [z1, z2])
        sync()
    return step


def peak_memory(step) -> int | None:
    """Peak bytes allocated by one call above what was allocated before (CUDA only)."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    return torch.cuda.max_memory_allocated() - base


def machine() -> dict:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    else:
        info["gpu"] = None
        info["triton_interpreter"] = os.environ.get("TRITON_INTERPRET") == "1"
    return info


def ratio_table(results: list[dict]) -> str:
    """Lines `n D dtype pass  triton ms | x vs reference | x vs compiled | x of the floor`."""
    by_key = {}
    for r in results:
        by_key.setdefault((r["n"], r["d"], r["dtype"], r["pass"]), {})[r["impl"]] = r
    lines = [f"{'2B':>7} {'D':>4} {'dtype':>9} {'pass':>7} {'triton ms':>10} {'ref/tri':>8} "
             f"{'comp/tri':>9} {'tri/floor':>9} {'tri MiB':>8} {'ref MiB':>8}"]
    for (n, d, dt, ps), impls in sorted(by_key.items()):
        tri = impls.get("triton")
        if tri is None:
            continue

        def ratio(other, inverse=False):
            o = impls.get(other)
            if o is None:
                return "-"
            return f"{(tri['median_s'] / o['median_s']) if inverse else (o['median_s'] / tri['median_s']):.2f}"

        def mib(impl):
            r = impls.get(impl)
            return "-" if r is None or r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:.0f}"

        lines.append(f"{n:>7} {d:>4} {dt:>9} {ps:>7} {tri['median_s'] * 1e3:>10.3f} "
                     f"{ratio('reference'):>8} {ratio('compiled'):>9} {ratio('matmul3', True):>9} "
                     f"{mib('triton'):>8} {mib('reference'):>8}")
    return "\n".join(lines)


_MACHINE = None


def write_results(results: list[dict], directory: str) -> str:
    """Write (or rewrite: called after every case, so a run cut short keeps what it measured)."""
    global _MACHINE
    if _MACHINE is None:
        _MACHINE = machine()
    info = _MACHINE
    tag = (info["gpu"] or "cpu").replace(" ", "_").replace("/", "_")
    stamp = info["date"][:19].replace(":", "").replace("-", "")
    path = os.path.join(directory, f"loss_{tag}_{stamp}.json")
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": info, "loss": LOSS_KW, "results": results,
                   "table": ratio_table(results).splitlines()}, f, indent=1)
    return path
