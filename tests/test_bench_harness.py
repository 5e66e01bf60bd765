"""The loss benchmark's harness (bench/): what each case runs, how it is timed against its
baselines, the released formulation and lightly baselines, and the README table made from its JSON."""
import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from bench import _loss_impls as L
from bench import perf_table
from hexfast.reference import hex_reference

ROOT = Path(__file__).resolve().parent.parent


class _Flops(TorchDispatchMode):
    """Counts the FLOPs of every op torch's flop counter knows (matmuls and friends). A dispatch mode,
    not FlopCounterMode, whose module hooks refuse autograd.grad through an nn.Module loss."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def _flops(step) -> int:
    with _Flops() as counter:
        step()
    return counter.total


@pytest.mark.parametrize("impl", ["torch", "reference", "released", "matmul3", "lightly"])
def test_each_pass_does_the_work_its_label_says(impl, monkeypatch):
    """'forward' is one forward, 'fwd+bwd' adds the backward's two products per forward product (a
    swapped label or a backward leaking into the forward case would show here)."""
    if impl == "lightly" and not L.lightly_available():
        pytest.skip("lightly is not installed (pip install hexfast[bench])")
    monkeypatch.setattr(L, "GPU", False)
    n, d = 64, 16
    fwd = _flops(L.make_step(impl, n, d, torch.float32, backward=False))
    both = _flops(L.make_step(impl, n, d, torch.float32, backward=True))
    assert fwd >= 2 * n * n * d  # at least the similarity matrix
    assert both == pytest.approx(3 * fwd, rel=0.05), (impl, fwd, both)


def test_interleaving_keeps_the_ratio_under_a_changing_load():
    """A virtual clock whose 'load' rises tenfold half-way: interleaved rounds still give the
    true 2x ratio; timing the candidate's rounds first, then the baseline's, would give 10x."""
    now = [0.0]
    calls = [0]

    def clock():
        return now[0]

    def costing(seconds):
        def step():
            calls[0] += 1
            now[0] += seconds * (10.0 if calls[0] > 40 else 1.0)
        return step

    candidate, baseline = costing(1.0), costing(2.0)
    own = []

    def pedantic(target, setup, rounds, warmup_rounds):  # pytest-benchmark's call shape
        for _ in range(rounds):
            setup()
            own.append(L.time_once(target, clock))

    samples = L.run_interleaved(pedantic, candidate, {"slow": baseline}, rounds=40, clock=clock)
    assert len(samples["slow"]) == len(own) == 40
    assert statistics.median(samples["slow"]) / statistics.median(own) == pytest.approx(2.0)


def test_rounds_and_skips():
    assert L.MIN_ROUNDS <= L.rounds_for(10.0) == L.MIN_ROUNDS
    assert L.rounds_for(1e-6) == L.MAX_ROUNDS
    assert L.MIN_ROUNDS >= 15  # a median of 3 rounds is not a median
    if not torch.cuda.is_available():
        reason = L.skip_reason("triton", 256, 128, torch.float32)
        assert reason and "interpreter" in reason  # the interpreter is never timed
        assert L.skip_reason("torch", 256, 128, torch.float32) is None
        assert [b for b, _ in L.baselines_for("torch", 256, 128, torch.float32)] == ["lightly", "released", "matmul3"]


def test_released_formulation_is_the_reference_plus_its_constant():
    g = torch.Generator().manual_seed(0)
    b, tau = 96, 0.1
    z1 = torch.randn(b, 32, generator=g, dtype=torch.float64).requires_grad_()
    z2 = torch.randn(b, 32, generator=g, dtype=torch.float64).requires_grad_()
    ours = hex_reference(z1, z2, **L.LOSS_KW)[0]
    theirs = L.released_hex(z1.float(), z2.float(), temperature=tau, quantile=0.99)
    constant = (2 * b - 2) * math.exp(-1 / tau)  # the hard-negative term, always at its floor
    assert theirs.item() == pytest.approx(ours.item() + constant, rel=1e-5)
    ga = torch.autograd.grad(ours, [z1, z2])
    gb = torch.autograd.grad(theirs, [z1, z2])
    for a, c in zip(ga, gb):
        torch.testing.assert_close(c.double(), a, rtol=1e-4, atol=1e-6)


def test_lightly_baseline_is_infonce():
    pytest.importorskip("lightly")
    from hexfast.hex_loss import hex_loss

    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(40, 16, generator=g), torch.randn(40, 16, generator=g)
    theirs = L.loss_fn("lightly")(z1, z2)
    ours = hex_loss(z1, z2, temperature=0.1, threshold="none", positive_in_denominator=True, kernel="torch")
    assert float(theirs) == pytest.approx(float(ours), rel=1e-5)


def _result(impl, n, t, baselines, ps="fwd+bwd"):
    rec = dict(impl=impl, n=n, d=128, dtype="float32", **{"pass": ps}, median_s=t, iqr_s=0.0, min_s=t, rounds=20,
               peak_bytes=None, baselines={k: {"median_s": v} for k, v in baselines.items()}, left_out={})
    rec["ratios"] = L.case_ratios(rec)
    return rec


def test_ratios_are_per_shape_and_the_table_shows_them():
    results = [_result("torch", 256, 0.010, {"lightly": 0.020, "released": 0.005, "matmul3": 0.001}),
               _result("torch", 1024, 0.100, {"lightly": 0.050, "released": 0.400, "matmul3": 0.010})]
    assert results[0]["ratios"] == pytest.approx({"lightly": 2.0, "released": 0.5, "matmul3": 10.0})
    assert results[1]["ratios"] == pytest.approx({"lightly": 0.5, "released": 4.0, "matmul3": 10.0})
    lines = L.ratio_table(results).splitlines()
    assert "speed-up over lightly NTXentLoss" in lines[0] and "ours / floor" in lines[0]
    assert "| 256 |" in lines[2] and "2.00x" in lines[2] and "0.50x" in lines[2]
    assert "| 1,024 |" in lines[3] and "4.00x" in lines[3]


def test_readme_performance_tables_are_generated_from_their_json():
    readme = (ROOT / "README.md").read_text()
    found = perf_table.blocks(readme)
    assert found, "the README holds at least one generated performance table"
    for name, body in found:
        assert (ROOT / name).is_file(), name
        assert body == perf_table.table(ROOT / name), f"README table for {name} differs: python -m bench.perf_table"


def test_perf_table_rewrites_its_block(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = [_result("torch", 256, 0.010, {"lightly": 0.020, "released": 0.005, "matmul3": 0.001})]
    machine = {"cpu": "a CPU", "cpu_count": 2, "threads": 1, "torch": "2.x", "triton": None, "commit": "abc1234",
               "date": "2026-12-02T00:00:00+00:00", "gpu": None}
    Path("r.json").write_text(json.dumps({"format": 2, "machine": machine, "results": results}))
    Path("README.md").write_text("intro\n<!-- perf-table: r.json -->\nold\n<!-- /perf-table -->\nrest\n")
    assert perf_table.main(["r.json", "--readme", "README.md"]) == 0
    text = Path("README.md").read_text()
    assert "old" not in text and "commit abc1234" in text and "2.00x" in text and text.endswith("rest\n")
    assert perf_table.blocks(text)[0][1] == perf_table.table("r.json")
    Path("old.json").write_text(json.dumps({"machine": machine, "results": []}))
    assert perf_table.main(["old.json"]) == 2  # the first format has no ratios per case


def test_step_grid_plan_puts_the_targets_first(monkeypatch):
    """bench/test_step_bench.py on a GPU: a run cut short by STEP_TIMEOUT keeps the baseline, the
    issue's target and the 32 px loaders of both backends, then batch 1024's two; every grid cell
    is in the plan once."""
    import bench.test_step_bench as S

    monkeypatch.setattr(S, "ON_GPU", True)
    monkeypatch.setattr(S, "BATCHES", [256, 1024])
    plan = S.plan()
    assert plan[:6] == [("step", 256, "torch", "torchvision", "off"), ("step", 256, "triton", "dali", S.COMPILED),
                        ("loader", 32, "torchvision"), ("loader", 32, "dali"),
                        ("step", 1024, "torch", "torchvision", "off"), ("step", 1024, "triton", "dali", S.COMPILED)]
    steps = [c[1:] for c in plan if c[0] == "step"]
    grid = {(b, k, lo, c) for b in (256, 1024) for k in ("torch", "triton") for lo in ("torchvision", "dali")
            for c in ("off", S.COMPILED)}
    assert len(steps) == len(grid) and set(steps) == grid
    assert sorted(c[1:] for c in plan if c[0] == "loader") == [(32, "dali"), (32, "torchvision"),
                                                               (224, "dali"), (224, "torchvision")]
    assert all(c[-1] == S.COMPILED for c in plan[-6:])  # the slow compiles last
