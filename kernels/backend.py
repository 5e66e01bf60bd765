"""The fused Triton kernel as a hexfast backend: `square`, `rect`, `row_quantiles` of the protocol in
`hexfast/backend.py` (its docstring is the contract), adapted from the kernel's entry points
`kernels.hex_triton.hex_rect`, `kernels.hex_triton.hex_loss_triton` and `kernels.quantile.row_quantiles`.

Importing this module imports Triton. Inputs arrive validated and the rule resolved (`hexfast.rules.Rule`).
"""

from __future__ import annotations

from hexfast.reference import square_indices
from kernels import hex_triton, quantile

name = "triton"


def square(x, batch, rule, *, temperature, hierarchy_weight, positive_in_denominator, groups=None):
    settings = dict(temperature=temperature, hierarchy_weight=hierarchy_weight,
                    positive_in_denominator=positive_in_denominator)
    if rule.kind == "adaptive" and rule.value is not None:
        pos_index, self_index = square_indices(batch, x.device)
        return rect(x, x, pos_index, self_index, rule, **settings)
    # hex_loss_triton's `threshold` names the rule by its kind, the fixed rule by its value
    threshold = rule.value if rule.kind == "fixed" else rule.kind
    return hex_triton.hex_loss_triton(x[:batch], x[batch:], threshold=threshold, quantile=rule.quantile,
                                      groups=None if groups is None else groups[:batch], **settings)


def rect(anchors, candidates, pos_index, self_index, rule, *, temperature, hierarchy_weight,
         positive_in_denominator, anchor_groups=None, candidate_groups=None):
    return hex_triton.hex_rect(anchors, candidates, pos_index, self_index, temperature=temperature, rule=rule.kind,
                               eps=rule.value, hierarchy_weight=hierarchy_weight,
                               positive_in_denominator=positive_in_denominator,
                               anchor_groups=anchor_groups, candidate_groups=candidate_groups)


def row_quantiles(anchors, candidates, q):
    return quantile.row_quantiles(anchors, candidates, q)
