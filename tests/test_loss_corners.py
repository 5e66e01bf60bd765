"""Corners of the loss API: meta tensors, settings that overflow the computation dtype, float16 gradients."""

import warnings

import pytest
import torch

from hexfast.hex_loss import HEXInputError, HEXLoss, HEXPrecisionWarning, hex_loss, hex_rect_loss


def views(batch=8, dim=16, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return tuple((torch.randn(batch, dim, generator=g) * scale).to(dtype) for _ in range(2))


def test_meta_tensors_are_refused_by_name():
    z1, z2 = (torch.empty(8, 16, device="meta") for _ in range(2))
    with pytest.raises(HEXInputError, match="z1 is a meta tensor"):
        hex_loss(z1, z2)
    pos, own = torch.arange(8, device="meta"), torch.full((8,), -1, device="meta")
    with pytest.raises(HEXInputError, match="anchors is a meta tensor"):
        hex_rect_loss(z1, z2, pos, own, rule="none")


@pytest.mark.parametrize("weight", [1e38, 1e39, 2e38])
def test_a_hierarchy_weight_that_overflows_float32_is_refused(weight):
    z1, z2 = views()
    with pytest.raises(HEXInputError, match=r"hierarchy_weight .* too large for torch.float32.*need hierarchy_weight"):
        hex_loss(z1, z2, threshold=0.3, hierarchy_weight=weight)
    # float64 computes in float64, where the same weight fits
    assert torch.isfinite(hex_loss(z1.double(), z2.double(), threshold=0.3, hierarchy_weight=weight))
    # just below the bound the loss is finite
    assert torch.isfinite(hex_loss(z1, z2, threshold=0.3, hierarchy_weight=1e37))


@pytest.mark.parametrize("temperature", [1e-38, 1e-39, 1e-45])
def test_a_temperature_whose_inverse_overflows_is_refused(temperature):
    z1, z2 = views()
    with pytest.raises(HEXInputError, match=r"temperature .* too small for torch.float32.*need temperature >="):
        hex_loss(z1, z2, temperature=temperature)
    with pytest.raises(HEXInputError, match="too small"):
        HEXLoss(temperature=temperature)(z1, z2)
    with pytest.raises(HEXInputError, match="too small"):
        hex_rect_loss(z1, z2, torch.arange(8), torch.full((8,), -1), temperature=temperature, rule="none")
    assert torch.isfinite(hex_loss(z1, z2, temperature=1e-30))  # small but representable: finite


def test_float16_gradients_that_may_overflow_warn():
    z1, z2 = views(scale=1e-6, dtype=torch.float16)
    z1.requires_grad_()
    with pytest.warns(HEXPrecisionWarning, match="z1 is float16 with a row of norm .* float32 or bfloat16"):
        loss = hex_loss(z1, z2, kernel="torch")
    loss.backward()
    assert not torch.isfinite(z1.grad).all()  # what the warning announces
    # the same rows in float32 get finite gradients, and no warning
    a = z1.detach().float().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hex_loss(a, z2.float(), kernel="torch").backward()
    assert torch.isfinite(a.grad).all()


def test_ordinary_float16_inputs_do_not_warn():
    z1, z2 = views(dtype=torch.float16)
    z1.requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hex_loss(z1, z2, kernel="torch").backward()
        hex_loss(views(scale=1e-6, dtype=torch.float16)[0], z2, kernel="torch")  # no gradient wanted: no warning
    assert torch.isfinite(z1.grad).all()
