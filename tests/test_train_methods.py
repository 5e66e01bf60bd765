"""Every method x every --hex mode: a few CPU steps on a tiny backbone.

Checks: finite loss, gradients reach the backbone, the HEX diagnostics are reported, the threshold
schedule moves between epochs, queues and EMA targets change.
"""
import math

import pytest
import torch

from train.config import METHOD_NAMES
from train.module import SSLModule

from train.testing import fake_batch, tiny_config

MODES = ("none", "adaptive", "fixed", "superclass")


def cases():
    for method in METHOD_NAMES:
        for mode in MODES:
            yield method, mode


def make_module(method, mode, **sections):
    torch.manual_seed(0)
    cfg = tiny_config(method, mode, **sections)
    return SSLModule(cfg, num_classes=4, num_coarse=2, image_size=12, steps_per_epoch=2)


@pytest.mark.parametrize("method,mode", list(cases()))
def test_steps_train_the_backbone(method, mode):
    module = make_module(method, mode)
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.05)
    before = {k: v.clone() for k, v in module.method.state_dict().items()}
    for step in range(2):
        opt.zero_grad()
        loss, logs = module.compute_loss(fake_batch(seed=step), epoch=step)
        assert torch.isfinite(loss), (method, mode, loss)
        loss.backward()
        grads = [p.grad for p in module.backbone.parameters()]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0, "no gradient reached the backbone"
        opt.step()
        module.method.after_optimizer_step(step + 1, 4, module.backbone)
        uses_hex = mode != "none" or method == "simclr"
        assert ("hex" in logs) == uses_hex
        if uses_hex:
            stats = logs["hex"]
            assert 0.0 <= float(stats["hier_fraction"]) <= 1.0
            if mode == "none" or mode == "superclass":
                assert math.isnan(float(stats["eps"]))
    after = module.method.state_dict()
    for name in after:  # queues and EMA targets move
        if "queue" in name and name.endswith("rows") or name.startswith("momentum_backbone") and "weight" in name:
            assert not torch.equal(before[name], after[name]), name


@pytest.mark.parametrize("method", ["simclr", "nnclr", "barlow"])
def test_threshold_schedule_advances(method):
    fixed = make_module(method, "fixed").method.hex
    assert fixed.mode(0).rule.value == pytest.approx(0.95)
    assert fixed.mode(1).rule.value == pytest.approx(0.85)
    adaptive = make_module(method, "adaptive").method.hex
    warm, after = adaptive.mode(0), adaptive.mode(1)
    assert after.rule.kind == "adaptive" and after.rule.value is None
    if method in ("nnclr", "all4one"):
        assert warm.rule.value == pytest.approx(0.9)  # raw-cosine warm-up (released NNCLR)
    elif method in ("barlow", "vicreg", "byol", "simsiam"):
        assert warm == after  # released Barlow/VICReg: HEX from epoch 0, no warm-up
    else:
        assert warm.rule.kind == "none" and warm.positive_in_denominator  # InfoNCE warm-up


def test_warmup_override_is_a_config_choice():
    from train import config as C
    from train.hexterm import make_schedule

    cfg = C.from_dict({"method": "barlow", "hex": {"warmup": "infonce", "warmup_epochs": 2}})
    sched = make_schedule(cfg.hex, "barlow", 10)
    assert sched(2).rule.kind == "none" and sched(3).rule.kind == "adaptive"
    with pytest.raises(C.ConfigError, match="warmup"):
        C.from_dict({"hex": {"warmup": "sometimes"}})


def test_hex_none_is_the_plain_loss_for_additive_methods():
    assert make_module("barlow", "none").method.hex is None
    assert make_module("simclr", "none").method.hex.mode(5).rule.kind == "none"  # InfoNCE


def test_superclass_groups_change_the_loss():
    module = make_module("simclr", "superclass")
    module.probe_coarse = None  # the labels below are not coarse classes
    batch = fake_batch()
    a, _ = module.compute_loss(batch, epoch=0)
    batch["coarse"] = torch.arange(16)  # every sample its own group: no hierarchical negatives
    b, logs = module.compute_loss(batch, epoch=0)
    assert float(logs["hex"]["hier_count"]) == 0
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("method", ["simclr", "nnclr"])
def test_triton_kernel_matches_torch_in_the_trainer(method, monkeypatch):
    """--kernel triton (interpreted on the CPU) gives the reference's loss and backbone gradients."""
    import os

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and the Triton interpreter is off")
    pytest.importorskip("triton")
    out = {}
    for kernel in ("torch", "triton"):
        module = make_module(method, "adaptive", kernel=kernel, hex={"quantile": 0.9})
        loss, _ = module.compute_loss(fake_batch(), epoch=1)
        loss.backward()
        out[kernel] = (loss.detach(), module.backbone.body[0].weight.grad.clone())
    torch.testing.assert_close(out["triton"][0], out["torch"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["triton"][1], out["torch"][1], rtol=1e-4, atol=1e-5)


def test_hex_temperature_follows_the_integration():
    assert make_module("mocov2", "adaptive").method.hex.temperature == 0.2   # MoCo's own tau
    assert make_module("nnclr", "adaptive").method.hex.temperature == 0.2
    assert make_module("barlow", "adaptive").method.hex.temperature == 0.1   # hex.temperature


def test_queue_push_larger_than_the_queue_keeps_the_last_rows():
    from train.methods.base import Queue

    queue = Queue(4, 2, normalized_random=False)
    queue.push(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    rows = torch.arange(12.0).view(6, 2)
    queue.push(rows, torch.arange(6))
    # 9 rows pushed in all: the queue holds the last 4 and the pointer sits after the 9th
    assert sorted(queue.labels.tolist()) == [2, 3, 4, 5] and int(queue.ptr) == 9 % 4
    assert torch.equal(queue.rows[queue.labels.argsort()], rows[2:])


def test_mocov2_momentum_rises_to_its_final_value():
    from train import config as C
    from train.methods.base import cosine_momentum

    p = C.from_dict({"method": "mocov2"}).params
    assert (p.momentum, p.final_momentum) == (0.99, 0.999)
    assert cosine_momentum(p.momentum, 100, 100, final=p.final_momentum) == pytest.approx(0.999)
    with pytest.raises(C.ConfigError, match="final_momentum"):
        C.from_dict({"method": "mocov2", "mocov2": {"final_momentum": 0.5}})


def test_all4one_combined_variant_sums_nnclr_with_its_hex_and_keeps_attention_standard():
    """all4one.hex_variant=combined is the released 'combined_adaptive': standard NNCLR + HEX in the
    nnclr term, the attention term standard."""
    batch = fake_batch(seed=0)
    logs = {}
    combined = {"all4one": {"hex_variant": "combined"}}
    for name, mode, sections in (("both", "adaptive", {}), ("combined", "adaptive", combined),
                                 ("standard", "none", {})):
        module = make_module("all4one", mode, **sections)
        torch.manual_seed(1)  # the same dropout masks in the transformer
        logs[name] = module.compute_loss(batch, epoch=5)[1]
    torch.testing.assert_close(logs["combined"]["att_loss"], logs["standard"]["att_loss"])
    torch.testing.assert_close(logs["combined"]["nnclr_loss"],
                               logs["both"]["nnclr_loss"] + logs["standard"]["nnclr_loss"])
    assert not torch.allclose(logs["both"]["att_loss"], logs["standard"]["att_loss"])
