"""2B = 262,144 (and other large sizes) through the fused kernel on a GPU: time and peak memory.

    python -m bench._loss_big [n ...]      (CUDA only; prints one line per size)

The eager reference cannot run here (one n x n fp32 matrix alone is 275 GB at n = 262,144).
"""
import sys
import time

import torch

from bench._loss_impls import LOSS_KW, machine


def run(n: int, d: int = 128, dtype=torch.bfloat16) -> dict:
    from hexfast.hex_loss import hex_loss

    b = n // 2
    z1 = torch.randn(b, d, device="cuda", dtype=dtype, requires_grad=True)
    z2 = torch.randn(b, d, device="cuda", dtype=dtype, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = {}
    for _ in range(2):  # the first includes compilation
        t0 = time.perf_counter()
        loss, stats = hex_loss(z1, z2, kernel="triton", return_stats=True, **LOSS_KW)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        torch.autograd.grad(loss, [z1, z2])
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        out = dict(n=n, d=d, dtype=str(dtype), forward_s=t1 - t0, backward_s=t2 - t1,
                   loss=loss.item(), eps=stats["eps"].item(),
                   hier_fraction=stats["hier_fraction"].item())
    out["peak_bytes_above_inputs"] = torch.cuda.max_memory_allocated() - base
    return out


if __name__ == "__main__":
    print(machine())
    for n in [int(a) for a in sys.argv[1:]] or [262144]:
        print(run(n), flush=True)
