"""Every check on a HEX argument, in one place: the loss API, the schedules and the trainer config call these.

Each check raises `HEXInputError` (a ValueError) or `HEXTypeError` (also a TypeError) with a message
that names the argument, the problem and the valid choices, and returns the value in its canonical
form (a float for a number, the string for a name). `name` is how the caller calls the argument
("temperature", "hex.quantile", ...), so a config error names the config key.

Cost. Shape, dtype, device and argument checks read only metadata. Checks on tensor *values*
(non-finite embeddings, index ranges, a tensor threshold) need the values on the host, which on a
GPU is a device sync every step. They therefore run always for CPU tensors and for CUDA tensors only
in "full" mode: `set_validation("full")`, or HEXFAST_CHECK_FINITE=1 at import time ("cheap" is the
default). `values_checked(t)` says whether they run for `t`.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings

import torch
from torch import Tensor

KERNELS = ("auto", "torch", "triton")
THRESHOLDS = ("adaptive", "none", "<float in [0, 1]>")
RULE_KINDS = ("none", "adaptive", "fixed", "groups")
VALIDATION_MODES = ("cheap", "full")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class HEXInputError(ValueError):
    """A bad argument to the HEX loss (wrong value, shape, device, or unknown name)."""


class HEXTypeError(HEXInputError, TypeError):
    """A bad argument type (not a tensor, integer embeddings, a bool where a number is expected)."""


class HEXPrecisionWarning(RuntimeWarning):
    """The inputs' dtype cannot hold a result of the computation (e.g. float16 gradients of tiny rows)."""


_validation_mode = "full" if os.environ.get("HEXFAST_CHECK_FINITE", "") == "1" else "cheap"


def set_validation(mode: str) -> None:
    """"cheap" (default): value checks on CPU tensors only; "full": also on CUDA (one sync a call)."""
    global _validation_mode
    if mode not in VALIDATION_MODES:
        raise HEXInputError(f"unknown validation mode {mode!r}; valid: {', '.join(VALIDATION_MODES)}")
    _validation_mode = mode


def get_validation() -> str:
    """The current validation mode ("cheap" or "full")."""
    return _validation_mode


def values_checked(t) -> bool:
    """Whether checks that read tensor values may run for `t` (never a hidden GPU sync)."""
    return t.device.type == "cpu" or (_validation_mode == "full" and t.device.type != "meta")


# ---------------------------------------------------------------------------------------------
# numbers and names


def check_real(name: str, value) -> float:
    """A finite real number (not a bool); returns it as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise HEXTypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise HEXInputError(f"{name} must be finite, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise HEXTypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_count(name: str, value, minimum: int) -> int:
    """An integer (not a bool) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise HEXTypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise HEXInputError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_epoch(epoch) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise HEXInputError(f"epoch must be an integer >= 0, got {epoch!r}")
    return epoch


def check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise HEXInputError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")
    return value


def check_kernel(kernel) -> str:
    return check_choice("kernel", kernel, KERNELS)


def check_temperature(temperature, name: str = "temperature") -> float:
    t = check_real(name, temperature)
    if t <= 0:
        raise HEXInputError(f"{name} must be > 0, got {t}")
    return t


def check_quantile(quantile, name: str = "quantile") -> float:
    q = check_real(name, quantile)
    if not 0.0 < q < 1.0:
        raise HEXInputError(f"{name} must lie in the open interval (0, 1), got {q}")
    return q


def check_weight(hierarchy_weight, name: str = "hierarchy_weight") -> float:
    w = check_real(name, hierarchy_weight)
    if w < 0:
        raise HEXInputError(f"{name} must be >= 0, got {w}")
    return w


def check_interval(name: str, value, lo: float, hi: float, what: str = "") -> float:
    """A real number in the closed interval [lo, hi]; `what` says what the number is."""
    v = check_real(name, value)
    if not lo <= v <= hi:
        raise HEXInputError(f"{name}{f' ({what})' if what else ''} must lie in [{lo:g}, {hi:g}], got {v}")
    return v


def check_unit(name: str, value) -> float:
    """A real number in [0, 1]."""
    return check_interval(name, value, 0.0, 1.0)


def check_cosine(name: str, value) -> float:
    """A number on the cosine scale, [-1, 1] (e.g. a warm-up's raw-cosine threshold)."""
    return check_interval(name, value, -1.0, 1.0, "a raw cosine")


def check_fixed_threshold(name: str, value) -> float:
    """A threshold of the fixed rule: on the per-row min-max normalised cosine, so in [0, 1]."""
    return check_interval(name, value, 0.0, 1.0, "fixed threshold on the min-max normalised cosine")


def check_threshold(threshold):
    """hex_loss's `threshold`: "adaptive" | "none" | a float in [0, 1] (returned as float)."""
    if isinstance(threshold, str):
        if threshold not in ("adaptive", "none"):
            raise HEXInputError(f"unknown threshold {threshold!r}; valid: {', '.join(THRESHOLDS)}")
        return threshold
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise HEXTypeError(f"threshold must be one of {', '.join(THRESHOLDS)}, got {type(threshold).__name__}")
    return check_fixed_threshold("threshold", threshold)


def check_cosine_threshold(value, name: str = "cosine_threshold", device: torch.device | None = None):
    """A raw-cosine threshold (the adaptive rule's eps given by the caller): a finite real number or a
    0-dim floating tensor on `device` (or the CPU). A tensor is returned detached."""
    if isinstance(value, Tensor):
        if value.dim() != 0 or not value.dtype.is_floating_point:
            raise HEXInputError(
                f"{name} must be a number or a 0-dim floating tensor, got {value.dtype} of shape {tuple(value.shape)}"
            )
        if device is not None and value.device not in (device, torch.device("cpu")):
            raise HEXInputError(f"{name} must be on the embeddings' device {device} (or the CPU), got {value.device}")
        if values_checked(value) and not bool(torch.isfinite(value.detach())):
            raise HEXInputError(f"{name} must be finite, got a non-finite tensor")
        return value.detach()
    return check_real(name, value)


