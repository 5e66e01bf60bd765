"""What the loss benchmark times, the grid it runs, how it counts rounds, and its results file.

A *case* is one implementation that hexfast offers, at one shape and pass, timed with its
*baselines* of the same shape in the same test, round by round (candidate, then every baseline, in
a rotating order), so that the ratios see the same machine load. Candidates and baselines:

  on a GPU   candidate  triton     hex_loss(kernel="triton"), the fused kernel (what hex_loss runs there)
             baselines  reference  hexfast.reference.hex_reference, eager
                        compiled   torch.compile(hex_reference) (at selected shapes: ~1 min to compile)
                        matmul3    the floor: S = x x^T (forward), then S x and S^T x (the backward's
                                   two products), plain torch.mm of the same shapes and dtype
  on the CPU candidate  torch      hexfast.hex_loss(kernel="torch"), validation included (what a user
                                   gets on the CPU)
             baselines  lightly    lightly's NTXentLoss: the InfoNCE of a widely used SSL library, the
                                   loss one would use without HEX (no threshold; pip install hexfast[bench])
                        released   adaptive HEX computed the way the authors' released code computes it
                                   (released_hex below), the code the paper's numbers came from
                        matmul3    the floor, as above

The Triton kernel is never timed on the CPU: there it runs under the interpreter, which executes
every program in Python and says nothing about the kernel. Loss settings everywhere: adaptive eps,
q = 0.99, w = 0, positive excluded, t = 0.1 (lightly: t = 0.1, its only setting).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

from hexfast.reference import hex_reference

LOSS_KW = dict(temperature=0.1, threshold="adaptive", quantile=0.99, hierarchy_weight=0.0,
               positive_in_denominator=False)
GPU = torch.cuda.is_available()
IMPLS = ("triton", "torch", "reference", "compiled", "matmul3", "lightly", "released")
CANDIDATES = ("triton", "torch")
BASELINES = {"triton": ("reference", "compiled", "matmul3"), "torch": ("lightly", "released", "matmul3")}
LABELS = {"triton": "fused kernel", "torch": "hexfast (torch)", "reference": "eager reference",
          "compiled": "torch.compile reference", "matmul3": "three plain matmuls (floor)",
          "lightly": "lightly NTXentLoss", "released": "released formulation"}

if GPU:
    # n = 2B. The eager reference up to 8192 (at 32768 one fwd+bwd takes seconds and ~30 GB of
    # n^2 intermediates), torch.compile at the target shape only (about a minute of compilation each)
    GRID = [(n, d, dt) for n in (512, 2048, 8192, 32768, 65536) for d in (128, 256)
            for dt in (torch.bfloat16,)]
    GRID += [(2048, 128, torch.float32), (8192, 128, torch.float32)]
    LIMITS = {"reference": 8192, "compiled": 8192, "released": 8192, "lightly": 8192}
    COMPILED_SHAPES = {(8192, 128, torch.bfloat16)}
    # rounds: enough for TARGET_S of candidate time, within [MIN_ROUNDS, MAX_ROUNDS]
    MIN_ROUNDS, MAX_ROUNDS, TARGET_S, WARMUP = 20, 200, 1.0, 5
else:
    # fp32 only: torch.quantile (the released formulation) refuses half precision
    GRID = [(256, 128, torch.float32), (1024, 128, torch.float32), (2048, 128, torch.float32)]
    LIMITS = {}
    COMPILED_SHAPES = set()
    MIN_ROUNDS, MAX_ROUNDS, TARGET_S, WARMUP = 15, 100, 2.0, 3

# One intra-op thread on the CPU unless told otherwise: on a 2-core machine shared with other work
# a 2-thread pool waits at every barrier for a descheduled thread (measured here: a 2.4 ms forward
# with a 360 ms median), which times the scheduler, not the loss. BENCH_THREADS=N changes it.
CPU_THREADS = int(os.environ.get("BENCH_THREADS", "1"))


def skip_reason(candidate: str, n: int, d: int, dtype) -> str | None:
    """Why a case is not timed on this machine (None = it is)."""
    if candidate == "triton" and not GPU:
        return ("no CUDA device: the Triton kernel would run under the interpreter, which executes every "
                "program in Python, so its time says nothing about the kernel (tests/test_kernel_*.py check "
                "its numbers); the CPU cases time hexfast's torch path")
    if candidate == "torch" and GPU:
        return ("on a GPU hexfast runs the fused kernel: the triton cases time it (the eager reference is "
                "their baseline)")
    return None


def baselines_for(candidate: str, n: int, d: int, dtype) -> list[tuple[str, str | None]]:
    """[(baseline, reason it is left out or None)] of a case."""
    out = []
    for name in BASELINES[candidate]:
        reason = None
        if n > LIMITS.get(name, 1 << 62):
            reason = f"its n x n intermediates at 2B = {n} exceed a sensible share of memory"
        elif name == "compiled" and (n, d, dtype) not in COMPILED_SHAPES:
            reason = "torch.compile is timed at the target shape only (about a minute of compilation each)"
        elif name == "lightly" and not lightly_available():
            reason = "lightly is not installed (pip install hexfast[bench])"
        out.append((name, reason))
    return out


def lightly_available() -> bool:
    try:
        import lightly.loss  # noqa: F401
    except Exception:  # ImportError, or a broken install of its many dependencies
        return False
    return True


def released_hex(z1, z2, *, temperature: float = 0.1, quantile: float = 0.99, tau_plus: float = 0.1,
                 beta: float = 1.0):
    """Adaptive HEX the way the released code computes it (docs/hex-spec.md §1-2): the full 2B x 2B
    similarity and logit matrices, torch.quantile per row (a full sort of every row), dense float
    masks, exp of the whole matrix, and the hard-negative (HCL) term, which always clamps to its floor
    (2B - 2) e^{-1/t}. Its value is hexfast's reference plus that constant (tested); the point here
    is its cost, which is that of the code the paper's numbers came from."""
    x = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n, b = x.shape[0], x.shape[0] // 2
    sim = x @ x.T
    eps = torch.quantile(sim, quantile, dim=1, interpolation="nearest").mean()
    logits = sim / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = 1.0 - torch.eye(n, device=x.device)
    pos = torch.eye(b, device=x.device).repeat(2, 2) * not_self
    # hierarchical negatives and the positive leave the denominator (w = 0, decoupled InfoNCE)
    taken = (((sim > eps).float() + pos) * not_self > 0.5).float()
    regular = not_self - taken
    e = logits.exp()
    hier_sum = (e * taken).sum(1, keepdim=True)
    m = n - 2
    imp = (beta * hier_sum.log()).exp()
    reweight = (imp * taken * logits).sum(dim=-1) / imp.mean(dim=-1)
    hcl = (-tau_plus * m * (pos * logits).sum().exp() + reweight) / (1 - tau_plus)
    hcl = hcl.clamp(min=m * math.exp(-1 / temperature))
    log_prob = logits - hcl.unsqueeze(1) - (e * regular).sum(1, keepdim=True).log()
    return -((pos * log_prob).sum(1) / pos.sum(1)).mean()


