"""Threshold schedules: values at chosen epochs, the released forms, checkpoint round trips, errors."""

import io
import math

import pytest
import torch

from hexfast.hex_loss import HEXInputError, HEXTypeError, hex_loss
from hexfast.rules import Rule
from hexfast.thresholds import INFONCE, SCHEDULES, HexSettings, build_schedule


def test_registry_names():
    assert list(SCHEDULES) == ["none", "adaptive", "step", "cos", "cos_released", "groups"]
    for name, cls in SCHEDULES.items():
        assert cls.name == name and build_schedule(name).name == name


def test_none_is_infonce_every_epoch():
    s = build_schedule("none")
    assert s(0) == s(500) == INFONCE == HexSettings(Rule("none"), hierarchy_weight=1.0, positive_in_denominator=True)


def test_adaptive_simclr_warmup_is_infonce_while_epoch_le_warmup():
    s = build_schedule("adaptive")  # released defaults: warm_epoch 10, q 0.99
    assert s(0) == s(10) == INFONCE  # `current_epoch <= warm_epoch`: epochs 0..10
    assert s(11) == HexSettings(Rule("adaptive", quantile=0.99))
    assert s(399) == s(11)
    s = build_schedule("adaptive", warmup_epochs=3, quantile=0.9, hierarchy_weight=0.5, positive_in_denominator=True)
    assert s(3) == INFONCE
    assert s(4) == HexSettings(Rule("adaptive", quantile=0.9), hierarchy_weight=0.5, positive_in_denominator=True)


def test_adaptive_nnclr_warmup_is_a_fixed_raw_cosine():
    s = build_schedule("adaptive", warmup="cosine")
    assert s(10) == HexSettings(Rule("adaptive", value=0.9))
    assert s(10).loss_kwargs()["rule"].value == 0.9
    assert s(11).rule.value is None and s(11).rule.kind == "adaptive"
    off = build_schedule("adaptive", warmup="off")
    assert off(0) == HexSettings(Rule("adaptive"))


def test_step_values():
    s = build_schedule("step", start=0.95, step_down=0.1, epoch_step=50)
    got = [s.value(e) for e in (0, 49, 50, 99, 100, 150, 300)]
    # the released code subtracts once at epochs 50, 100, ... (epoch % epoch_step == 0, epoch != 0)
    want = [0.95, 0.95, 0.95 - 0.1, 0.95 - 0.1, 0.95 - 0.1 - 0.1, 0.95 - 0.1 - 0.1 - 0.1,
            0.95 - 0.1 - 0.1 - 0.1 - 0.1 - 0.1 - 0.1]
    assert got == want
    assert s(100) == HexSettings(Rule("fixed", want[4]))
    assert s.value(1000) == 0.0  # no floor: held at 0 instead of going negative
    floored = build_schedule("step", start=0.95, step_down=0.1, epoch_step=50, floor=0.65)
    assert floored.value(150) == pytest.approx(0.65) and floored.value(400) == 0.65


def test_step_matches_the_released_mutating_loop():
    start, step_down, epoch_step = 0.85, 0.05, 40
    s = build_schedule("step", start=start, step_down=step_down, epoch_step=epoch_step)
    cfg = start  # the released code keeps this in its config and subtracts in place
    for epoch in range(400):
        if epoch % epoch_step == 0 and epoch != 0:
            cfg = cfg - step_down
        assert s.value(epoch) == max(cfg, 0.0), epoch


