"""No O(n^2) memory anywhere in the fused kernel's forward or backward.

CPU (interpreter): every tensor any torch op creates during forward + backward is recorded through
a TorchDispatchMode; none may come near n^2 elements (the launchers allocate only O(n) row
statistics, O(n * D) gradients and the O(n * capacity) selection buffer).
CUDA: the peak allocated memory above the inputs must stay far below one n x n fp32 matrix.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton")

from hexfast.hex_loss import hex_loss  # noqa: E402


def hex_loss_triton(z1, z2, **kw):
    return hex_loss(z1, z2, kernel="triton", return_stats=True, **kw)


class _Largest(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = (0, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest[0]:
                self.largest = (t.numel(), str(func))
        return out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA variant below measures real memory")
@pytest.mark.parametrize("threshold", ["adaptive", 0.5])
def test_no_quadratic_tensor_on_cpu(threshold, monkeypatch):
    import dataclasses

    import kernels.hex_triton as T

    # at this small n the O(n * CAP) buffer and the sketch would be within 16x of n^2 by their
    # sizes alone: shrink both (exactness is kept by the repairs) so that any n^2 tensor stands out
    plan = T.select_plan
    monkeypatch.setattr(T, "select_plan", lambda n, k: dataclasses.replace(plan(n, k), cap=32))
    monkeypatch.setattr(T, "SKETCH_CHUNK_ELEMENTS", 128 * 256)
    b, d = 512, 8
    n = 2 * b
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(b, d, generator=g).requires_grad_()
    z2 = torch.randn(b, d, generator=g).requires_grad_()
    with _Largest() as mode:
        loss, _ = hex_loss_triton(z1, z2, threshold=threshold, hierarchy_weight=0.5)
        loss.backward()
    numel, op = mode.largest
    assert numel * 16 <= n * n, f"{op} created {numel} elements, n^2 = {n * n}"
    assert z1.grad is not None and torch.isfinite(z1.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_peak_memory_on_cuda(dtype):
    b, d = 16384, 128
    n = 2 * b
    z1 = torch.randn(b, d, device="cuda", dtype=dtype, requires_grad=True)
    z2 = torch.randn(b, d, device="cuda", dtype=dtype, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss, _ = hex_loss_triton(z1, z2, threshold="adaptive", hierarchy_weight=0.5)
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    # O(n) row statistics, O(n D) gradients, the O(n * CAP) collect buffer and the sketch buffer
    # (at most SKETCH_CHUNK_ELEMENTS), against 4 GiB for one n x n fp32 matrix
    assert extra < n * n * 4 / 16, f"peak {extra / 2**20:.1f} MiB above the inputs"
