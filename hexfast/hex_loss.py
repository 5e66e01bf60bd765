"""The public HEX loss: validate the arguments, resolve the rule, call the backend.

    hex_loss(z1, z2, ...)             two views [B, D] each; both views are anchors (2B rows)
    HEXLoss(...)(z1, z2)              the same as an nn.Module holding the settings
    hex_rect_loss(anchors, cands, ...) the general form: anchors [M, D] vs candidates [N, D]
    candidate_row_quantiles(a, c, q)   per-row nearest-rank quantiles of a c^T (adaptive eps parts)

Each call: every argument is checked once (`hexfast.validate`), the hierarchy rule is resolved once
into a `hexfast.rules.Rule`, and one backend of the protocol in `hexfast.backend` computes the loss.
The semantics are those of `hexfast.reference` (the spec); see that module's docstring. In short:
the defaults (w = 0, positive not in the denominator) reproduce the authors' released code, which
also adds the constant (2B - 2) e^{-1/t} to the loss. That constant has no gradient and only shifts
the logged value, so it is left out here: values differ from the released code's logs by exactly that
constant, gradients do not differ.

Validation cost: see `hexfast.validate` (value checks run for CPU tensors always, for CUDA tensors
only after `set_validation("full")` or with HEXFAST_CHECK_FINITE=1 at import time).

Range corners: meta tensors are refused (there are no values to compute on); temperature and
hierarchy_weight must keep every intermediate finite in the computation dtype (float32, float64 for
float64 inputs): e.g. temperature 1e-39 (1/t overflows) or hierarchy_weight 1e39 are errors, not inf
or NaN. float16 inputs with rows of tiny norm (below about 4 / (temperature * rows * 65504), ~4e-5 at
t = 0.1 and 16 rows) may get inf gradients, because the gradient grows as 1 / |z| through the
normalisation and float16 stops at 65504: that raises a `HEXPrecisionWarning` where values are
checked (CPU tensors; CUDA tensors in "full" mode). Use bfloat16 or float32 for such embeddings.

Kernels: "torch" (the reference), "triton" (the fused kernel, `kernels.backend`, which needs CUDA
tensors, or CPU tensors with TRITON_INTERPRET=1 set before the import), "auto" (triton for CUDA
tensors of dtype fp16/bf16/fp32 when the kernel imports, else torch; it warns once when it falls
back on CUDA). float64 always goes to the reference under "auto": it is the gradcheck path.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor, nn

from hexfast import backend as _backends
from hexfast import validate as V
from hexfast.backend import KernelUnavailableError
from hexfast.rules import Rule, resolve_rule
from hexfast.validate import (
    FLOAT_DTYPES,
    KERNELS,
    RULE_KINDS,
    THRESHOLDS,
    VALIDATION_MODES,
    HEXInputError,
    HEXPrecisionWarning,
    HEXTypeError,
    get_validation,
    set_validation,
)

__all__ = [
    "FLOAT_DTYPES",
    "KERNELS",
    "RULES",
    "THRESHOLDS",
    "VALIDATION_MODES",
    "HEXInputError",
    "HEXLoss",
    "HEXPrecisionWarning",
    "HEXTypeError",
    "KernelUnavailableError",
    "Rule",
    "candidate_row_quantiles",
    "get_validation",
    "hex_loss",
    "hex_rect_loss",
    "set_validation",
]

RULES = RULE_KINDS
# dtypes the fused kernel is asked to handle under kernel="auto"
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_DEFAULT_QUANTILE = 0.99
_warned_fallback = False
_check_values = V.values_checked  # kept for callers of the former private name


# ---------------------------------------------------------------------------------------------
# backend selection


def _use_triton(kernel: str, like: Tensor) -> bool:
    """Resolve kernel="auto"/"torch"/"triton" for tensors like `like`; raises if triton cannot run."""
    global _warned_fallback
    if kernel == "torch":
        return False
    if kernel == "triton":
        if like.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise KernelUnavailableError(
                f"kernel='triton' needs CUDA tensors, got tensors on {like.device}. Move them to a GPU, "
                "set TRITON_INTERPRET=1 before importing to run the kernel under the Triton "
                "interpreter (slow, for tests), or use kernel='torch'."
            )
        _backends.load("triton")
        return True
    # auto
    if like.device.type != "cuda" or like.dtype not in _KERNEL_DTYPES:
        return False
    try:
        _backends.load("triton")
    except KernelUnavailableError as err:
        if not _warned_fallback:
            warnings.warn(f"kernel='auto' falls back to the PyTorch reference on CUDA: {err}", stacklevel=3)
            _warned_fallback = True
        return False
    return True


def _backend(kernel: str, like: Tensor) -> _backends.Backend:
    """The backend that `kernel` names for tensors like `like`."""
    return _backends.load("triton" if _use_triton(kernel, like) else "torch")


def _renamed(new_name: str, new, old_name: str, old, where: str):
    """(value, the name the caller used) for an argument with a deprecated alias."""
    if old is None:
        return new, new_name
    warnings.warn(f"{where}({old_name}=...) is deprecated; use {new_name}=... (same meaning)", DeprecationWarning,
                  stacklevel=3)
    if new is not None:
        raise HEXInputError(f"pass {new_name} or its deprecated alias {old_name}, not both")
    return old, old_name


# ---------------------------------------------------------------------------------------------
# public functions


def hex_loss(
    z1: Tensor,
    z2: Tensor,
    *,
    temperature: float = 0.1,
    threshold="adaptive",
    quantile: float = _DEFAULT_QUANTILE,
    hierarchy_weight: float = 0.0,
    positive_in_denominator: bool = False,
    groups: Tensor | None = None,
    kernel: str = "auto",
    return_stats: bool = False,
    cosine_threshold=None,
    rule: Rule | None = None,
    eps=None,
):
    """The two-view HEX loss: mean over the 2B anchors of cat[z1, z2].

    z1, z2: [B, D] projector outputs of the two views (any float dtype; normalised inside; B >= 2).
    temperature: tau > 0.
    threshold: "adaptive" (eps = mean over rows of each row's nearest-rank `quantile` of the full
        cosine row), a float in [0, 1] (fixed threshold on the per-row min-max normalised cosine),
        or "none" (no hierarchical negatives).
    quantile: q in (0, 1) for the adaptive rule.
    hierarchy_weight: w >= 0, the weight of hierarchical negatives in the denominator (0 = dropped).
    positive_in_denominator: add e^{s_pos/tau} to the denominator (True, w = 1, "none" = InfoNCE).
    groups: optional [B] integer labels: H(i) = negatives with the same label; threshold unused.
    kernel: "auto" | "torch" | "triton".
    return_stats: also return a dict of detached tensors (eps, hier_fraction, hier_count,
        neg_count, empty_rows, rows).
    cosine_threshold: optional raw-cosine threshold eps (number or 0-dim tensor) replacing the
        quantile rule; only with threshold="adaptive" and no groups (NNCLR/All4One warm-up,
        multi-process global eps). `eps=` is its deprecated alias.
    rule: a `hexfast.rules.Rule` (e.g. from a schedule) in place of threshold / quantile /
        cosine_threshold; the groups rule still takes its labels from `groups`.

    Returns the 0-dim loss, or (loss, stats) when return_stats is True.
    """
    cosine_threshold, cosine_name = _renamed("cosine_threshold", cosine_threshold, "eps", eps, "hex_loss")
    V.check_embeddings("z1", z1)
    V.check_embeddings("z2", z2)
    V.check_same("z1", z1, "z2", z2, same_rows=True)
    V.check_not_meta("z1", z1)
    batch = z1.shape[0]
    if batch < 2:
        raise HEXInputError(f"the batch needs B >= 2 rows per view (otherwise no negatives), got B = {batch}")
    temperature = V.check_temperature(temperature)
    if rule is None:
        rule = resolve_rule(threshold, quantile, cosine_threshold, grouped=groups is not None, cosine_name=cosine_name)
    else:
        _check_rule_alone(rule, threshold, quantile, cosine_threshold)
        if (rule.kind == "groups") != (groups is not None):
            raise HEXInputError(f"the groups rule needs `groups` and only it takes them, got {rule} and groups "
                                f"{'given' if groups is not None else 'None'}")
    hierarchy_weight = V.check_weight(hierarchy_weight)
    positive_in_denominator = V.check_bool("positive_in_denominator", positive_in_denominator)
    return_stats = V.check_bool("return_stats", return_stats)
    kernel = V.check_kernel(kernel)
    if groups is not None:
        V.check_labels("groups", groups, batch, z1.device)
        groups = torch.cat([groups, groups])
    _check_rule_device(rule, z1.device, cosine_name)
    V.check_fits(temperature, hierarchy_weight, z1.dtype, 2 * batch, 2 * batch)
    V.warn_half_gradients("z1", z1, temperature, 2 * batch)
    V.warn_half_gradients("z2", z2, temperature, 2 * batch)

    loss, stats = _backend(kernel, z1).square(
        torch.cat([z1, z2], dim=0), batch, rule, temperature=temperature, hierarchy_weight=hierarchy_weight,
        positive_in_denominator=positive_in_denominator, groups=groups)
    return (loss, stats) if return_stats else loss


def _check_rule_alone(rule, threshold, quantile, cosine_threshold) -> None:
    if not isinstance(rule, Rule):
        raise HEXTypeError(f"rule must be a hexfast.rules.Rule, got {type(rule).__name__}")
    if threshold != "adaptive" or quantile != _DEFAULT_QUANTILE or cosine_threshold is not None:
        raise HEXInputError("pass either rule= or threshold / quantile / cosine_threshold, not both")


def _check_rule_device(rule: Rule, device: torch.device, name: str = "cosine_threshold") -> None:
    """A tensor threshold must be on the embeddings' device or the CPU (the Rule checked the rest)."""
    value = rule.value
    if isinstance(value, Tensor) and value.device not in (device, torch.device("cpu")):
        raise HEXInputError(f"{name} must be on the embeddings' device {device} (or the CPU), got {value.device}")


