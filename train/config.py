"""One typed config for pretraining: every default in one place, a comment per field.

The top-level defaults are the README's "main job": SimCLR + HEX (adaptive) on the embedded
Fashion-MNIST subset with a tiny CNN, sized for a 2-core CPU (the README's Quick start gives its
measured wall time). The per-method sections (one per entry of train.methods.METHODS) hold the
baseline hyperparameters of the HEX supplement, Table 6 (solo-learn's CIFAR settings);
`configs/*.yaml` hold the paper-scale runs.

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
COMPILE_MODES = ("off", "default", "reduce-overhead")


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
    hierarchy_weight: float = 0.0     # w: weight of hierarchical negatives in the denominator (0 = dropped, released)
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
    download: bool = False            # fetch the dataset's standard archives into root first (internet; MD5-checked)


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
    classifier_lr: float = 0.5        # online linear probe lr (no weight decay, no LARS adaptation); 0.1 left the
                                      # main job's probe under-trained (54% vs 69% fine, README Quick start)
    adamw_betas: tuple = (0.9, 0.999)  # AdamW betas


@dataclass
class TrainConfig:
    epochs: int = 10                  # pretraining epochs (the main job's; its run time: README, Quick start)
    batch_size: int = 128             # GLOBAL batch (split evenly over devices x nodes); the main job's 128 gives it
                                      # twice the steps of 256 for the same images (README, Quick start)
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
    progress_bar: bool = True         # the per-step bar, on a terminal only (per-epoch lines are printed always)
    tensorboard: str = choice("auto", ("auto", "on", "off"))  # TensorBoard logs beside the CSV; auto = if installed
    wandb: str = choice("off", ("off", "offline", "online"))  # Weights & Biases logger; offline writes OUT/wandb only
    wandb_project: str = "hexfast"    # W&B project name
    channels_last: bool = True        # channels-last memory format (GPUs; also ~20% faster convs on the CPU)
    # torch.compile of the step's forward (backbone(s), projector, method loss, probes) and its backward:
    # off | default | reduce-overhead (also CUDA graphs on a GPU; on the CPU the same as default)
    compile: str = choice("off", COMPILE_MODES)


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
Config.__doc__ = "The pretraining config: the shared sections, then one section per method (train.methods.METHODS)."


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


@dataclass(frozen=True)
class Range:
    """A numeric interval: lo / hi bounds (None = unbounded), open or closed; `sentinel` is one
    extra value with a meaning of its own (e.g. max_steps -1 = no limit)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    sentinel: float | None = None

    def __contains__(self, v) -> bool:
        if self.sentinel is not None and v == self.sentinel:
            return True
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def __str__(self) -> str:
        def num(x):
            return str(int(x)) if float(x).is_integer() else repr(x)

        if self.lo is not None and self.hi is not None:
            text = f"in {'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {num(self.lo)}"
        else:
            text = f"{'<' if self.hi_open else '<='} {num(self.hi)}"
        return text if self.sentinel is None else f"{num(self.sentinel)} or {text}"


POSITIVE, NON_NEGATIVE, AT_LEAST_1 = Range(0, lo_open=True), Range(0), Range(1)
UNIT, UNIT_OPEN_TOP = Range(0, 1), Range(0, 1, hi_open=True)
# The valid range of every numeric field outside the hex section (which hexfast.validate checks,
# in _check_hex). Cross-field rules (batch over processes, fixed_min <= fixed_start, ...) follow
# in validate().
RANGES = {
    "data.num_workers": NON_NEGATIVE, "data.image_size": NON_NEGATIVE,   # 0 = the dataset's size
    "data.train_subset": NON_NEGATIVE, "data.eval_subset": NON_NEGATIVE,  # 0 = all
    "model.tiny_width": AT_LEAST_1,
    "optim.momentum": UNIT_OPEN_TOP, "optim.lars_eta": POSITIVE, "optim.warmup_epochs": NON_NEGATIVE,
    "optim.warmup_start_factor": UNIT, "optim.min_lr_factor": UNIT, "optim.classifier_lr": POSITIVE,
    "optim.adamw_betas": UNIT_OPEN_TOP,                                   # each of the two
    "train.epochs": AT_LEAST_1, "train.batch_size": AT_LEAST_1, "train.max_steps": Range(1, sentinel=-1),
    "train.devices": AT_LEAST_1, "train.num_nodes": AT_LEAST_1, "train.seed": Range(0, 2 ** 32, hi_open=True),
    "train.checkpoint_every_steps": NON_NEGATIVE, "train.log_every_steps": AT_LEAST_1,   # 0 = per epoch
    "eval.knn_k": AT_LEAST_1, "eval.knn_temperature": POSITIVE, "eval.every_epochs": AT_LEAST_1,
    "eval.max_bank": NON_NEGATIVE,                                        # 0 = the whole train split
}
# Method sections: by field name, the same in every method (a method's check() adds its own rules).
METHOD_RANGES = {
    "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "temperature": POSITIVE, "queue_size": AT_LEAST_1,
    "proj_hidden_dim": AT_LEAST_1, "proj_output_dim": AT_LEAST_1, "pred_hidden_dim": AT_LEAST_1,
    "momentum": UNIT, "final_momentum": UNIT, "transformer_layers": AT_LEAST_1, "transformer_heads": AT_LEAST_1,
    "transformer_dropout": UNIT_OPEN_TOP, "transformer_lr": POSITIVE, "lamb": NON_NEGATIVE,
    "scale_loss": POSITIVE, "sim_loss_weight": NON_NEGATIVE, "var_loss_weight": NON_NEGATIVE,
    "cov_loss_weight": NON_NEGATIVE,
}


