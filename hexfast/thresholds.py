"""Threshold rules and schedules for HEX: pure functions of the epoch, named, checkpointable.

A schedule maps an epoch (0-based, like Lightning's `current_epoch`, which the released code uses)
to a `HexMode`: what `hex_loss` does in that epoch. It holds no hidden state, so a resumed run gets
exactly the thresholds the uninterrupted run would have had; `state_dict()`/`load_state_dict()` carry
its parameters through a checkpoint so that the resumed run also uses the same *settings*.

    schedule = build_schedule("cos", start=0.95, minimum=0.65, total_epochs=400)
    mode = schedule(epoch)
    loss = hex_loss(z1, z2, temperature=0.1, **mode.loss_kwargs())       # groups=... if mode.use_groups

The names are the config values (spec §3, `docs/hex-spec.md`):
    none          plain InfoNCE (threshold "none", w = 1, positive in the denominator)
    adaptive      the quantile rule after a warm-up: InfoNCE (SimCLR) or a fixed raw-cosine eps (NNCLR,
                  All4One), while epoch <= warmup_epochs
    step          fixed threshold lowered by `step_down` every `epoch_step` epochs, optional floor
    cos           fixed threshold on a true cosine from `start` to `minimum` over `total_epochs`
    cos_released  the released code's compounding cosine (reproduces published settings)
    groups        supervised superclass labels (no threshold)
Every schedule carries the HEX loss settings `hierarchy_weight` (w) and `positive_in_denominator`,
whose defaults (0, False) reproduce the released code.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from hexfast.hex_loss import (
    HEXInputError,
    HEXTypeError,
    _check_bool,
    _check_fixed_eps,
    _check_quantile,
    _check_real,
    _check_threshold,
    _check_weight,
)

WARMUPS = ("infonce", "cosine", "off")


@dataclass(frozen=True)
class HexMode:
    """What the HEX loss does in one epoch.

    threshold: "adaptive" | "none" | a float in [0, 1] (as hex_loss's `threshold`).
    eps: raw-cosine threshold replacing the quantile rule (only with "adaptive"; NNCLR/All4One warm-up).
    quantile: q of the adaptive rule.
    hierarchy_weight: w >= 0; positive_in_denominator: as in hex_loss.
    use_groups: the supervised rule; the caller passes `groups` to hex_loss.
    """

    threshold: str | float
    eps: float | None = None
    hierarchy_weight: float = 0.0
    positive_in_denominator: bool = False
    use_groups: bool = False
    quantile: float = 0.99

    def __post_init__(self):
        _check_threshold(self.threshold)
        if self.eps is not None:
            _check_real("eps", self.eps)
            if self.threshold != "adaptive" or self.use_groups:
                raise HEXInputError("HexMode.eps overrides the adaptive rule: use it only with threshold='adaptive'")
        _check_weight(self.hierarchy_weight)
        _check_bool("positive_in_denominator", self.positive_in_denominator)
        _check_bool("use_groups", self.use_groups)
        _check_quantile(self.quantile)

    def loss_kwargs(self) -> dict:
        """Keyword arguments for `hex_loss` (all but `groups`, which the caller supplies)."""
        return {
            "threshold": self.threshold,
            "quantile": self.quantile,
            "eps": self.eps,
            "hierarchy_weight": self.hierarchy_weight,
            "positive_in_denominator": self.positive_in_denominator,
        }


# InfoNCE (NT-Xent) in HEX terms: no hierarchical split, the positive in the denominator.
INFONCE = HexMode(threshold="none", hierarchy_weight=1.0, positive_in_denominator=True)


def _check_epoch(epoch) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise HEXInputError(f"epoch must be an integer >= 0, got {epoch!r}")
    return epoch


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HEXTypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise HEXInputError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass
class Schedule:
    """Base of all schedules: parameters are dataclass fields, checked in `_validate`.

    __call__(epoch) -> HexMode; state_dict() -> {"name": ..., <parameters>};
    load_state_dict(d) restores the parameters (after checking the name and every value).
    """

    name: ClassVar[str] = ""
    hierarchy_weight: float = 0.0
    positive_in_denominator: bool = False

    def __post_init__(self):
        _check_weight(self.hierarchy_weight)
        _check_bool("positive_in_denominator", self.positive_in_denominator)
        self._validate()

    def _validate(self) -> None:  # the subclass's own parameters
        pass

    def __call__(self, epoch: int) -> HexMode:
        return self._mode(_check_epoch(epoch))

    def _mode(self, epoch: int) -> HexMode:
        raise NotImplementedError

    def _fixed(self, threshold: float) -> HexMode:
        return HexMode(
            threshold=threshold,
            hierarchy_weight=self.hierarchy_weight,
            positive_in_denominator=self.positive_in_denominator,
        )

    @classmethod
    def parameter_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def state_dict(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        name = state.pop("name", None)
        if name != self.name:
            raise HEXInputError(f"state_dict is for schedule {name!r}, not {self.name!r}")
        restored = _construct(type(self), state)  # validates every parameter
        self.__dict__.update(restored.__dict__)


@dataclass
class NoHex(Schedule):
    """Plain InfoNCE every epoch (the baseline): threshold "none", w = 1, positive in."""

    name: ClassVar[str] = "none"
    hierarchy_weight: float = 1.0
    positive_in_denominator: bool = True

    def _mode(self, epoch: int) -> HexMode:
        return HexMode(
            threshold="none",
            hierarchy_weight=self.hierarchy_weight,
            positive_in_denominator=self.positive_in_denominator,
        )


@dataclass
class Adaptive(Schedule):
    """The quantile rule (HEX_adaptive) after a warm-up that lasts while epoch <= warmup_epochs.

    As the released code (`current_epoch <= warm_epoch`), the default 10 means epochs 0..10.
    warmup: "infonce" (SimCLR: plain InfoNCE), "cosine" (NNCLR/All4One: the HEX loss with the fixed
    raw-cosine eps `warmup_eps` = 0.9), or "off" (the quantile rule from epoch 0).
    """

    name: ClassVar[str] = "adaptive"
    quantile: float = 0.99
    warmup_epochs: int = 10
    warmup: str = "infonce"
    warmup_eps: float = 0.9

    def _validate(self) -> None:
        _check_quantile(self.quantile)
        _check_count("warmup_epochs", self.warmup_epochs, 0)
        if self.warmup not in WARMUPS:
            raise HEXInputError(f"unknown warmup {self.warmup!r}; valid: {', '.join(WARMUPS)}")
        _check_real("warmup_eps", self.warmup_eps)

    def _mode(self, epoch: int) -> HexMode:
        settings = dict(hierarchy_weight=self.hierarchy_weight, positive_in_denominator=self.positive_in_denominator)
        if self.warmup != "off" and epoch <= self.warmup_epochs:
            if self.warmup == "infonce":
                return INFONCE
            return HexMode(threshold="adaptive", eps=self.warmup_eps, quantile=self.quantile, **settings)
        return HexMode(threshold="adaptive", quantile=self.quantile, **settings)


@dataclass
class Step(Schedule):
    """Fixed threshold: `start`, lowered by `step_down` every `epoch_step` epochs (HEX_fixed, step).

    value(e) = start - step_down * (e // epoch_step), by repeated subtraction as the released code
    (so the floats match it), then raised to `floor` when given. The released code has no floor; a
    value below 0 is held at 0 here (hex_loss accepts [0, 1]; at 0 every negative but each row's
    minimum is hierarchical, below 0 the minimum would be too).
    """

    name: ClassVar[str] = "step"
    start: float = 0.95
    step_down: float = 0.1
    epoch_step: int = 100
    floor: float | None = None

    def _validate(self) -> None:
        _check_fixed_eps("start", self.start)
        if _check_real("step_down", self.step_down) < 0:
            raise HEXInputError(f"step_down must be >= 0, got {self.step_down}")
        _check_count("epoch_step", self.epoch_step, 1)
        if self.floor is not None and _check_fixed_eps("floor", self.floor) > self.start:
            raise HEXInputError(f"floor ({self.floor}) must be <= start ({self.start})")

    def value(self, epoch: int) -> float:
        d = float(self.start)
        for _ in range(_check_epoch(epoch) // self.epoch_step):
            d = d - self.step_down
        if self.floor is not None:
            d = max(d, self.floor)
        return max(d, 0.0)

    def _mode(self, epoch: int) -> HexMode:
        return self._fixed(self.value(epoch))


@dataclass
class Cos(Schedule):
    """Fixed threshold on a true cosine from `start` (epoch 0) to `minimum` (epoch total_epochs on).

    value(e) = minimum + (start - minimum) (1 + cos(pi min(e, T) / T)) / 2, T = total_epochs: what the
    supplement describes. The released code compounds instead (see CosReleased).
    """

    name: ClassVar[str] = "cos"
    start: float = 0.95
    minimum: float = 0.65
    total_epochs: int = 400

    def _validate(self) -> None:
        _check_fixed_eps("start", self.start)
        _check_fixed_eps("minimum", self.minimum)
        if self.minimum > self.start:
            raise HEXInputError(f"minimum ({self.minimum}) must be <= start ({self.start})")
        _check_count("total_epochs", self.total_epochs, 1)

    def value(self, epoch: int) -> float:
        e = min(_check_epoch(epoch), self.total_epochs)
        return self.minimum + (self.start - self.minimum) * (1 + math.cos(math.pi * e / self.total_epochs)) / 2

    def _mode(self, epoch: int) -> HexMode:
        return self._fixed(self.value(epoch))


@dataclass
class CosReleased(Cos):
    """The released code's cosine: each epoch e (from 0) it overwrites the threshold with
    d <- minimum + (d - minimum) (1 + cos(pi e / T)) / 2, starting from d = start.

    So value(e) = minimum + (start - minimum) prod_{j<=e} (1 + cos(pi j / T)) / 2, which compounds:
    0.95 -> 0.65 over T = 400 is within 0.01 of 0.65 by epoch 100. Recomputed from epoch 0 on every
    call (in the released order of float operations), so it is a pure function of the epoch.
    """

    name: ClassVar[str] = "cos_released"

    def value(self, epoch: int) -> float:
        d = float(self.start)
        for j in range(_check_epoch(epoch) + 1):
            d = self.minimum + (d - self.minimum) * (1 + math.cos(math.pi * j / self.total_epochs)) / 2
        return d


@dataclass
class Groups(Schedule):
    """Supervised superclass rule every epoch: H(i) = negatives with the same label (pass `groups`)."""

    name: ClassVar[str] = "groups"

    def _mode(self, epoch: int) -> HexMode:
        return HexMode(
            threshold="none",
            use_groups=True,
            hierarchy_weight=self.hierarchy_weight,
            positive_in_denominator=self.positive_in_denominator,
        )


SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (NoHex, Adaptive, Step, Cos, CosReleased, Groups)
}


def _construct(cls: type[Schedule], params: dict) -> Schedule:
    valid = cls.parameter_names()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise HEXInputError(
            f"unknown parameter(s) {', '.join(unknown)} for schedule {cls.name!r}; valid: {', '.join(valid)}"
        )
    return cls(**params)


def build_schedule(name: str, **params) -> Schedule:
    """The schedule called `name` (a key of SCHEDULES) with the given parameters (others default)."""
    if name not in SCHEDULES:
        raise HEXInputError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return _construct(SCHEDULES[name], params)
