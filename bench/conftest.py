"""Set-up shared by every benchmark, and the loss benchmark's ratio table at the end of the run.

Without a CUDA device the Triton kernels run under the interpreter, which must be switched on
*before* any kernel module is imported, so it happens here at collection time (the loss benchmark
never times it; other suites import the kernels).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


def pytest_terminal_summary(terminalreporter):
    """Each loss case against the baselines of its shape, measured in the same run."""
    try:
        from bench import _loss_impls as L
        from bench.test_loss_bench import RESULTS
    except ImportError:
        return
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("loss: hexfast vs the baselines of the same shape, same run (median of interleaved rounds)")
    tr.write_line(L.ratio_table(RESULTS))
    left = {f"{name}: {why}" for r in RESULTS for name, why in r.get("left_out", {}).items()}
    for line in sorted(left):
        tr.write_line(f"not timed: {line}")
    if L._PATH:
        tr.write_line(f"written to {os.path.relpath(L._PATH)}")
