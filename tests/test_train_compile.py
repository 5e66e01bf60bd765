"""train.compile: the compiled training step computes the eager step.

Inductor on the CPU generates C++ for the step's forward and backward; the first compile of a graph
takes tens of seconds on 2 cores, a warm TORCHINDUCTOR_CACHE_DIR (Inductor's on-disk cache, by
default in the system temp folder, so kept between runs on one machine) brings a rerun down to a
few. So the Inductor comparison runs two graphs only (SimCLR, and MoCo v2: an EMA target and key
queues mutated inside the graph); the graph bookkeeping is checked with the "eager" backend, which
captures the same graphs without code generation.

Tolerance: Inductor fuses and reorders float32 reductions, so loss and gradients agree to rounding,
not bit for bit: relative 1e-4 / absolute 1e-6 (the differences measured are ~1e-7 relative).
"""
import pytest
import torch

import hexfast.validate as validate_module
from train import config as C
from train import module as module_lib
from train.module import SSLModule
from train.testing import fake_batch, tiny_config

RTOL, ATOL = 1e-4, 1e-6


def _module(method, compile_mode, **hex_cfg):
    torch.manual_seed(0)
    cfg = tiny_config(method, "adaptive", train={"compile": compile_mode}, hex=hex_cfg)
    return SSLModule(cfg, num_classes=4, num_coarse=2, image_size=12, steps_per_epoch=2)


def _grads(m):
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["simclr", "mocov2"])
def test_compiled_step_equals_eager(monkeypatch, method):
    # the value checks of the HEX loss run for CPU tensors only; a GPU step has none (see
    # tests/test_train_sync.py), and with them the graph would break at each check
    monkeypatch.setattr(validate_module, "values_checked", lambda t: False)
    # scalar C++ instead of SIMD intrinsics: the same graphs, fusions and schedule (what this test is
    # about), compiled in about two thirds of the time
    with torch._inductor.config.patch({"cpp.vec_isa_ok": False}):
        _compare(method)


def _compare(method):
    eager, compiled = _module(method, "off"), _module(method, "default")
    opts = [m.configure_optimizers()["optimizer"] for m in (eager, compiled)]
    for step in range(2):
        batch = fake_batch(seed=step)
        out = []
        for m, opt in zip((eager, compiled), opts):
            opt.zero_grad(set_to_none=True)
            loss, logs = m.compute_loss(batch, epoch=1)
            loss.backward()
            out.append((loss.detach(), logs, _grads(m)))
            opt.step()
            m.method.after_optimizer_step(step + 1, 4, m.backbone)
        (l0, logs0, g0), (l1, logs1, g1) = out
        torch.testing.assert_close(l1, l0, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(logs1["hex"]["eps"], logs0["hex"]["eps"], rtol=RTOL, atol=ATOL)
        assert g0.keys() == g1.keys() and len(g0) > 0
        for name in g0:
            torch.testing.assert_close(g1[name], g0[name], rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")
    # buffers mutated inside the graph (queues, their write position, BatchNorm statistics, EMA targets)
    for (name, b0), (_, b1) in zip(eager.named_buffers(), compiled.named_buffers()):
        torch.testing.assert_close(b1, b0, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")
    assert "_compiled_loss" in compiled.__dict__ and "_compiled_loss" not in eager.__dict__


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_one_graph_per_hex_setting_not_per_epoch(monkeypatch, mode):
    """SimCLR with one warm-up epoch: InfoNCE at epochs 0-1, HEX from 2 on: two graphs for 5 epochs.
    (reduce-overhead on the CPU: no CUDA graphs, the same graphs as default.)"""
    monkeypatch.setattr(validate_module, "values_checked", lambda t: False)
    monkeypatch.setattr(module_lib, "COMPILE_OPTIONS", {mode: {"backend": "eager"}})
    torch._dynamo.reset()
    m = _module("simclr", mode, warmup_epochs=1)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for epoch in range(5):
        loss, _ = m.compute_loss(fake_batch(seed=epoch), epoch=epoch)
        loss.backward()
    assert sorted(m._graph_epochs.values()) == [0, 2]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames == 2


def test_compile_config_is_checked():
    assert C.from_dict({"train": {"compile": "reduce-overhead"}}).train.compile == "reduce-overhead"
    with pytest.raises(C.ConfigError, match="train.compile.*off.*default.*reduce-overhead"):
        C.from_dict({"train": {"compile": "max-autotune"}})
    with pytest.raises(C.ConfigError, match="fixed_schedule=cos.*every epoch"):
        C.from_dict({"train": {"compile": "default"}, "hex": {"mode": "fixed", "fixed_schedule": "cos"}})
    C.from_dict({"train": {"compile": "default"}, "hex": {"mode": "fixed", "fixed_schedule": "step"}})
