"""The hierarchy rule: which negatives of a row are hierarchical. One type, spoken everywhere.

    Rule("none")                       H(i) empty: plain InfoNCE terms
    Rule("adaptive", quantile=0.99)    s_ik > eps, eps = mean over rows of each row's nearest-rank
                                       `quantile` of the full cosine row (computed by the backend)
    Rule("adaptive", value=0.9)        s_ik > 0.9: the adaptive rule with a given raw-cosine
                                       threshold (NNCLR/All4One warm-up; multi-process global eps)
    Rule("fixed", value=0.5)           f_ik > 0.5 on the per-row min-max normalised cosine, value in [0, 1]
    Rule("groups")                     g(i) == g(k): supervised labels, passed beside the rule

A `Rule` is resolved ONCE from the public arguments (`resolve_rule`, what `hex_loss` does with
threshold / quantile / cosine_threshold / groups), or built by a schedule (`hexfast.thresholds`);
the reference and every backend read its fields. It checks its own fields on construction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor

from hexfast import validate as V
from hexfast.validate import RULE_KINDS, HEXInputError


@dataclass(frozen=True)
class Rule:
    """kind: none | adaptive | fixed | groups. value: adaptive: None (eps from the quantile rule) or a
    raw-cosine threshold (number or 0-dim tensor); fixed: the threshold in [0, 1]; else None.
    quantile: q in (0, 1) of the adaptive rule (unused by the others)."""

    kind: str
    value: float | Tensor | None = None
    quantile: float = 0.99

    def __post_init__(self):
        V.check_choice("rule", self.kind, RULE_KINDS)
        object.__setattr__(self, "quantile", V.check_quantile(self.quantile))
        if self.kind == "fixed":
            if self.value is None:
                raise HEXInputError(
                    "Rule('fixed') needs value, the threshold in [0, 1] on the min-max normalised cosine")
            object.__setattr__(self, "value", V.check_fixed_threshold("threshold", self.value))
        elif self.kind == "adaptive":
            if self.value is not None:
                object.__setattr__(self, "value", V.check_cosine_threshold(self.value))
        elif self.value is not None:
            raise HEXInputError(
                f"a value is used only by rules 'adaptive' and 'fixed', got Rule({self.kind!r}, value=...)")

    @property
    def needs_quantiles(self) -> bool:
        """True when eps must still be computed from the row quantiles (adaptive, no given value)."""
        return self.kind == "adaptive" and self.value is None

    def with_cosine_threshold(self, eps) -> Rule:
        """This adaptive rule with its eps given (e.g. the all-reduced mean of the row quantiles)."""
        if self.kind != "adaptive":
            raise HEXInputError(f"only the adaptive rule takes a raw-cosine threshold, not {self.kind!r}")
        return dataclasses.replace(self, value=eps)


def resolve_rule(threshold="adaptive", quantile: float = 0.99, cosine_threshold=None, *, grouped: bool = False,
                 cosine_name: str = "cosine_threshold") -> Rule:
    """The Rule that hex_loss's public arguments select.

    threshold: "adaptive" | "none" | a float in [0, 1] (fixed); grouped: labels were passed (the
    groups rule; threshold unused); cosine_threshold: only with "adaptive" and no labels.
    `cosine_name` is the argument's name in error messages (the deprecated alias is `eps`).
    """
    threshold = V.check_threshold(threshold)
    quantile = V.check_quantile(quantile)
    if cosine_threshold is not None:
        if grouped or threshold != "adaptive":
            raise HEXInputError(
                f"{cosine_name} overrides the adaptive threshold: pass it only with threshold='adaptive' and no "
                f"groups (got threshold={threshold!r}, groups {'given' if grouped else 'None'})"
            )
        cosine_threshold = V.check_cosine_threshold(cosine_threshold, cosine_name)
    if grouped:
        return Rule("groups")
    if threshold == "none":
        return Rule("none")
    if threshold == "adaptive":
        return Rule("adaptive", cosine_threshold, quantile)
    return Rule("fixed", threshold)
