"""Counting host synchronisations of a training loop on the CPU (what a GPU step must not do).

On a GPU, an operation whose result the host needs (a Python number from a tensor, an output size
that depends on values, a device-to-host copy) stalls the CPU until the device has finished all
queued work: the step can no longer run ahead of the GPU, and at small batches the GPU idles.
`HostSyncCounter` is a TorchDispatchMode that records such operations, so that a CPU test can
require none in a training step outside the logging cadence. `torch.cuda.set_sync_debug_mode`
checks the same on a GPU (bench/test_step_bench.py runs a step under it).

What counts (one list, `SYNC_OPS`, plus the tensor methods in `SYNC_METHODS` that return host
data without a dispatch) -- and only for tensors that would live on the device: a tensor is on
the host only when it was made from a Python constant (`torch.tensor(0.5)`, lifted by
`aten.lift_fresh`) or computed from such tensors alone; everything else (parameters, batches,
factory outputs, numpy-backed tensors) counts as device data. That is conservative: a CPU-only
constant built by a factory call (`torch.zeros(3)`) counts as device data too.

Not seen on the CPU: blocking host-to-device copies (`torch.tensor(x, device=cuda)`, `.to(cuda)`
of pageable memory). They are synchronous on a GPU; the GPU check above catches them.
"""
from __future__ import annotations

import traceback
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten

# Operators that make the host wait for the device (CUDA semantics): a value read on the host, or an
# output shape that depends on the values.
SYNC_OPS = {
    aten._local_scalar_dense.default: "reads a value on the host (.item(), float(), int(), bool(), if t:)",
    aten.is_nonzero.default: "truth value of a tensor",
    aten.equal.default: "torch.equal",
    aten.allclose.default: "torch.allclose",
    aten.nonzero.default: "output size depends on values (nonzero / boolean indexing / torch.where(c))",
    aten.masked_select.default: "output size depends on values",
    aten._unique2.default: "output size depends on values (torch.unique)",
    aten.unique_dim.default: "output size depends on values (torch.unique)",
    aten.unique_consecutive.default: "output size depends on values",
    aten.bincount.default: "output size depends on the maximum value",
    aten.histc.default: "min/max read on the host when not given",
    aten._linalg_check_errors.default: "linalg error check reads the info tensor",
}
# repeat_interleave with a tensor of repeats needs their sum on the host unless output_size is given
_REPEAT_INTERLEAVE = aten.repeat_interleave.Tensor
# indexing with a boolean mask is a nonzero under the hood
_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
# Tensor methods that hand host data back without a dispatch (they would copy device -> host)
SYNC_METHODS = ("tolist", "numpy", "cpu", "__array__")


@dataclass
class Sync:
    op: str
    why: str
    where: str          # the innermost frames of the project's code that called it
    tag: object = None  # what the counter's `tag` held at the time (e.g. the training step)


class HostSyncCounter(TorchDispatchMode):
    """Records host syncs on device data in `syncs`; `tag` (set by the caller) labels each record."""

    def __init__(self):
        super().__init__()
        self.syncs: list[Sync] = []
        self.tag = None
        self._host = WeakIdKeyDictionary()  # tensors known to be host data

    # ---------------------------------------------------------------- host/device bookkeeping
    def _is_device(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t not in self._host

    def _record(self, op: str, why: str) -> None:
        self.syncs.append(Sync(op, why, _caller(), self.tag))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat = [a for a in _flatten((args, kwargs)) if isinstance(a, torch.Tensor)]
        on_device = any(self._is_device(a) for a in flat)
        if func in SYNC_OPS and on_device:
            self._record(str(func), SYNC_OPS[func])
        elif func is _REPEAT_INTERLEAVE and kwargs.get("output_size") is None and on_device:
            self._record(str(func), "repeats summed on the host (pass output_size)")
        elif func in _INDEX_OPS and on_device and any(
                a is not None and a.dtype in (torch.bool, torch.uint8) for a in _flatten(args[1:2])
                if isinstance(a, torch.Tensor)):
            self._record(str(func), "boolean-mask indexing (a nonzero)")
        out = func(*args, **kwargs)
        host = func is aten.lift_fresh.default or (flat and not on_device)
        if host:
            for t in _flatten(out):
                if isinstance(t, torch.Tensor):
                    self._host[t] = True
        return out

    # ---------------------------------------------------------------- non-dispatching reads
    @contextmanager
    def _patched_methods(self):
        saved = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}
        counter = self

        def wrap(name, original):
            def method(t, *a, **k):
                if counter._is_device(t):
                    counter._record(f"Tensor.{name}", "copies device data to the host")
                return original(t, *a, **k)
            return method

        for name, original in saved.items():
            setattr(torch.Tensor, name, wrap(name, original))
        try:
            yield
        finally:
            for name, original in saved.items():
                setattr(torch.Tensor, name, original)

    def __enter__(self):
        self._methods = self._patched_methods()
        self._methods.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._methods.__exit__(*exc)


def _flatten(x):
    if isinstance(x, (list, tuple)):
        for v in x:
            yield from _flatten(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _flatten(v)
    else:
        yield x


def _caller(depth: int = 3) -> str:
    """The innermost frames outside torch / this module: where the sync was asked for."""
    frames = [f for f in traceback.extract_stack()[:-2]
              if "/torch/" not in f.filename and not f.filename.endswith("hostsync.py")]
    return " <- ".join(f"{f.filename.rsplit('/', 2)[-2:][-1]}:{f.lineno} {f.name}" for f in reversed(frames[-depth:]))
