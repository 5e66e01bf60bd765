"""One typed config for pretraining: every default in one place, a comment per field.

The top-level defaults are the README's "main job": SimCLR + HEX (adaptive) on the embedded
Fashion-MNIST subset with a tiny CNN, finishing in a few minutes on a 2-core CPU. The per-method
sections hold the baseline hyperparameters of the HEX supplement, Table 6 (solo-learn's CIFAR
settings); `configs/*.yaml` hold the paper-scale runs.

Sources of values, in order (later wins): the dataclass defaults, `--config FILE.yaml`, the named CLI
flags, `key=value` overrides (dotted keys, values parsed as YAML). Unknown keys, wrong types and
values outside their choices are rejected by `validate` before anything runs, naming the valid
choices.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hexfast import validate as V
from train.methods import METHODS

METHOD_NAMES = tuple(METHODS)  # the registry's order; each method also gets its section below


class ConfigError(ValueError):
    """A bad configuration: unknown key, wrong type, value outside its valid choices."""


def choice(default, choices, **kw):
    """A field whose value must be one of `choices` (checked by `validate`)."""
    return field(default=default, metadata={"choices": tuple(choices)}, **kw)


HEX_MODES = ("none", "adaptive", "fixed", "superclass")
KERNELS = ("auto", "torch", "triton")
LOADERS = ("auto", "dali", "torchvision")
BACKBONES = ("tiny", "resnet18", "resnet50")
FIXED_SCHEDULES = ("step", "cos", "cos_released")
HEX_WARMUPS = ("auto", "infonce", "cosine", "off")
PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
ACCELERATORS = ("auto", "cpu", "gpu")


@dataclass
class HexConfig:
    mode: str = choice("adaptive", HEX_MODES)  # none = the method's standard loss; superclass = coarse labels as groups
    quantile: float = 0.99            # adaptive: eps = mean over rows of each row's nearest-rank q-quantile (spec §2)
    warmup: str = choice("auto", HEX_WARMUPS)  # adaptive warm-up; auto = per method as released (train/hexterm.py)
    warmup_epochs: int = 1            # warm-up while epoch <= this (released: 10 of 400-500); needs warmup != off
    warmup_eps: float = 0.9           # NNCLR/All4One raw-cosine threshold during warm-up (released code)
    fixed_schedule: str = choice("step", FIXED_SCHEDULES)  # fixed: threshold schedule over epochs (spec §3)
    fixed_start: float = 0.95         # fixed: starting threshold on the min-max normalised cosine (Table 7)
    fixed_min: float = 0.65           # fixed: floor / end of the cosine (Table 7)
    fixed_step: float = 0.1           # fixed "step": subtracted every `fixed_epoch_step` epochs (Table 7)
    fixed_epoch_step: int = 1         # fixed "step": epochs between steps (short default run; 100 for 400 epochs)
    hierarchy_weight: float = 0.0     # w: weight of hierarchical negatives in the denominator (0 = dropped, released code)
    positive_in_denominator: bool = False  # add e^{s_pos/t} to the denominator (released code: no)
    alpha: float = 0.1                # Barlow/VICReg/BYOL/SimSiam: loss = alpha * HEX + (1 - alpha) * L (Table 6 text)
    vicreg_scale: float = 5.0         # VICReg: the HEX term is scaled by 5 (released code)
    temperature: float = 0.1          # tau of the added HEX term for Barlow/VICReg/BYOL/SimSiam (released: 0.1)


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist-small"  # the embedded subset needs no path; see train.data.load_dataset
    root: str = ""                    # folder with the dataset files ("" = the embedded copy / default location)
    loader: str = choice("auto", LOADERS)  # auto = DALI when importable and on a GPU, else torchvision
    num_workers: int = 2              # torchvision loader worker processes
    image_size: int = 0               # crop size; 0 = the dataset's native size
    train_split: str = "train"        # split to pretrain on (stl10: "train+unlabeled" adds its 100k unlabelled images)
    eval_split: str = "test"          # split used for kNN / probe evaluation
    train_subset: int = 0             # use only the first N training images (smoke runs, tests); 0 = all
    eval_subset: int = 0              # evaluate on the first N eval-split images; 0 = all


@dataclass
class ModelConfig:
    backbone: str = choice("tiny", BACKBONES)  # tiny CNN (CPU) or torchvision ResNets
    small_stem: str = choice("auto", ("auto", "yes", "no"))  # 3x3 stem without max-pool; auto = yes for images <= 64 px
    tiny_width: int = 32              # channels of the tiny CNN's first stage (doubles per stage)


@dataclass
class OptimConfig:
    scale_lr: bool = True             # lr = base lr x batch / 256 (solo-learn; Table 6 lrs are for batch 256)
    momentum: float = 0.9             # SGD / LARS momentum
    lars_eta: float = 0.02            # LARS trust coefficient (released CIFAR setup)
    lars_clip: bool = False           # LARC-style clipping of the adaptive lr
    warmup_epochs: float = 1.0        # linear warm-up length (solo-learn: 10 of 400)
    warmup_start_factor: float = 0.0  # warm-up starts at this fraction of the peak lr
    min_lr_factor: float = 0.0        # cosine ends at this fraction of the peak lr
    classifier_lr: float = 0.1        # online linear probe lr (no weight decay, no LARS adaptation)
    adamw_betas: tuple = (0.9, 0.999)  # AdamW betas


@dataclass
class TrainConfig:
    epochs: int = 10                  # pretraining epochs (the main job: ~2-3 min on a 2-core CPU)
    batch_size: int = 256             # GLOBAL batch (split evenly over devices x nodes)
    max_steps: int = -1               # stop after this many optimizer steps (smoke runs); -1 = epochs x steps
    devices: int = 1                  # processes per node (GPUs, or CPU processes with gloo)
    num_nodes: int = 1                # nodes for multi-node DDP
    accelerator: str = choice("auto", ACCELERATORS)
    precision: str = choice("auto", PRECISIONS)  # auto = bf16-mixed on GPUs, 32 on the CPU
    seed: int = 0                     # global seed (model init, augmentations, data order)
    out: str = ""                     # run directory; "" = runs/<method>-<hex>-<timestamp>
    resume: bool = False              # continue the run in `out` from its last checkpoint
    checkpoint_every_steps: int = 0   # also checkpoint every N steps (0 = at the end of each epoch only)
    log_every_steps: int = 10         # logging interval
    progress_bar: bool = True
    channels_last: bool = True        # channels-last memory format (GPUs; also ~20% faster convs on the CPU)


@dataclass
class EvalConfig:
    knn_k: int = 20                   # neighbours of the kNN classifier (solo-learn: 20)
    knn_temperature: float = 0.07     # kNN weights exp(cos / T) (solo-learn / InstDisc)
    every_epochs: int = 1             # evaluate (kNN + probe on the eval split) every N epochs and at the end
    max_bank: int = 0                 # cap on kNN memory-bank images (0 = the whole train split)


@dataclass
class _Config:
    method: str = choice("simclr", METHOD_NAMES)  # SSL method; its section (`<method>.*`) holds its hyperparameters
    kernel: str = choice("auto", KERNELS)  # HEX implementation: torch reference, triton fused kernel, auto
    hex: HexConfig = field(default_factory=HexConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def params(self):
        """The selected method's hyperparameter section."""
        return getattr(self, self.method)