_compiled = None


def loss_fn(impl: str):
    """fn(z1, z2) -> loss for one implementation (None for the matmul floor)."""
    global _compiled
    if impl == "reference":
        return lambda z1, z2: hex_reference(z1, z2, **LOSS_KW)[0]
    if impl == "torch":
        from hexfast.hex_loss import hex_loss

        return lambda z1, z2: hex_loss(z1, z2, kernel="torch", **LOSS_KW)
    if impl == "compiled":
        if _compiled is None:
            _compiled = torch.compile(lambda z1, z2: hex_reference(z1, z2, **LOSS_KW)[0])
        return _compiled
    if impl == "triton":
        from hexfast.hex_loss import hex_loss

        return lambda z1, z2: hex_loss(z1, z2, kernel="triton", **LOSS_KW)
    if impl == "lightly":
        from lightly.loss import NTXentLoss

        return NTXentLoss(temperature=LOSS_KW["temperature"])
    if impl == "released":
        return lambda z1, z2: released_hex(z1, z2, temperature=LOSS_KW["temperature"], quantile=LOSS_KW["quantile"])
    if impl == "matmul3":
        return None
    raise ValueError(f"unknown implementation {impl!r}; valid: {', '.join(IMPLS)}")


def make_step(impl: str, n: int, d: int, dtype, backward: bool):
    """A zero-argument callable running one (synchronised) forward, or forward + backward."""
    dev = "cuda" if GPU else "cpu"
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


def rounds_for(seconds_per_round: float) -> int:
    """Timed rounds for a case whose round (candidate + baselines) takes `seconds_per_round`."""
    if not seconds_per_round > 0:
        return MAX_ROUNDS
    return max(MIN_ROUNDS, min(MAX_ROUNDS, math.ceil(TARGET_S / seconds_per_round)))


def time_once(step, clock=time.perf_counter) -> float:
    t0 = clock()
    step()
    return clock() - t0


