"""Where the fused kernel's time goes: torch.profiler over one forward+backward (CUDA only).

    python -m bench._loss_profile [n ...]
"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from bench._loss_impls import make_step

if __name__ == "__main__":
    for n in [int(a) for a in sys.argv[1:]] or [512, 8192]:
        step = make_step("triton", n, 128, torch.bfloat16, backward=True)
        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
        print(f"=== 2B = {n}, D = 128, bf16, 5 x fwd+bwd")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=40))
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=10, max_name_column_width=40))