def _method_sections() -> list:
    """One section per registered method (its `Params`: supplement Table 6 baselines), named as the
    method; only the selected one is used."""
    for cls in METHODS.values():
        cls.check_policy()
    return [(name, cls.Params, field(default_factory=cls.Params)) for name, cls in METHODS.items()]


# The whole config: the sections above, then one per method of the registry.
Config = dataclasses.make_dataclass("Config", _method_sections(), bases=(_Config,))
Config.__module__ = __name__
Config.__doc__ = "The whole pretraining config: the shared sections, then one section per method (train.methods.METHODS)."


# ---------------------------------------------------------------------------------------------
# dict <-> config, with checks


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, key: str):
    """`value` checked against the annotation `tp` (int accepted for float; tuples from lists)."""
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r} ({type(value).__name__})")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r} ({type(value).__name__})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r} ({type(value).__name__})")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r} ({type(value).__name__})")
        return value
    if tp is tuple:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{key}: expected a list of numbers, got {value!r}")
        return tuple(float(v) for v in value)
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _fill(obj, data: dict, prefix: str = "") -> None:
    """Write the (nested) dict `data` into the dataclass `obj`, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _fill(getattr(obj, key), value, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(value, tp, full))


def _check_choices(obj, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{prefix}{f.name}.")
        elif "choices" in f.metadata and value not in f.metadata["choices"]:
            raise ConfigError(
                f"{prefix}{f.name}: unknown value {value!r}; valid: {', '.join(map(str, f.metadata['choices']))}"
            )


def _check_hex(h: HexConfig) -> None:
    """The `hex` section's ranges, by the checks the loss and the schedules use (hexfast.validate)."""
    try:
        V.check_quantile(h.quantile, "hex.quantile")
        V.check_count("hex.warmup_epochs", h.warmup_epochs, 0)
        V.check_cosine("hex.warmup_eps", h.warmup_eps)
        V.check_fixed_threshold("hex.fixed_start", h.fixed_start)
        V.check_fixed_threshold("hex.fixed_min", h.fixed_min)
        if h.fixed_min > h.fixed_start:
            raise ConfigError(f"hex.fixed_min ({h.fixed_min}) must be <= hex.fixed_start ({h.fixed_start})")
        V.check_weight(h.fixed_step, "hex.fixed_step")
        V.check_count("hex.fixed_epoch_step", h.fixed_epoch_step, 1)
        V.check_weight(h.hierarchy_weight, "hex.hierarchy_weight")
        V.check_unit("hex.alpha", h.alpha)
        V.check_weight(h.vicreg_scale, "hex.vicreg_scale")
        V.check_temperature(h.temperature, "hex.temperature")
    except V.HEXInputError as err:
        raise ConfigError(str(err)) from err


