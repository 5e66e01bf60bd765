"""The backend protocol: the three computations every HEX implementation provides, chosen by name.

A backend is any object (a module or a class) with a `name` and these three functions. Arguments
arrive validated (`hexfast.validate`, once, in the public functions of `hexfast.hex_loss`) and the
rule resolved (`hexfast.rules.Rule`); a backend checks only what it alone knows (the dtypes,
devices and strides it supports).

    square(x, batch, rule, *, temperature, hierarchy_weight, positive_in_denominator, groups)
        -> (loss, stats)
        The two-view case: x = cat[z1, z2] [2B, D], batch = B; row i's positive is (i + B) mod 2B
        and its self is i (`hexfast.reference.square_indices`). An adaptive rule without a value
        (`rule.needs_quantiles`) takes eps = mean over the 2B rows of each row's nearest-rank
        `rule.quantile` of its full cosine row. groups: [2B] long row labels (groups rule) or None.
    rect(anchors, candidates, pos_index, self_index, rule, *, temperature, hierarchy_weight,
         positive_in_denominator, anchor_groups, candidate_groups) -> (loss, stats)
        anchors [M, D] against candidates [N, D]; pos_index [M] long, self_index [M] long (-1 = no
        self). The rule carries its value (an adaptive rule's eps is given: `rule.value`).
        anchor_groups [M] / candidate_groups [N] for the groups rule, else None.
    row_quantiles(anchors, candidates, q) -> [M] float32 (float64 for float64 input), no gradient
        The nearest-rank q-quantile of each row of the cosine similarities (the adaptive eps parts).

loss is the 0-dim mean over the rows (float32; float64 for float64 input) with gradients to the
embeddings; stats is `hexfast.reference.hex_stats(...)`: eps, hier_fraction, hier_count, neg_count,
empty_rows, rows (detached). The semantics are those of `hexfast.reference` (the spec).

Backends: "torch" (`TORCH`, the reference) and "triton" (`kernels.backend`, the fused kernel, loaded
on first use). `hexfast.hex_loss` resolves kernel="auto" to one of them.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from torch import Tensor

from hexfast import reference
from hexfast.rules import Rule

BACKENDS = ("torch", "triton")


class KernelUnavailableError(RuntimeError):
    """kernel="triton" was asked for but cannot run here (import failed, or no CUDA tensors)."""


class Backend(Protocol):
    name: str

    def square(self, x: Tensor, batch: int, rule: Rule, *, temperature: float, hierarchy_weight: float,
               positive_in_denominator: bool, groups: Tensor | None) -> tuple[Tensor, dict]: ...

    def rect(self, anchors: Tensor, candidates: Tensor, pos_index: Tensor, self_index: Tensor, rule: Rule, *,
             temperature: float, hierarchy_weight: float, positive_in_denominator: bool,
             anchor_groups: Tensor | None, candidate_groups: Tensor | None) -> tuple[Tensor, dict]: ...

    def row_quantiles(self, anchors: Tensor, candidates: Tensor, q: float) -> Tensor: ...


class TorchBackend:
    """The PyTorch reference behind the protocol (every dtype and device torch supports)."""

    name = "torch"

    @staticmethod
    def square(x, batch, rule, *, temperature, hierarchy_weight, positive_in_denominator, groups=None):
        return reference.hex_square(x, batch, rule, temperature=temperature, hierarchy_weight=hierarchy_weight,
                                    positive_in_denominator=positive_in_denominator, groups=groups)

    @staticmethod
    def rect(anchors, candidates, pos_index, self_index, rule, *, temperature, hierarchy_weight,
             positive_in_denominator, anchor_groups=None, candidate_groups=None):
        return reference.hex_rect(anchors, candidates, pos_index, self_index, rule, temperature=temperature,
                                  hierarchy_weight=hierarchy_weight, positive_in_denominator=positive_in_denominator,
                                  anchor_groups=anchor_groups, candidate_groups=candidate_groups)

    @staticmethod
    def row_quantiles(anchors, candidates, q):
        return reference.candidate_quantiles(anchors, candidates, q)


TORCH = TorchBackend()


def load(name: str) -> Backend:
    """The backend called `name` ("torch" | "triton"); KernelUnavailableError if triton does not import."""
    if name == "torch":
        return TORCH
    if name != "triton":
        raise ValueError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    try:
        return _kernel_backend()
    except ImportError as err:
        raise KernelUnavailableError(
            "kernel='triton' is unavailable: importing the fused kernel (kernels.backend) "
            f"failed ({err}). Check that triton is installed (pip install triton), or use kernel='torch'."
        ) from err


def _kernel_backend():
    """kernels/backend.py: `hexfast._kernels.backend` in an installed hexfast (the wheel carries the
    kernels there, never as a top-level package), else the checkout's top-level `kernels`."""
    try:
        importlib.import_module("hexfast._kernels")
    except ModuleNotFoundError as err:
        if err.name != "hexfast._kernels":
            raise
        importlib.import_module("kernels")  # raises if blocked or absent, before a cached submodule is used
        return importlib.import_module("kernels.backend")
    return importlib.import_module("hexfast._kernels.backend")