def hex_rect_loss(
    anchors: Tensor,
    candidates: Tensor,
    pos_index: Tensor,
    self_index: Tensor,
    *,
    temperature: float = 0.1,
    rule: Rule | str = "adaptive",
    threshold=None,
    hierarchy_weight: float = 0.0,
    positive_in_denominator: bool = False,
    anchor_groups: Tensor | None = None,
    candidate_groups: Tensor | None = None,
    kernel: str = "auto",
    return_stats: bool = False,
    eps=None,
):
    """HEX of anchors [M, D] against candidates [N, D]: mean over the M anchor rows.

    pos_index [M] long: each row's positive among the candidates. self_index [M] long: each row's
    own entry among the candidates, or -1 for none (e.g. MoCo queries against cat[keys, queue]).
    rule: a `Rule` carrying its value, or its kind with the value as `threshold`: "adaptive"
    (threshold required: the raw-cosine eps, number or 0-dim tensor, e.g. the mean of
    `candidate_row_quantiles` over all processes), "fixed" (threshold in [0, 1] on the min-max
    normalised cosine), "groups" (anchor_groups [M] and candidate_groups [N] required), "none".
    `eps=` is the deprecated alias of `threshold`.
    Other arguments as in `hex_loss`. Returns the loss, or (loss, stats) when return_stats is True.
    """
    threshold, name = _renamed("threshold", threshold, "eps", eps, "hex_rect_loss")
    V.check_embeddings("anchors", anchors)
    V.check_embeddings("candidates", candidates)
    V.check_same("anchors", anchors, "candidates", candidates, same_rows=False)
    V.check_not_meta("anchors", anchors)
    m, n = anchors.shape[0], candidates.shape[0]
    if m < 1 or n < 2:
        raise HEXInputError(f"need at least 1 anchor and 2 candidates, got M = {m} and N = {n}")
    device = anchors.device
    V.check_indices("pos_index", pos_index, m, 0, n, device)
    V.check_indices("self_index", self_index, m, -1, n, device)
    if V.values_checked(pos_index) and bool((pos_index == self_index).any()):
        raise HEXInputError("pos_index and self_index must differ in every row (a row is not its own positive)")
    temperature = V.check_temperature(temperature)
    rule = _rect_rule(rule, threshold, name)
    hierarchy_weight = V.check_weight(hierarchy_weight)
    positive_in_denominator = V.check_bool("positive_in_denominator", positive_in_denominator)
    return_stats = V.check_bool("return_stats", return_stats)
    kernel = V.check_kernel(kernel)
    if rule.kind == "groups":
        if anchor_groups is None or candidate_groups is None:
            raise HEXInputError("rule='groups' needs both anchor_groups [M] and candidate_groups [N]")
        V.check_labels("anchor_groups", anchor_groups, m, device)
        V.check_labels("candidate_groups", candidate_groups, n, device)
    elif anchor_groups is not None or candidate_groups is not None:
        raise HEXInputError(f"anchor_groups/candidate_groups are used only by rule='groups', got rule={rule.kind!r}")
    _check_rule_device(rule, device, name)
    V.check_fits(temperature, hierarchy_weight, anchors.dtype, m, n)
    V.warn_half_gradients("anchors", anchors, temperature, m)
    V.warn_half_gradients("candidates", candidates, temperature, m)

    loss, stats = _backend(kernel, anchors).rect(
        anchors, candidates, pos_index, self_index, rule, temperature=temperature,
        hierarchy_weight=hierarchy_weight, positive_in_denominator=positive_in_denominator,
        anchor_groups=anchor_groups, candidate_groups=candidate_groups)
    return (loss, stats) if return_stats else loss


