"""Threshold rules and schedules for HEX: pure functions of the epoch, named, checkpointable.

A schedule maps an epoch (0-based, like Lightning's `current_epoch`, which the released code uses)
to a `HexSettings`: the `Rule` and loss settings of `hex_loss` in that epoch. It holds no hidden
state, so a resumed run gets
exactly the thresholds the uninterrupted run would have had; `state_dict()`/`load_state_dict()` carry
its parameters through a checkpoint so that the resumed run also uses the same *settings*.

    schedule = build_schedule("cos", start=0.95, minimum=0.65, total_epochs=400)
    settings = schedule(epoch)
    loss = hex_loss(z1, z2, temperature=0.1, **settings.loss_kwargs())   # groups=... if rule.kind == "groups"

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

from hexfast.rules import Rule
from hexfast.validate import (
    HEXInputError,
    check_bool,
    check_choice,
    check_cosine,
    check_count,
    check_epoch,
    check_fixed_threshold,
    check_quantile,
    check_real,
    check_weight,
)

WARMUPS = ("infonce", "cosine", "off")


@dataclass(frozen=True)
class HexSettings:
    """What the HEX loss does in one epoch: the rule and the two loss settings a schedule carries.

    rule: the `hexfast.rules.Rule`; hierarchy_weight: w >= 0; positive_in_denominator: as in hex_loss.
    `loss_kwargs()` are exactly the keyword arguments `hex_loss` / `hex_rect_loss` take for them.
    """

    rule: Rule
    hierarchy_weight: float = 0.0
    positive_in_denominator: bool = False

    def __post_init__(self):
        if not isinstance(self.rule, Rule):
            raise HEXInputError(f"HexSettings.rule must be a hexfast.rules.Rule, got {type(self.rule).__name__}")
        object.__setattr__(self, "hierarchy_weight", check_weight(self.hierarchy_weight))
        check_bool("positive_in_denominator", self.positive_in_denominator)

    def loss_kwargs(self) -> dict:
        """Keyword arguments for `hex_loss` (all but `groups`, which the caller supplies)."""
        return {
            "rule": self.rule,
            "hierarchy_weight": self.hierarchy_weight,
            "positive_in_denominator": self.positive_in_denominator,
        }


# InfoNCE (NT-Xent) in HEX terms: no hierarchical split, the positive in the denominator.
INFONCE = HexSettings(Rule("none"), hierarchy_weight=1.0, positive_in_denominator=True)


@dataclass
class Schedule:
    """Base of all schedules: parameters are dataclass fields, checked in `_validate`.

    __call__(epoch) -> HexSettings; state_dict() -> {"name": ..., <parameters>};
    load_state_dict(d) restores the parameters (after checking the name and every value).
    """

    name: ClassVar[str] = ""
    hierarchy_weight: float = 0.0
    positive_in_denominator: bool = False

    def __post_init__(self):
        check_weight(self.hierarchy_weight)
        check_bool("positive_in_denominator", self.positive_in_denominator)
        self._validate()

    def _validate(self) -> None:  # the subclass's own parameters
        pass

    def __call__(self, epoch: int) -> HexSettings:
        return self._settings(check_epoch(epoch))

    def _settings(self, epoch: int) -> HexSettings:
        raise NotImplementedError

    def _with(self, rule: Rule) -> HexSettings:
        """`rule` with this schedule's loss settings."""
        return HexSettings(rule, self.hierarchy_weight, self.positive_in_denominator)

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

    def _settings(self, epoch: int) -> HexSettings:
        return self._with(Rule("none"))


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
        check_quantile(self.quantile)
        check_count("warmup_epochs", self.warmup_epochs, 0)
        check_choice("warmup", self.warmup, WARMUPS)
        check_cosine("warmup_eps", self.warmup_eps)

    def _settings(self, epoch: int) -> HexSettings:
        if self.warmup != "off" and epoch <= self.warmup_epochs:
            if self.warmup == "infonce":
                return INFONCE
            return self._with(Rule("adaptive", self.warmup_eps, self.quantile))
        return self._with(Rule("adaptive", quantile=self.quantile))


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
        check_fixed_threshold("start", self.start)
        if check_real("step_down", self.step_down) < 0:
            raise HEXInputError(f"step_down must be >= 0, got {self.step_down}")
        check_count("epoch_step", self.epoch_step, 1)
        if self.floor is not None and check_fixed_threshold("floor", self.floor) > self.start:
            raise HEXInputError(f"floor ({self.floor}) must be <= start ({self.start})")

    def value(self, epoch: int) -> float:
        d = float(self.start)
        for _ in range(check_epoch(epoch) // self.epoch_step):
            d = d - self.step_down
        if self.floor is not None:
            d = max(d, self.floor)
        return max(d, 0.0)

    def _settings(self, epoch: int) -> HexSettings:
        return self._with(Rule("fixed", self.value(epoch)))


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
        check_fixed_threshold("start", self.start)
        check_fixed_threshold("minimum", self.minimum)
        if self.minimum > self.start:
            raise HEXInputError(f"minimum ({self.minimum}) must be <= start ({self.start})")
        check_count("total_epochs", self.total_epochs, 1)

    def value(self, epoch: int) -> float:
        e = min(check_epoch(epoch), self.total_epochs)
        return self.minimum + (self.start - self.minimum) * (1 + math.cos(math.pi * e / self.total_epochs)) / 2

    def _settings(self, epoch: int) -> HexSettings:
        return self._with(Rule("fixed", self.value(epoch)))


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
        for j in range(check_epoch(epoch) + 1):
            d = self.minimum + (d - self.minimum) * (1 + math.cos(math.pi * j / self.total_epochs)) / 2
        return d


@dataclass
class Groups(Schedule):
    """Supervised superclass rule every epoch: H(i) = negatives with the same label (pass `groups`)."""

    name: ClassVar[str] = "groups"

    def _settings(self, epoch: int) -> HexSettings:
        return self._with(Rule("groups"))


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
