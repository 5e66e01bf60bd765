"""One tile configuration for all passes, swept on a GPU: forward+backward time per configuration.

    python -m bench._tile_sweep [out.json]     (CUDA; 2B = 8,192 and 65,536, D = 128, bf16, adaptive)

Every pass must use the same tiles (the similarities must agree bit for bit), so a configuration is
one HEXFAST_TILES="BLOCK,WARPS,STAGES" for the whole kernel. Median of 20 runs after 3 warm-ups,
synchronised; each configuration's loss is checked against the first one's.
"""
import json
import os
import statistics
import sys
import time

import torch

from bench._loss_impls import LOSS_KW, machine

CONFIGS = ("64,8,2", "64,4,2", "64,4,3", "128,8,2", "128,8,3", "128,4,2")
SIZES = (8192, 65536)


def _time(fn, reps: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(n: int, tiles: str, d: int = 128) -> dict:
    from hexfast.hex_loss import hex_loss

    os.environ["HEXFAST_TILES"] = tiles
    g = torch.Generator(device="cuda").manual_seed(0)
    z1 = torch.randn(n // 2, d, device="cuda", generator=g).bfloat16().requires_grad_()
    z2 = torch.randn(n // 2, d, device="cuda", generator=g).bfloat16().requires_grad_()

    def step():
        loss = hex_loss(z1, z2, kernel="triton", **LOSS_KW)
        torch.autograd.grad(loss, [z1, z2])
        return loss

    try:
        loss = step().item()
        return dict(n=n, d=d, tiles=tiles, fwd_bwd_ms=1e3 * _time(step), loss=loss)
    except Exception as err:  # a configuration the GPU cannot run (shared memory, registers)
        return dict(n=n, d=d, tiles=tiles, error=repr(err)[:300])


if __name__ == "__main__":
    rows = [run(n, t) for n in SIZES for t in CONFIGS]
    for r in rows:
        print(r)
    out = sys.argv[1] if len(sys.argv) > 1 else "tile_sweep.json"
    with open(out, "w") as f:
        json.dump(dict(machine=machine(), rows=rows), f, indent=1)