def _rect_rule(rule, threshold, name: str) -> Rule:
    """hex_rect_loss's rule: a Rule with its value, or a kind with its value passed as `threshold`."""
    if isinstance(rule, Rule):
        if threshold is not None:
            raise HEXInputError(f"the Rule carries its threshold: pass rule=Rule(..., value=...) without {name}")
        if rule.needs_quantiles:
            raise HEXInputError("hex_rect_loss needs the adaptive rule's eps: Rule('adaptive', value=...)")
        return rule
    V.check_choice("rule", rule, RULE_KINDS)
    if rule == "adaptive":
        if threshold is None:
            raise HEXInputError("rule='adaptive' needs eps, its raw-cosine threshold: pass threshold=<number or "
                                "0-dim tensor> (e.g. candidate_row_quantiles(...).mean())")
        return Rule("adaptive", V.check_cosine_threshold(threshold, name))
    if rule == "fixed":
        if threshold is None:
            raise HEXInputError("rule='fixed' needs threshold, a float in [0, 1]")
        return Rule("fixed", V.check_fixed_threshold(name, threshold))
    if threshold is not None:
        raise HEXInputError(f"{name} is used only by rules 'adaptive' and 'fixed', got rule={rule!r}")
    return Rule(rule)


def candidate_row_quantiles(anchors: Tensor, candidates: Tensor, quantile: float = 0.99,
                            kernel: str = "auto") -> Tensor:
    """Nearest-rank `quantile` of each row of the cosine similarities of anchors [M, D] vs candidates [N, D].

    Returns [M] (float32; float64 for float64 input, as the reference), no gradient. The adaptive
    eps of hex_loss is `candidate_row_quantiles(x, x, q).mean()` with x = cat[z1, z2]; in
    multi-process training each process passes its local anchors and the gathered candidates and
    the caller averages the rows over all processes.
    """
    V.check_embeddings("anchors", anchors)
    V.check_embeddings("candidates", candidates)
    V.check_same("anchors", anchors, "candidates", candidates, same_rows=False)
    V.check_not_meta("anchors", anchors)
    if candidates.shape[0] < 1:
        raise HEXInputError("need at least one candidate row")
    quantile = V.check_quantile(quantile)
    kernel = V.check_kernel(kernel)
    return _backend(kernel, anchors).row_quantiles(anchors, candidates, quantile)