def test_cos_is_a_true_cosine():
    s = build_schedule("cos", start=0.95, minimum=0.65, total_epochs=400)
    assert s.value(0) == pytest.approx(0.95)
    assert s.value(100) == pytest.approx(0.65 + 0.3 * (1 + math.cos(math.pi / 4)) / 2)
    assert s.value(200) == pytest.approx(0.80)
    assert s.value(400) == pytest.approx(0.65) and s.value(450) == pytest.approx(0.65)
    assert s(200).rule.value == pytest.approx(0.80)
    values = [s.value(e) for e in range(401)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone


def test_cos_released_compounds_like_the_released_loop():
    start, minimum, total = 0.95, 0.65, 400
    s = build_schedule("cos_released", start=start, minimum=minimum, total_epochs=total)
    cfg = start  # released: at batch 0 of every epoch, overwrite the threshold from its last value
    for epoch in range(total + 20):
        cfg = minimum + (cfg - minimum) * (1 + math.cos(math.pi * epoch / total)) / 2
        assert s.value(epoch) == cfg, epoch
    # spec section 3: it reaches ~0.65 by epoch 100, far ahead of the true cosine
    assert abs(s.value(100) - 0.65) < 0.01 < abs(build_schedule("cos").value(100) - 0.65)


def test_groups_mode():
    mode = build_schedule("groups", hierarchy_weight=0.5)(7)
    assert mode.rule.kind == "groups" and mode.hierarchy_weight == 0.5
    z = torch.randn(4, 3)
    loss = hex_loss(z, z + 0.1, groups=torch.tensor([0, 0, 1, 1]), **mode.loss_kwargs())
    assert torch.equal(loss, hex_loss(z, z + 0.1, groups=torch.tensor([0, 0, 1, 1]), hierarchy_weight=0.5))


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_mode_feeds_hex_loss(name):
    s = build_schedule(name)
    z1, z2 = torch.randn(5, 4), torch.randn(5, 4)
    for epoch in (0, 10, 11, 250, 1000):
        mode = s(epoch)
        groups = torch.arange(5) % 2 if mode.rule.kind == "groups" else None
        assert torch.isfinite(hex_loss(z1, z2, groups=groups, **mode.loss_kwargs()))


@pytest.mark.parametrize(
    "name, params",
    [
        ("adaptive", dict(quantile=0.95, warmup_epochs=5, warmup="cosine", warmup_eps=0.8, hierarchy_weight=0.5)),
        ("step", dict(start=0.9, step_down=0.05, epoch_step=7, floor=0.5)),
        ("cos", dict(start=0.85, minimum=0.45, total_epochs=90)),
        ("cos_released", dict(start=0.85, minimum=0.45, total_epochs=90, positive_in_denominator=True)),
        ("groups", dict(hierarchy_weight=0.25)),
        ("none", dict()),
    ],
)
def test_resume_mid_run_gives_identical_thresholds(name, params):
    run = build_schedule(name, **params)
    first = [run(e) for e in range(37)]
    buffer = io.BytesIO()
    torch.save({"schedule": run.state_dict(), "epoch": 37}, buffer)  # a checkpoint at epoch 37
    buffer.seek(0)
    checkpoint = torch.load(buffer)

    resumed = build_schedule(name)  # built from defaults, then restored
    resumed.load_state_dict(checkpoint["schedule"])
    assert resumed == run
    assert [resumed(e) for e in range(checkpoint["epoch"], 120)] == [run(e) for e in range(37, 120)]
    assert [resumed(e) for e in range(37)] == first


def test_load_state_dict_checks_name_and_values():
    s = build_schedule("cos")
    with pytest.raises(HEXInputError, match="state_dict is for schedule 'step', not 'cos'"):
        s.load_state_dict(build_schedule("step").state_dict())
    bad = dict(s.state_dict(), minimum=1.5)
    with pytest.raises(HEXInputError, match="minimum"):
        s.load_state_dict(bad)
    with pytest.raises(HEXInputError, match="unknown parameter.*speed.*valid: hierarchy_weight"):
        s.load_state_dict(dict(s.state_dict(), speed=1))
    assert s == build_schedule("cos")  # a failed load leaves it unchanged


@pytest.mark.parametrize(
    "name, params, error, pattern",
    [
        ("adaptiv", {}, HEXInputError,
         "unknown schedule 'adaptiv'; valid: none, adaptive, step, cos, cos_released, groups"),
        ("step", dict(distance_thresh=0.9), HEXInputError, "unknown parameter.*distance_thresh.*valid: .*start"),
        ("adaptive", dict(warmup="linear"), HEXInputError, "unknown warmup 'linear'; valid: infonce, cosine, off"),
        ("adaptive", dict(quantile=1.0), HEXInputError, "quantile"),
        ("adaptive", dict(warmup_epochs=-1), HEXInputError, "warmup_epochs must be >= 0"),
        ("adaptive", dict(warmup_epochs=2.5), HEXTypeError, "warmup_epochs must be an integer"),
        ("step", dict(start=1.5), HEXInputError, r"start .* must lie in \[0, 1\]"),
        ("step", dict(step_down=-0.1), HEXInputError, "step_down must be >= 0"),
        ("step", dict(epoch_step=0), HEXInputError, "epoch_step must be >= 1"),
        ("step", dict(start=0.5, floor=0.6), HEXInputError, "floor"),
        ("cos", dict(start=0.5, minimum=0.7), HEXInputError, r"minimum \(0.7\) must be <= start \(0.5\)"),
        ("cos_released", dict(total_epochs=0), HEXInputError, "total_epochs must be >= 1"),
        ("groups", dict(hierarchy_weight=-1.0), HEXInputError, "hierarchy_weight must be >= 0"),
        ("none", dict(positive_in_denominator="yes"), HEXTypeError, "True or False"),
    ],
)
def test_bad_schedules_raise(name, params, error, pattern):
    with pytest.raises(error, match=pattern):
        build_schedule(name, **params)


def test_bad_epochs_and_modes_raise():
    s = build_schedule("cos")
    for epoch in (-1, 2.0, True):
        with pytest.raises(HEXInputError, match="epoch must be an integer >= 0"):
            s(epoch)
    with pytest.raises(HEXInputError, match="unknown rule"):
        Rule("soft")
    with pytest.raises(HEXInputError, match="Rule\\('fixed'\\) needs value"):
        Rule("fixed")
    with pytest.raises(HEXInputError, match="used only by rules 'adaptive' and 'fixed'"):
        Rule("none", value=0.9)
