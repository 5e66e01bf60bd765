"""Loss benchmark: reference (eager), torch.compile(reference), the fused Triton kernel and the
three-matmul floor, forward and forward+backward, over a grid of 2B, D and dtypes (bench/_loss_impls.py).

    pytest bench/test_loss_bench.py --benchmark-only

Each timed call synchronises; warm-up rounds run first (and compile). At the end of the module the
results (median seconds, peak memory above the inputs on CUDA) are written with the machine, GPU,
driver, library versions and date to bench/results/loss_<gpu>_<date>.json, and a table of ratios
against the baselines of the same run is printed.
"""
import os

import pytest
import torch

from bench import _loss_impls as L

RESULTS = []
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if RESULTS:
        path = L.write_results(RESULTS, os.path.join(HERE, "results"))  # the same file, final
        print(f"\n{L.ratio_table(RESULTS)}\nwritten to {os.path.relpath(path, os.path.dirname(HERE))}")


CASES = [(impl, n, d, dt, ps) for (n, d, dt) in L.GRID for impl in L.IMPLS
         for ps in ("forward", "fwd+bwd")]


def _id(case):
    impl, n, d, dt, ps = case
    return f"{impl}-n{n}-d{d}-{str(dt).replace('torch.', '')}-{ps}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_loss(benchmark, case):
    impl, n, d, dtype, ps = case
    reason = L.skip_reason(impl, n, d, dtype)
    if reason:
        pytest.skip(reason)
    if impl == "triton":
        pytest.importorskip("triton")
    if impl == "compiled" and ps == "fwd+bwd" and not torch.cuda.is_available():
        pytest.skip("torch.compile's backward on the CPU adds minutes of compilation for no GPU insight")
    step = L.make_step(impl, n, d, dtype, backward=ps == "fwd+bwd")
    try:
        benchmark.pedantic(step, rounds=L.ROUNDS, warmup_rounds=2 if impl != "compiled" else 3)
        peak = L.peak_memory(step)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        pytest.skip(f"{impl} ran out of GPU memory at 2B = {n}")
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(peak_bytes=peak, impl=impl, n=n, d=d, dtype=str(dtype), pass_=ps)
    RESULTS.append(dict(impl=impl, n=n, d=d, dtype=str(dtype).replace("torch.", ""), **{"pass": ps},
                        median_s=median, peak_bytes=peak))
    L.write_results(RESULTS, os.path.join(HERE, "results"))