class HEXLoss(nn.Module):
    """`hex_loss` as a module: the settings are attributes, checked once at construction.

    Shapes: forward(z1 [B, D], z2 [B, D], groups [B] | None, cosine_threshold=None) -> a 0-dim
    loss (float32; float64 for float64 input), or (loss, stats) when return_stats is True. z1 and z2
    are the projector outputs of two views of the same B images (B >= 2, any float dtype; they are
    L2-normalised inside); both views are anchors, so the loss is the mean over 2B rows. `groups`
    (supervised labels) and `cosine_threshold` (a raw-cosine eps replacing the quantile rule) are
    per-batch inputs; see `hex_loss` for every argument.

    Example::

        import torch
        from hexfast.hex_loss import HEXLoss

        criterion = HEXLoss(temperature=0.1)             # adaptive rule, q = 0.99, w = 0 (released)
        z1, z2 = torch.randn(256, 128), torch.randn(256, 128)   # projector outputs of two views
        loss = criterion(z1, z2)                         # 0-dim, differentiable
        loss, stats = HEXLoss(return_stats=True)(z1, z2)
        stats["eps"], stats["hier_fraction"]             # the threshold and hierarchical share
    """

    def __init__(
        self,
        temperature: float = 0.1,
        threshold="adaptive",
        quantile: float = 0.99,
        hierarchy_weight: float = 0.0,
        positive_in_denominator: bool = False,
        kernel: str = "auto",
        return_stats: bool = False,
    ):
        super().__init__()
        self.temperature = V.check_temperature(temperature)
        self.threshold = V.check_threshold(threshold)
        self.quantile = V.check_quantile(quantile)
        self.hierarchy_weight = V.check_weight(hierarchy_weight)
        self.positive_in_denominator = V.check_bool("positive_in_denominator", positive_in_denominator)
        self.kernel = V.check_kernel(kernel)
        self.return_stats = V.check_bool("return_stats", return_stats)

    def forward(self, z1: Tensor, z2: Tensor, groups: Tensor | None = None, cosine_threshold=None, *, eps=None):
        cosine_threshold, _ = _renamed("cosine_threshold", cosine_threshold, "eps", eps, "HEXLoss.forward")
        return hex_loss(
            z1,
            z2,
            temperature=self.temperature,
            threshold=self.threshold,
            quantile=self.quantile,
            hierarchy_weight=self.hierarchy_weight,
            positive_in_denominator=self.positive_in_denominator,
            groups=groups,
            kernel=self.kernel,
            return_stats=self.return_stats,
            cosine_threshold=cosine_threshold,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, threshold={self.threshold!r}, quantile={self.quantile}, "
            f"hierarchy_weight={self.hierarchy_weight}, positive_in_denominator={self.positive_in_denominator}, "
            f"kernel={self.kernel!r}"
        )
