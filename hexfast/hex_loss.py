"""The public HEX loss: input validation, then dispatch to the PyTorch reference or the Triton kernel.

    hex_loss(z1, z2, ...)             two views [B, D] each; both views are anchors (2B rows)
    HEXLoss(...)(z1, z2)              the same as an nn.Module holding the settings
    hex_rect_loss(anchors, cands, ...) the general form: anchors [M, D] vs candidates [N, D]
    candidate_row_quantiles(a, c, q)   per-row nearest-rank quantiles of a c^T (adaptive eps parts)

The semantics are those of `hexfast.reference` (the spec); see that module's docstring. In short:
the defaults (w = 0, positive not in the denominator) reproduce the authors' released code, which
also adds the constant (2B - 2) e^{-1/t} to every denominator. That constant has no gradient and
only shifts the logged value, so it is left out here: values differ from the released code's logs
by log-terms of that constant, gradients do not differ.

Validation cost. Shape, dtype, device and argument checks read only tensor metadata. Checks on
tensor *values* (non-finite embeddings, index ranges, a tensor eps) need the values on the host,
which on a GPU is a device sync every step. They therefore run:
    - always for CPU tensors;
    - for CUDA tensors only in "full" mode: `set_validation("full")`, or the environment variable
      HEXFAST_CHECK_FINITE=1 at import time. The default mode is "cheap".

Kernels: "torch" (the reference), "triton" (the fused kernel in the local `kernels` package, which
needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before the import), "auto" (triton for
CUDA tensors of dtype fp16/bf16/fp32 when the kernel imports, else torch; it warns once when it falls
back on CUDA). float64 always goes to the reference under "auto": it is the gradcheck path.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings

import torch
from torch import Tensor, nn

from hexfast import reference

KERNELS = ("auto", "torch", "triton")
THRESHOLDS = ("adaptive", "none", "<float in [0, 1]>")
RULES = reference.RULES
VALIDATION_MODES = ("cheap", "full")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# dtypes the fused kernel is asked to handle under kernel="auto"
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class HEXInputError(ValueError):
    """A bad argument to the HEX loss (wrong value, shape, device, or unknown name)."""


class HEXTypeError(HEXInputError, TypeError):
    """A bad argument type (not a tensor, integer embeddings, a bool where a number is expected)."""


class KernelUnavailableError(RuntimeError):
    """kernel="triton" was asked for but cannot run here (import failed, or no CUDA tensors)."""


_validation_mode = "full" if os.environ.get("HEXFAST_CHECK_FINITE", "") == "1" else "cheap"
_warned_fallback = False


def set_validation(mode: str) -> None:
    """"cheap" (default): value checks on CPU tensors only; "full": also on CUDA (one sync a call)."""
    global _validation_mode
    if mode not in VALIDATION_MODES:
        raise HEXInputError(f"unknown validation mode {mode!r}; valid: {', '.join(VALIDATION_MODES)}")
    _validation_mode = mode


def get_validation() -> str:
    """The current validation mode ("cheap" or "full")."""
    return _validation_mode


def _check_values(t: Tensor) -> bool:
    """Whether checks that read tensor values may run for `t` (never a hidden GPU sync)."""
    return t.device.type == "cpu" or _validation_mode == "full"


# ---------------------------------------------------------------------------------------------
# argument checks (each raises with the problem and the valid choices)


def _check_embeddings(name: str, z) -> None:
    if not isinstance(z, Tensor):
        raise HEXTypeError(f"{name} must be a torch.Tensor of shape [rows, D], got {type(z).__name__}")
    if z.dim() != 2:
        raise HEXInputError(f"{name} must be 2-D [rows, D], got shape {tuple(z.shape)}")
    if z.dtype not in FLOAT_DTYPES:
        raise HEXTypeError(
            f"{name} must be a floating tensor (float16, bfloat16, float32, float64), got {z.dtype}"
        )
    if z.shape[1] < 1:
        raise HEXInputError(f"{name} needs at least one feature (D >= 1), got shape {tuple(z.shape)}")
    if _check_values(z) and not bool(torch.isfinite(z.detach()).all()):
        raise HEXInputError(f"{name} contains non-finite values (inf or NaN)")


def _check_same(name_a: str, a: Tensor, name_b: str, b: Tensor, *, same_rows: bool) -> None:
    if same_rows and a.shape != b.shape:
        raise HEXInputError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[1] != b.shape[1]:
        raise HEXInputError(
            f"{name_a} and {name_b} must have the same feature size D, got {a.shape[1]} and {b.shape[1]}"
        )
    if a.device != b.device:
        raise HEXInputError(f"{name_a} and {name_b} must be on the same device, got {a.device} and {b.device}")
    if a.dtype != b.dtype:
        raise HEXTypeError(f"{name_a} and {name_b} must have the same dtype, got {a.dtype} and {b.dtype}")


def _check_real(name: str, value) -> float:
    """A finite real number (not a bool); returns it as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise HEXTypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise HEXInputError(f"{name} must be finite, got {value}")
    return value


