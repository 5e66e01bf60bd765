"""The fused Triton kernel as a hexfast backend: `square`, `rect` and `row_quantiles` of the protocol
in `hexfast/backend.py` (its docstring is the contract).

Inputs arrive validated and the rule resolved (`hexfast.rules.Rule`, translated here once into the
kernel's private RULE constexpr); this module checks only what the kernel alone requires (dtype,
device, contiguity: `kernels.config.check_inputs`). Each call is one registered custom op forward
(`hexfast_kernels::square` or `::rect`) and one backward; no launcher reads a device value on the host.
Importing this module imports Triton.
"""
from __future__ import annotations

import torch

from hexfast.reference import hex_stats
from kernels import hex_triton as T
from kernels._tiles import RULE_IDS
from kernels.config import check_inputs

name = "triton"


def _eps_arg(rule, device):
    """The rule's threshold as the [1] fp32 device tensor the kernels read (None: computed / unused)."""
    if rule.kind not in ("adaptive", "fixed") or rule.value is None:
        return None
    return torch.as_tensor(rule.value, dtype=torch.float32, device=device).detach().reshape(1)


def _stats(totals, eps, rule):
    """hexfast's one stats dict from the kernel's summed per-row outputs (no host synchronisation)."""
    counts = totals.detach()[1:].to(torch.int64)  # |H|, empty rows, negatives, rows
    threshold = eps.detach() if rule.kind in ("adaptive", "fixed") else None
    return hex_stats(threshold, counts[0], counts[2], counts[1], counts[3])


def square(x, batch, rule, *, temperature, hierarchy_weight, positive_in_denominator, groups=None):
    x = check_inputs("x", x)
    labels = None if groups is None else groups.to(device=x.device, dtype=torch.int64).contiguous()
    totals, eps, *_ = T.square_op(x, labels, _eps_arg(rule, x.device), batch, RULE_IDS[rule.kind],
                                  float(rule.quantile), float(temperature), float(hierarchy_weight),
                                  bool(positive_in_denominator))
    return totals[0].to(torch.float32), _stats(totals, eps, rule)


def rect(anchors, candidates, pos_index, self_index, rule, *, temperature, hierarchy_weight,
         positive_in_denominator, anchor_groups=None, candidate_groups=None):
    a = check_inputs("anchors", anchors)
    c = a if candidates is anchors else check_inputs("candidates", candidates)
    dev = a.device
    ga = gc = None
    if rule.kind == "groups":
        ga = anchor_groups.to(device=dev, dtype=torch.int64).contiguous()
        gc = candidate_groups.to(device=dev, dtype=torch.int64).contiguous()
    totals, eps, *_ = T.rect_op(a, c, pos_index.to(device=dev, dtype=torch.int64).contiguous(),
                                self_index.to(device=dev, dtype=torch.int64).contiguous(), ga, gc,
                                _eps_arg(rule, dev), RULE_IDS[rule.kind], float(temperature),
                                float(hierarchy_weight), bool(positive_in_denominator))
    return totals[0].to(torch.float32), _stats(totals, eps, rule)


def row_quantiles(anchors, candidates, q):
    return T.row_quantiles(anchors, candidates, q)