def validate(cfg: Config) -> Config:
    """Choices and ranges that the types alone do not catch. Returns cfg; raises ConfigError."""
    _check_choices(cfg)
    t, h = cfg.train, cfg.hex

    def need(cond, msg):
        if not cond:
            raise ConfigError(msg)

    need(t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}")
    need(t.devices >= 1 and t.num_nodes >= 1, "train.devices and train.num_nodes must be >= 1")
    world = t.devices * t.num_nodes
    need(t.batch_size >= 2 * world, f"train.batch_size ({t.batch_size}) needs >= 2 samples per process ({world} processes)")
    need(t.batch_size % world == 0, f"train.batch_size ({t.batch_size}) must divide evenly over {world} processes")
    need(t.max_steps == -1 or t.max_steps >= 1, f"train.max_steps must be -1 or >= 1, got {t.max_steps}")
    _check_hex(h)
    need(cfg.optim.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0")
    need(cfg.eval.knn_k >= 1 and cfg.eval.every_epochs >= 1, "eval.knn_k and eval.every_epochs must be >= 1")
    need(cfg.data.num_workers >= 0 and cfg.data.image_size >= 0, "data.num_workers and data.image_size must be >= 0")
    need(cfg.data.train_subset >= 0 and cfg.data.eval_subset >= 0, "data.train_subset and data.eval_subset must be >= 0")
    try:
        cfg.params.check(cfg)  # method-specific ranges (queue sizes, ...)
    except ConfigError:
        raise
    except ValueError as err:  # reported like every other config error
        raise ConfigError(str(err)) from err
    return cfg


def from_dict(data: dict | None = None) -> Config:
    """A Config from a nested dict over the defaults (keys and types checked, then `validate`)."""
    cfg = Config()
    _fill(cfg, data or {})
    return validate(cfg)


def to_dict(cfg: Config) -> dict:
    d = dataclasses.asdict(cfg)

    def fix(x):  # tuples as lists, so YAML and JSON stay plain
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        if isinstance(x, tuple):
            return [fix(v) for v in x]
        return x

    return fix(d)


def parse_override(item: str) -> dict:
    """'a.b.c=value' -> {'a': {'b': {'c': value}}} with the value parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.epochs=20)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: cannot parse the value ({err})") from err
    if value is None:
        value = raw
    return nested(key, value)


def nested(key: str, value) -> dict:
    """'a.b.c', v -> {'a': {'b': {'c': v}}}."""
    out: dict = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def merge(base: dict, extra: dict) -> dict:
    """Recursive dict merge (extra wins)."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with open(path) as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path}: invalid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of keys")
    return data


def save_yaml(cfg: Config, path: str | Path) -> None:
    with open(path, "w") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


def config_hash(cfg: Config) -> str:
    """sha256 (first 16 hex) of the settings that change the result (not where it is written)."""
    d = to_dict(cfg)
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("out", "resume", "progress_bar")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