def _check_temperature(temperature) -> float:
    t = _check_real("temperature", temperature)
    if t <= 0:
        raise HEXInputError(f"temperature must be > 0, got {t}")
    return t


def _check_quantile(quantile) -> float:
    q = _check_real("quantile", quantile)
    if not 0.0 < q < 1.0:
        raise HEXInputError(f"quantile must lie in the open interval (0, 1), got {q}")
    return q


def _check_weight(hierarchy_weight) -> float:
    w = _check_real("hierarchy_weight", hierarchy_weight)
    if w < 0:
        raise HEXInputError(f"hierarchy_weight must be >= 0, got {w}")
    return w


def _check_fixed_eps(name: str, value) -> float:
    e = _check_real(name, value)
    if not 0.0 <= e <= 1.0:
        raise HEXInputError(f"{name} (fixed threshold on the min-max normalised cosine) must lie in [0, 1], got {e}")
    return e


def _check_threshold(threshold):
    """"adaptive" | "none" | a float in [0, 1] (returned as float)."""
    if isinstance(threshold, str):
        if threshold not in ("adaptive", "none"):
            raise HEXInputError(f"unknown threshold {threshold!r}; valid: {', '.join(THRESHOLDS)}")
        return threshold
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise HEXTypeError(
            f"threshold must be one of {', '.join(THRESHOLDS)}, got {type(threshold).__name__}"
        )
    return _check_fixed_eps("threshold", threshold)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise HEXTypeError(f"{name} must be True or False, got {value!r}")
    return value


def _check_kernel(kernel) -> str:
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise HEXInputError(f"unknown kernel {kernel!r}; valid: {', '.join(KERNELS)}")
    return kernel