def range_of(key: str) -> Range | None:
    """The Range of dotted config key `key` (None: the hex section, or not numeric)."""
    if key in RANGES:
        return RANGES[key]
    section, _, name = key.partition(".")
    if section not in METHOD_NAMES:
        return None
    declared = {f.name: f for f in dataclasses.fields(METHODS[section].Params)}.get(name)
    if declared is not None and "range" in declared.metadata:  # declared in the method's file (base.ranged)
        return Range(**declared.metadata["range"])
    return METHOD_RANGES.get(name)


def _check_ranges(cfg: Config) -> None:
    for key, value in _numeric_fields(cfg):
        rng = range_of(key)
        if rng is None:
            if not key.startswith("hex."):
                raise ConfigError(f"{key}: no valid range is declared for this field (train/config.py RANGES, or "
                                  "train.methods.base.ranged in the method's Params)")
            continue
        for v in value if isinstance(value, tuple) else (value,):
            if v not in rng:
                raise ConfigError(f"{key} must be {rng}, got {value if isinstance(value, tuple) else v}")


def _numeric_fields(obj, prefix: str = ""):
    """(dotted key, value) of every int / float / tuple-of-numbers field of a config."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _numeric_fields(value, f"{prefix}{f.name}.")
        elif hints[f.name] in (int, float, tuple):
            yield f"{prefix}{f.name}", value


def validate(cfg: Config) -> Config:
    """Choices and ranges that the types alone do not catch. Returns cfg; raises ConfigError."""
    _check_choices(cfg)
    t, h = cfg.train, cfg.hex

    def need(cond, msg):
        if not cond:
            raise ConfigError(msg)

    _check_ranges(cfg)
    world = t.devices * t.num_nodes
    need(t.batch_size >= 2 * world,
         f"train.batch_size ({t.batch_size}) needs >= 2 samples per process ({world} processes)")
    need(t.batch_size % world == 0, f"train.batch_size ({t.batch_size}) must divide evenly over {world} processes")
    _check_hex(h)
    need(t.compile == "off" or h.mode != "fixed" or h.fixed_schedule == "step",
         f"train.compile={t.compile} needs a threshold that changes in steps, but hex.fixed_schedule="
         f"{h.fixed_schedule} changes it every epoch and every value would compile a new graph; "
         "use hex.fixed_schedule=step or train.compile=off")
    e = cfg.eval
    need(e.max_bank == 0 or e.max_bank >= e.knn_k,
         f"eval.max_bank ({e.max_bank}) must be 0 (the whole train split) or >= eval.knn_k ({e.knn_k})")
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
        value = parse_yaml(raw) if raw.strip() else ""
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


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader, except that a key given twice in one mapping is an error (PyYAML's own
    loader keeps the last value silently, so a forgotten duplicate would quietly win). Keys a merge
    (<<) brings in may still be overridden, as YAML defines."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
                if first is not key_node:
                    raise _DuplicateKey(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                                        f"(first given at line {first.start_mark.line + 1})")
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str):
    """YAML text -> Python values (safe types only; duplicate keys are an error)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def load_yaml(path: str | Path) -> dict:
    """The mapping in YAML file `path`; ConfigError naming the file when it is missing, not UTF-8,
    not valid YAML, has a duplicate key or is not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text (undecodable byte 0x{raw[err.start]:02x} at "
                          f"offset {err.start}); save it as UTF-8 YAML") from err
    try:
        data = parse_yaml(text)
    except _DuplicateKey as err:
        raise ConfigError(f"config file {path}: {err}; give each key once") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path}: invalid YAML ({err})") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of keys")
    return data


def save_yaml(cfg: Config, path: str | Path) -> None:
    """Write the config as YAML, atomically (a crash mid-write never leaves half a file)."""
    import os

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
    os.replace(tmp, path)


# where a run is written and what watches it, not what it computes
RESULT_NEUTRAL_TRAIN_KEYS = ("out", "resume", "progress_bar", "tensorboard", "wandb", "wandb_project")


def config_hash(cfg: Config) -> str:
    """sha256 (first 16 hex) of the settings that change the result (not where it is written)."""
    d = to_dict(cfg)
    d["train"] = {k: v for k, v in d["train"].items() if k not in RESULT_NEUTRAL_TRAIN_KEYS}
    d["data"] = {k: v for k, v in d["data"].items() if k != "download"}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
