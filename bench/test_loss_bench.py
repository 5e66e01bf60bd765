"""Loss benchmark: how much faster is hexfast than what one would use otherwise, per shape.

    pytest bench/test_loss_bench.py --benchmark-only

Each case times one hexfast implementation (the fused kernel on a GPU, hexfast's torch path on the
CPU) and, in the same test, its baselines of the same shape (bench/_loss_impls.py names them),
interleaved round by round so that all of them see the same machine load. Warm-up rounds run first
(and compile); the number of timed rounds is chosen per case for a stable median. pytest-benchmark's
own table groups the candidates by shape; the ratios to the baselines (each baseline's median over
the candidate's, the floor inverted) are in the summary table printed at the end, in the JSON
written to bench/results/loss_<machine>_<date>.json (with the machine, library versions, commit and
load), and in each case's extra_info. `python -m bench.perf_table FILE.json` turns that JSON into
the README's performance table.
"""
import os

import pytest
import torch

from bench import _loss_impls as L

RESULTS = []
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module", autouse=True)
def _threads():
    if L.GPU:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(L.CPU_THREADS)
    yield
    torch.set_num_threads(before)


CASES = [(impl, n, d, dt, ps) for (n, d, dt) in L.GRID for impl in L.CANDIDATES for ps in ("forward", "fwd+bwd")]


def _id(case):
    impl, n, d, dt, ps = case
    return f"{impl}-n{n}-d{d}-{str(dt).replace('torch.', '')}-{ps}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_loss(benchmark, case):
    impl, n, d, dtype, ps = case
    reason = L.skip_reason(impl, n, d, dtype)
    if reason:
        pytest.skip(reason)
    backward = ps == "fwd+bwd"
    benchmark.group = f"loss 2B={n} D={d} {str(dtype).replace('torch.', '')} {ps}"
    try:
        candidate = L.make_step(impl, n, d, dtype, backward)
        baselines, left_out = {}, {}
        for name, why in L.baselines_for(impl, n, d, dtype):
            if why:
                left_out[name] = why
            else:
                baselines[name] = L.make_step(name, n, d, dtype, backward)
        steps = {impl: candidate, **baselines}
        for step in steps.values():  # warm-up (compilation included)
            for _ in range(L.WARMUP):
                step()
        per_round = sum(L.time_once(step) for step in steps.values())
        samples = L.run_interleaved(benchmark.pedantic, candidate, baselines, L.rounds_for(per_round))
        peaks = {name: L.peak_memory(step) for name, step in steps.items()}
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        pytest.skip(f"out of GPU memory at 2B = {n}")
    if benchmark.stats is None:  # --benchmark-disable: run once as a test, nothing timed
        return
    own = list(benchmark.stats.stats.data)
    record = dict(impl=impl, n=n, d=d, dtype=str(dtype).replace("torch.", ""), **{"pass": ps},
                  **L.spread(own), peak_bytes=peaks[impl],
                  baselines={name: {**L.spread(s), "peak_bytes": peaks[name]} for name, s in samples.items()},
                  left_out=left_out)
    record["ratios"] = L.case_ratios(record)
    benchmark.extra_info.update(ratios=record["ratios"], peak_bytes=peaks, left_out=left_out)
    RESULTS.append(record)
    L.write_results(RESULTS, os.path.join(HERE, "results"))