# ---------------------------------------------------------------------------------------------
# tensors


def check_embeddings(name: str, z) -> None:
    if not isinstance(z, Tensor):
        raise HEXTypeError(f"{name} must be a torch.Tensor of shape [rows, D], got {type(z).__name__}")
    if z.dim() != 2:
        raise HEXInputError(f"{name} must be 2-D [rows, D], got shape {tuple(z.shape)}")
    if z.dtype not in FLOAT_DTYPES:
        raise HEXTypeError(f"{name} must be a floating tensor (float16, bfloat16, float32, float64), got {z.dtype}")
    if z.shape[1] < 1:
        raise HEXInputError(f"{name} needs at least one feature (D >= 1), got shape {tuple(z.shape)}")
    if values_checked(z) and not bool(torch.isfinite(z.detach()).all()):
        raise HEXInputError(f"{name} contains non-finite values (inf or NaN)")


def check_same(name_a: str, a: Tensor, name_b: str, b: Tensor, *, same_rows: bool) -> None:
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


def check_not_meta(name: str, z: Tensor) -> None:
    """Meta tensors have a shape but no values: nothing to compute on (checked after the device match)."""
    if z.is_meta:
        raise HEXInputError(
            f"{name} is a meta tensor (a shape without values): HEX needs real values, on the CPU or a GPU")


def check_labels(name: str, labels, rows: int, device: torch.device) -> None:
    if not isinstance(labels, Tensor):
        raise HEXTypeError(f"{name} must be a torch.Tensor of integer labels [{rows}], got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise HEXTypeError(f"{name} must hold integer labels (e.g. torch.long), got {labels.dtype}")
    if labels.shape != (rows,):
        raise HEXInputError(f"{name} must have shape [{rows}], got {tuple(labels.shape)}")
    if labels.device != device:
        raise HEXInputError(f"{name} must be on the embeddings' device {device}, got {labels.device}")


def check_indices(name: str, index, rows: int, low: int, high: int, device: torch.device) -> None:
    """index [rows] long with values in [low, high) (values checked when that costs no GPU sync)."""
    if not isinstance(index, Tensor):
        raise HEXTypeError(f"{name} must be a torch.Tensor of dtype long, got {type(index).__name__}")
    if index.dtype != torch.long:
        raise HEXTypeError(f"{name} must have dtype torch.long, got {index.dtype}")
    if index.shape != (rows,):
        raise HEXInputError(f"{name} must have shape [{rows}], got {tuple(index.shape)}")
    if index.device != device:
        raise HEXInputError(f"{name} must be on the embeddings' device {device}, got {index.device}")
    if rows and values_checked(index):
        lo, hi = int(index.min()), int(index.max())
        if lo < low or hi >= high:
            raise HEXInputError(f"{name} values must lie in [{low}, {high - 1}], got min {lo} and max {hi}")


def computation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype HEX computes in for inputs of `dtype`: float32, or float64 for float64 (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_fits(temperature: float, hierarchy_weight: float, dtype: torch.dtype, rows: int, candidates: int) -> None:
    """The settings keep every intermediate finite in the computation dtype.

    |s / temperature| <= 1 / temperature, a row's loss <= 2 / temperature + log(candidates), the sum
    over `rows` rows: so temperature >= 2 (rows + 1) / max. A hierarchical term weighs w e^{s/t - max}
    <= w, a row's denominator sums `candidates` of them: so w <= max / (candidates + 1).
    """
    cdtype = computation_dtype(dtype)
    big = torch.finfo(cdtype).max
    t_min = 2.0 * (rows + 1) / big
    if temperature < t_min:
        raise HEXInputError(
            f"temperature {temperature:g} is too small for {cdtype} computation: 1/temperature and the loss "
            f"summed over {rows} rows would overflow to inf; need temperature >= {t_min:.3g}"
        )
    w_max = big / (candidates + 1)
    if hierarchy_weight > w_max:
        raise HEXInputError(
            f"hierarchy_weight {hierarchy_weight:g} is too large for {cdtype} computation: weighted sums over "
            f"{candidates} candidates would overflow to inf; need hierarchy_weight <= {w_max:.3g}"
        )


_HALF_MAX = float(torch.finfo(torch.float16).max)


def warn_half_gradients(name: str, z: Tensor, temperature: float, rows: int) -> None:
    """Warn when float16 gradients of `z` may overflow (only where values are read without a sync).

    The gradient of a row reaches the input through the normalisation, times 1 / |z_i|; its size is
    at most about 4 / (temperature * rows * |z_i|). float16 holds up to 65504, so rows of norm below
    4 / (temperature * rows * 65504) (about 4e-5 at temperature 0.1 and 16 rows) may get inf
    gradients. bfloat16 and float32 have float32's range and do not overflow here.
    """
    if z.dtype != torch.float16 or not z.requires_grad or not values_checked(z):
        return
    limit = 4.0 / (temperature * rows * _HALF_MAX)
    smallest = float(torch.linalg.vector_norm(z.detach().float(), dim=1).min())
    if smallest < limit:
        warnings.warn(
            f"{name} is float16 with a row of norm {smallest:.3g} < {limit:.3g}: its gradient may exceed float16's "
            "range (65504) and become inf. Scale the embeddings up, or pass them as float32 or bfloat16.",
            HEXPrecisionWarning,
            stacklevel=3,
        )