def _check_labels(name: str, labels, rows: int, device: torch.device) -> None:
    if not isinstance(labels, Tensor):
        raise HEXTypeError(f"{name} must be a torch.Tensor of integer labels [{rows}], got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise HEXTypeError(f"{name} must hold integer labels (e.g. torch.long), got {labels.dtype}")
    if labels.shape != (rows,):
        raise HEXInputError(f"{name} must have shape [{rows}], got {tuple(labels.shape)}")
    if labels.device != device:
        raise HEXInputError(f"{name} must be on the embeddings' device {device}, got {labels.device}")


def _check_adaptive_eps(eps, device: torch.device):
    """eps override: a finite real number or a 0-dim floating tensor on `device` (or the CPU)."""
    if isinstance(eps, Tensor):
        if eps.dim() != 0 or not eps.dtype.is_floating_point:
            raise HEXInputError(
                f"eps must be a number or a 0-dim floating tensor, got {eps.dtype} of shape {tuple(eps.shape)}"
            )
        if eps.device not in (device, torch.device("cpu")):
            raise HEXInputError(f"eps must be on the embeddings' device {device} (or the CPU), got {eps.device}")
        if _check_values(eps) and not bool(torch.isfinite(eps.detach())):
            raise HEXInputError("eps must be finite, got a non-finite tensor")
        return eps.detach()
    return _check_real("eps", eps)


def _check_indices(name: str, index, rows: int, low: int, high: int, device: torch.device) -> None:
    """index [rows] long with values in [low, high) (values checked when that costs no GPU sync)."""
    if not isinstance(index, Tensor):
        raise HEXTypeError(f"{name} must be a torch.Tensor of dtype long, got {type(index).__name__}")
    if index.dtype != torch.long:
        raise HEXTypeError(f"{name} must have dtype torch.long, got {index.dtype}")
    if index.shape != (rows,):
        raise HEXInputError(f"{name} must have shape [{rows}], got {tuple(index.shape)}")
    if index.device != device:
        raise HEXInputError(f"{name} must be on the embeddings' device {device}, got {index.device}")
    if rows and _check_values(index):
        lo, hi = int(index.min()), int(index.max())
        if lo < low or hi >= high:
            raise HEXInputError(f"{name} values must lie in [{low}, {high - 1}], got min {lo} and max {hi}")


# ---------------------------------------------------------------------------------------------
# kernel selection


def _load_kernels():
    """The fused kernel functions, or KernelUnavailableError saying why."""
    try:
        from kernels import hex_loss_triton, hex_rect, row_quantiles
    except ImportError as err:
        raise KernelUnavailableError(
            "kernel='triton' is unavailable: importing hex_loss_triton, hex_rect and row_quantiles "
            f"from the local kernels package failed ({err}). Check that triton is installed "
            "(pip install triton) and that the repo root is on the path, or use kernel='torch'."
        ) from err
    return hex_loss_triton, hex_rect, row_quantiles


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
        _load_kernels()
        return True
    # auto
    if like.device.type != "cuda" or like.dtype not in _KERNEL_DTYPES:
        return False
    try:
        _load_kernels()
    except KernelUnavailableError as err:
        if not _warned_fallback:
            warnings.warn(f"kernel='auto' falls back to the PyTorch reference on CUDA: {err}", stacklevel=3)
            _warned_fallback = True
        return False
    return True


# ---------------------------------------------------------------------------------------------
# public functions


def hex_loss(
    z1: Tensor,
    z2: Tensor,
    *,
    temperature: float = 0.1,
    threshold="adaptive",
    quantile: float = 0.99,
    hierarchy_weight: float = 0.0,
    positive_in_denominator: bool = False,
    groups: Tensor | None = None,
    kernel: str = "auto",
    return_stats: bool = False,
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
    eps: optional raw-cosine threshold (number or 0-dim tensor) replacing the quantile rule; only
        with threshold="adaptive" and no groups (NNCLR/All4One warm-up, multi-process global eps).

    Returns the 0-dim loss, or (loss, stats) when return_stats is True.
    """
    _check_embeddings("z1", z1)
    _check_embeddings("z2", z2)
    _check_same("z1", z1, "z2", z2, same_rows=True)
    batch = z1.shape[0]
    if batch < 2:
        raise HEXInputError(f"the batch needs B >= 2 rows per view (otherwise no negatives), got B = {batch}")
    temperature = _check_temperature(temperature)
    threshold = _check_threshold(threshold)
    quantile = _check_quantile(quantile)
    hierarchy_weight = _check_weight(hierarchy_weight)
    positive_in_denominator = _check_bool("positive_in_denominator", positive_in_denominator)
    return_stats = _check_bool("return_stats", return_stats)
    kernel = _check_kernel(kernel)
    if groups is not None:
        _check_labels("groups", groups, batch, z1.device)
    if eps is not None:
        if groups is not None or threshold != "adaptive":
            raise HEXInputError(
                "eps overrides the adaptive threshold: pass it only with threshold='adaptive' and no "
                f"groups (got threshold={threshold!r}, groups {'given' if groups is not None else 'None'})"
            )
        eps = _check_adaptive_eps(eps, z1.device)

    settings = dict(
        temperature=temperature,
        hierarchy_weight=hierarchy_weight,
        positive_in_denominator=positive_in_denominator,
    )
    triton = _use_triton(kernel, z1)
    if eps is not None:
        # A given eps makes the square case one instance of the rectangular form.
        x = torch.cat([z1, z2], dim=0)
        pos_index, self_index = reference.square_indices(batch, z1.device)
        rect = _load_kernels()[1] if triton else reference.hex_rect
        loss, stats = rect(x, x, pos_index, self_index, rule="adaptive", eps=eps, **settings)
    else:
        square = _load_kernels()[0] if triton else reference.hex_reference
        loss, stats = square(z1, z2, threshold=threshold, quantile=quantile, groups=groups, **settings)
    return (loss, stats) if return_stats else loss


def hex_rect_loss(
    anchors: Tensor,
    candidates: Tensor,
    pos_index: Tensor,
    self_index: Tensor,
    *,
    temperature: float = 0.1,
    rule: str = "adaptive",
    eps=None,
    hierarchy_weight: float = 0.0,
    positive_in_denominator: bool = False,
    anchor_groups: Tensor | None = None,
    candidate_groups: Tensor | None = None,
    kernel: str = "auto",
    return_stats: bool = False,
):
    """HEX of anchors [M, D] against candidates [N, D]: mean over the M anchor rows.

    pos_index [M] long: each row's positive among the candidates. self_index [M] long: each row's
    own entry among the candidates, or -1 for none (e.g. MoCo queries against cat[keys, queue]).
    rule: "adaptive" (eps required: a raw-cosine threshold, number or 0-dim tensor, e.g. the mean of
    `candidate_row_quantiles` over all processes), "fixed" (eps in [0, 1] required), "groups"
    (anchor_groups [M] and candidate_groups [N] required), "none".
    Other arguments as in `hex_loss`. Returns the loss, or (loss, stats) when return_stats is True.
    """
    _check_embeddings("anchors", anchors)
    _check_embeddings("candidates", candidates)
    _check_same("anchors", anchors, "candidates", candidates, same_rows=False)
    m, n = anchors.shape[0], candidates.shape[0]
    if m < 1 or n < 2:
        raise HEXInputError(f"need at least 1 anchor and 2 candidates, got M = {m} and N = {n}")
    device = anchors.device
    _check_indices("pos_index", pos_index, m, 0, n, device)
    _check_indices("self_index", self_index, m, -1, n, device)
    if _check_values(pos_index) and bool((pos_index == self_index).any()):
        raise HEXInputError("pos_index and self_index must differ in every row (a row is not its own positive)")
    temperature = _check_temperature(temperature)
    if not isinstance(rule, str) or rule not in RULES:
        raise HEXInputError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
    hierarchy_weight = _check_weight(hierarchy_weight)
    positive_in_denominator = _check_bool("positive_in_denominator", positive_in_denominator)
    return_stats = _check_bool("return_stats", return_stats)
    kernel = _check_kernel(kernel)
    if rule == "adaptive":
        if eps is None:
            raise HEXInputError("rule='adaptive' needs eps (e.g. candidate_row_quantiles(...).mean())")
        eps = _check_adaptive_eps(eps, device)
    elif rule == "fixed":
        if eps is None:
            raise HEXInputError("rule='fixed' needs eps, a float in [0, 1]")
        eps = _check_fixed_eps("eps", eps)
    elif eps is not None:
        raise HEXInputError(f"eps is used only by rules 'adaptive' and 'fixed', got rule={rule!r}")
    if rule == "groups":
        if anchor_groups is None or candidate_groups is None:
            raise HEXInputError("rule='groups' needs both anchor_groups [M] and candidate_groups [N]")
        _check_labels("anchor_groups", anchor_groups, m, device)
        _check_labels("candidate_groups", candidate_groups, n, device)
    elif anchor_groups is not None or candidate_groups is not None:
        raise HEXInputError(f"anchor_groups/candidate_groups are used only by rule='groups', got rule={rule!r}")

    rect = _load_kernels()[1] if _use_triton(kernel, anchors) else reference.hex_rect
    loss, stats = rect(
        anchors,
        candidates,
        pos_index,
        self_index,
        temperature=temperature,
        rule=rule,
        eps=eps,
        hierarchy_weight=hierarchy_weight,
        positive_in_denominator=positive_in_denominator,
        anchor_groups=anchor_groups,
        candidate_groups=candidate_groups,
    )
    return (loss, stats) if return_stats else loss


def candidate_row_quantiles(anchors: Tensor, candidates: Tensor, quantile: float = 0.99, kernel: str = "auto") -> Tensor:
    """Nearest-rank `quantile` of each row of the cosine similarities of anchors [M, D] vs candidates [N, D].

    Returns [M] (float32; float64 for float64 input, as the reference), no gradient. The adaptive
    eps of hex_loss is `candidate_row_quantiles(x, x, q).mean()` with x = cat[z1, z2]; in
    multi-process training each process passes its local anchors and the gathered candidates and
    the caller averages the rows over all processes.
    """
    _check_embeddings("anchors", anchors)
    _check_embeddings("candidates", candidates)
    _check_same("anchors", anchors, "candidates", candidates, same_rows=False)
    if candidates.shape[0] < 1:
        raise HEXInputError("need at least one candidate row")
    quantile = _check_quantile(quantile)
    kernel = _check_kernel(kernel)
    if _use_triton(kernel, anchors):
        return _load_kernels()[2](anchors, candidates, quantile)
    with torch.no_grad():
        return reference.row_quantiles(reference.similarities(anchors, candidates), quantile)


class HEXLoss(nn.Module):
    """`hex_loss` as a module: the settings are attributes, checked once at construction.

    forward(z1 [B, D], z2 [B, D], groups=None, eps=None) -> loss, or (loss, stats) when
    return_stats is True. `groups`/`eps` are per-batch inputs (see `hex_loss`).
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
        self.temperature = _check_temperature(temperature)
        self.threshold = _check_threshold(threshold)
        self.quantile = _check_quantile(quantile)
        self.hierarchy_weight = _check_weight(hierarchy_weight)
        self.positive_in_denominator = _check_bool("positive_in_denominator", positive_in_denominator)
        self.kernel = _check_kernel(kernel)
        self.return_stats = _check_bool("return_stats", return_stats)

    def forward(self, z1: Tensor, z2: Tensor, groups: Tensor | None = None, eps=None):
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
            eps=eps,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, threshold={self.threshold!r}, quantile={self.quantile}, "
            f"hierarchy_weight={self.hierarchy_weight}, positive_in_denominator={self.positive_in_denominator}, "
            f"kernel={self.kernel!r}"
        )