def run_interleaved(pedantic, candidate, baselines: dict, rounds: int, clock=time.perf_counter) -> dict:
    """Time `candidate` with `pedantic` (pytest-benchmark's, or a stand-in) for `rounds` rounds and,
    before each of its rounds, every baseline once in a rotating order: {baseline: [seconds]}. A load
    that comes and goes then hits the candidate and its baselines alike, and the ratio of medians
    stays the ratio of costs (timing each implementation's rounds one after the other does not)."""
    names = list(baselines)
    samples = {name: [] for name in names}
    turn = [0]

    def before_round():
        k = turn[0] % max(len(names), 1)
        for name in names[k:] + names[:k]:
            samples[name].append(time_once(baselines[name], clock))
        turn[0] += 1

    pedantic(candidate, setup=before_round, rounds=rounds, warmup_rounds=0)
    return samples


def spread(samples: list[float]) -> dict:
    """Median and interquartile range of timings (seconds)."""
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return {"median_s": statistics.median(samples), "iqr_s": q[2] - q[0], "min_s": min(samples),
            "rounds": len(samples)}


def peak_memory(step) -> int | None:
    """Peak bytes allocated by one call above what was allocated before (CUDA only)."""
    if not GPU:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    return torch.cuda.max_memory_allocated() - base


def machine() -> dict:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "commit": _commit()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        import lightly

        info["lightly"] = lightly.__version__
    except Exception:
        info["lightly"] = None
    if GPU:
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        from kernels.config import dot_precision

        info["fp32_dot"] = dot_precision(torch.float32)  # the kernel's fp32 dot (HEXFAST_FP32_DOT)
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    else:
        info["gpu"] = None
        info["threads"] = torch.get_num_threads()
        try:
            with open("/proc/cpuinfo") as fh:
                info["cpu"] = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")),
                                   info["cpu"])
        except OSError:
            pass
        try:
            info["load_avg_1min_at_start"] = os.getloadavg()[0]  # other work on the machine while timing
        except OSError:
            pass
    return info


def _commit() -> str | None:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def case_ratios(case: dict) -> dict:
    """{baseline: ratio}: baseline time / candidate time (how many times faster the candidate is),
    except for the floor: candidate time / floor time (how many floors the candidate costs)."""
    t = case["median_s"]
    out = {}
    for name, b in case["baselines"].items():
        if b.get("median_s") is None:
            continue
        out[name] = t / b["median_s"] if name == "matmul3" else b["median_s"] / t
    return out


def ratio_table(results: list[dict]) -> str:
    """Markdown: one row per case, its median time and its ratio to every baseline of the same shape
    and run: "speed-up over X" = X's time / ours (above 1: ours is faster); "ours / floor" = how many
    times the three plain matmuls our time is."""
    if not results:
        return ""
    names = []
    for r in results:
        for name in r["baselines"]:
            if name not in names:
                names.append(name)
    head = ["2B", "D", "dtype", "pass", f"{LABELS[results[0]['impl']]} ms", "rounds"]
    for name in names:
        head += [f"{LABELS[name]} ms", "ours / floor" if name == "matmul3" else f"speed-up over {LABELS[name]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(results, key=lambda r: (r["dtype"], r["n"], r["d"], r["pass"] != "forward")):
        ratios = case_ratios(r)
        cells = [f"{r['n']:,}", str(r["d"]), r["dtype"].replace("float", "fp").replace("bfp16", "bf16"), r["pass"],
                 _ms(r["median_s"]), str(r["rounds"])]
        for name in names:
            b = r["baselines"].get(name, {})
            cells += [_ms(b.get("median_s")) if b.get("median_s") is not None else "-",
                      f"{ratios[name]:.2f}x" if name in ratios else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(seconds) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:,.0f}"


_MACHINE = None
_PATH = None


def write_results(results: list[dict], directory: str) -> str:
    """Write (or rewrite: called after every case, so a run cut short keeps what it measured)."""
    global _MACHINE, _PATH
    if _MACHINE is None:
        _MACHINE = machine()
    info = _MACHINE
    if _PATH is None:
        tag = (info["gpu"] or "cpu").replace(" ", "_").replace("/", "_")
        stamp = info["date"][:19].replace(":", "").replace("-", "")
        _PATH = os.path.join(directory, f"loss_{tag}_{stamp}.json")
    os.makedirs(directory, exist_ok=True)
    with open(_PATH, "w") as f:
        json.dump({"format": 2, "machine": info, "loss": LOSS_KW, "results": results,
                   "table": ratio_table(results).splitlines()}, f, indent=1)
    return _PATH
