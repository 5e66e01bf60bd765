"""`python -m train.pretrain`: self-supervised pretraining with or without HEX.

    python -m train.pretrain                                   # SimCLR + HEX on the embedded data
    python -m train.pretrain --method nnclr --hex fixed --epochs 20 --out runs/nnclr-fixed
    python -m train.pretrain --config configs/cifar100_simclr_hex.yaml --data-dir DATA
    python -m train.pretrain --out runs/x --resume             # continue a killed run
    python -m train.pretrain simclr.temperature=0.2 hex.quantile=0.98   # any config field

    python -m train.pretrain --compare-baseline                # the same budget with --hex none, side by side
    python -m train.pretrain --print-config --epochs 20        # the resolved config, then exit

Everything is checked before training starts (config keys and types, method, dataset, kernel). The
run directory receives config.yaml (the resolved config), logs/ (CSV always; TensorBoard when
installed, `pip install hexfast[tensorboard]`; W&B with --wandb), checkpoints/last.ckpt, plots/*.png
and summary.json (the initial network's and the final metrics, the gain, history, config hash).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
import time
from pathlib import Path

from train import config as C

# named flags -> dotted config keys
FLAGS = {
    "method": "method", "hex": "hex.mode", "kernel": "kernel", "dataset": "data.dataset",
    "data_dir": "data.root", "backbone": "model.backbone", "epochs": "train.epochs",
    "batch_size": "train.batch_size", "devices": "train.devices", "num_nodes": "train.num_nodes",
    "loader": "data.loader", "max_steps": "train.max_steps", "out": "train.out", "seed": "train.seed",
    "tensorboard": "train.tensorboard", "wandb": "train.wandb",
}
TRAIN_EXTRA = ("lightning", "torchvision", "matplotlib")  # what `pip install hexfast[train]` brings


def default(key: str):
    """The config default of a dotted key (for --help)."""
    node = C.Config()
    for part in key.split("."):
        node = getattr(node, part)
    return node


def dataset_names() -> list[str]:
    try:
        from train.data.registry import DATASETS
    except ImportError:  # --help must work before the extras are installed
        return ["fashion-mnist-small", "fashion-mnist", "mnist", "cifar10", "cifar100", "stl10", "imagefolder",
                "flatfolder"]
    return sorted(DATASETS, key=lambda n: (n != "fashion-mnist-small", n))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m train.pretrain", description=__doc__.split("\n\n")[0],
                                 epilog="Every config field (train/config.py; --print-config lists them with "
                                        "their values) can also be set as key=value.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)

    def choices(values, key):
        return f"one of {', '.join(values)} (default {default(key)})"

    ap.add_argument("--config", help="YAML file of config values, applied over the defaults")
    ap.add_argument("--method", help=choices(C.METHOD_NAMES, "method"))
    ap.add_argument("--hex", help=choices(C.HEX_MODES, "hex.mode"))
    ap.add_argument("--kernel", help=choices(C.KERNELS, "kernel") + "; auto = the fused kernel on CUDA tensors")
    ap.add_argument("--dataset", help=f"one of {', '.join(dataset_names())} (default {default('data.dataset')}, "
                                      "embedded: needs no files)")
    ap.add_argument("--data-dir", help="folder with the dataset's files (default: the embedded copy, else "
                                       "$HEXFAST_DATA/<name> or ~/.cache/hexfast/<name>); data.download=true fetches "
                                       "the standard archives there")
    ap.add_argument("--backbone", help=choices(C.BACKBONES, "model.backbone"))
    ap.add_argument("--epochs", type=int, help=f"pretraining epochs (default {default('train.epochs')})")
    ap.add_argument("--batch-size", type=int, help=f"global batch size (default {default('train.batch_size')})")
    ap.add_argument("--devices", type=int, help=f"processes (GPUs, or CPU processes) per node "
                                                f"(default {default('train.devices')})")
    ap.add_argument("--num-nodes", type=int, help=f"nodes (default {default('train.num_nodes')})")
    ap.add_argument("--loader", help=choices(C.LOADERS, "data.loader")
                    + "; auto = DALI on a GPU when installed, else torchvision")
    ap.add_argument("--max-steps", type=int, help=f"stop after this many optimizer steps, smoke runs "
                                                  f"(default {default('train.max_steps')}: epochs x steps)")
    ap.add_argument("--out", help="run directory (default runs/<method>-<hex>-<time>)")
    ap.add_argument("--seed", type=int, help=f"global seed (default {default('train.seed')})")
    ap.add_argument("--tensorboard", help=choices(("auto", "on", "off"), "train.tensorboard")
                    + "; auto = when installed (pip install hexfast[tensorboard])")
    ap.add_argument("--wandb", nargs="?", const="offline",
                    help="log to Weights & Biases too: offline (the default when given: files under OUT/wandb, "
                         "no account needed; `wandb sync` uploads them later) or online (default off; "
                         "pip install hexfast[wandb])")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    ap.add_argument("--compare-baseline", action="store_true",
                    help="also run the same budget with --hex none and print both side by side "
                         "(runs in OUT/hex-<mode> and OUT/hex-none)")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="any config field, e.g. hex.quantile=0.98")
    return ap


def resolve(argv=None) -> C.Config:
    """The checked Config from the command line (raises ConfigError before anything runs)."""
    return resolve_args(build_parser().parse_intermixed_args(argv))  # key=value overrides may sit between flags


def resolve_args(args) -> C.Config:
    data: dict = {}
    if args.resume:
        if not args.out:
            raise C.ConfigError("--resume needs --out RUN_DIR (the run to continue)")
        saved = Path(args.out) / "config.yaml"
        if not saved.is_file():
            raise C.ConfigError(f"--resume: {saved} does not exist (no run to continue there)")
        data = C.load_yaml(saved)
    if args.config:
        data = C.merge(data, C.load_yaml(args.config))
    for name, key in FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            data = C.merge(data, C.nested(key, value))
    for item in args.overrides:
        data = C.merge(data, C.parse_override(item))
    if args.resume:
        data = C.merge(data, {"train": {"resume": True}})
    try:
        return C.from_dict(data)
    except ValueError as err:
        raise C.ConfigError(str(err)) from err


def check_environment(cfg: C.Config) -> None:
    """Fail fast on settings this machine cannot run."""
    import torch

    gpu = torch.cuda.is_available()
    if cfg.kernel == "triton" and not gpu and os.environ.get("TRITON_INTERPRET") != "1":
        raise C.ConfigError("--kernel triton needs a CUDA GPU (none found). Use --kernel torch or auto, or set "
                            "TRITON_INTERPRET=1 to run the kernel under the (slow) Triton interpreter")
    if cfg.kernel == "triton":
        from hexfast.backend import KernelUnavailableError, load

        try:
            load("triton")
        except KernelUnavailableError as err:
            raise C.ConfigError(
                f"--kernel triton: the fused kernel cannot be imported ({err}); use --kernel torch") from err
    if cfg.train.accelerator == "gpu" and not gpu:
        raise C.ConfigError("train.accelerator=gpu but no CUDA GPU is available; use auto or cpu")
    devices = cfg.train.devices
    if gpu and cfg.train.accelerator != "cpu":
        have, what = torch.cuda.device_count(), "CUDA GPU"
    else:
        have = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        what = "CPU core"
    if devices > have:
        raise C.ConfigError(f"train.devices ({devices}) exceeds the {have} {what}{'s' if have != 1 else ''} "
                            f"of this machine; use --devices {have} or fewer")
    if cfg.train.tensorboard == "on" and importlib.util.find_spec("tensorboard") is None:
        raise C.ConfigError("train.tensorboard=on: TensorBoard is not installed (pip install hexfast[tensorboard]); "
                            "use auto or off")
    if cfg.train.wandb != "off" and importlib.util.find_spec("wandb") is None:
        raise C.ConfigError(f"--wandb {cfg.train.wandb}: wandb is not installed (pip install hexfast[wandb]); "
                            "runs never need it (CSV logs are always written)")
    if cfg.data.loader == "dali":
        from train.data import dali_available

        if not dali_available():
            raise C.ConfigError("--loader dali: NVIDIA DALI is not installed (pip install nvidia-dali-cuda130); "
                                "use --loader torchvision or auto")


class RunData:
    """The datasets of a run, and the loaders built once the process's rank and device are known."""

    def __init__(self, cfg: C.Config):
        import numpy as np

        from train.data import augment_preset, load_dataset
        from train.methods import METHODS

        d = cfg.data
        root = d.root or None
        self.cfg = cfg
        try:  # a missing or bad dataset is a setup error: report it before anything runs
            self.train = load_dataset(d.dataset, root=root, split=d.train_split, download=d.download)
            self.eval = load_dataset(d.dataset, root=root, split=d.eval_split)
        except ValueError as err:  # DataError is a ValueError
            raise C.ConfigError(f"dataset {d.dataset!r}: {err}") from err
        if d.train_subset and d.train_subset < len(self.train):
            self.train = self.train.subset(np.arange(d.train_subset))
        if d.eval_subset and d.eval_subset < len(self.eval):
            self.eval = self.eval.subset(np.arange(d.eval_subset))
        # the kNN bank holds the labelled training images only (an unlabelled split has fine = -1)
        labelled = None if self.train.fine is None else np.flatnonzero(self.train.fine >= 0)
        self.bank = self.train if labelled is None or len(labelled) == len(self.train) else self.train.subset(labelled)
        self.image_size = d.image_size or self.train.image_size
        self.aug = augment_preset(METHODS[cfg.method].augment, self.image_size)
        if cfg.hex.mode == "superclass" and self.train.coarse is None:
            raise C.ConfigError(f"--hex superclass needs coarse labels; dataset {d.dataset!r} has none "
                                "(fashion-mnist-small, fashion-mnist and cifar100 have them)")
        world = cfg.train.devices * cfg.train.num_nodes
        self.local_batch = cfg.train.batch_size // world
        if len(self.train) < cfg.train.batch_size:
            raise C.ConfigError(
                f"train.batch_size ({cfg.train.batch_size}) exceeds the dataset size ({len(self.train)})")

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train) // self.cfg.train.batch_size  # every process takes local_batch per step

    def pretrain_loader(self, rank: int, world_size: int, device):
        from train.data import make_pretrain_loader

        dev = "cuda" if device.type == "cuda" else "cpu"
        if dev == "cuda" and device.index is not None:
            dev = f"cuda:{device.index}"
        return make_pretrain_loader(self.train, self.aug, batch_size=self.local_batch, loader=self.cfg.data.loader,
                                    device=dev, seed=self.cfg.train.seed, rank=rank, world_size=world_size,
                                    num_workers=self.cfg.data.num_workers)

    def eval_loaders(self, device, rank: int = 0, world_size: int = 1, max_bank: int = 0):
        """(bank loader over the labelled training images, loader over the eval split), this process's shard."""
        from train.data import make_eval_loader

        dev = str(device) if device.type == "cuda" else "cpu"
        kw = dict(batch_size=512, device=dev, image_size=self.image_size)
        return (make_eval_loader(shard_dataset(self.bank, rank, world_size, max_bank), **kw),
                make_eval_loader(shard_dataset(self.eval, rank, world_size), **kw))


def shard_dataset(ds, rank: int, world_size: int, cap: int = 0):
    """Samples rank, rank + W, ... of the first `cap` (0 = all) of `ds`, padded to ceil(n / W) rows
    so every process extracts the same number; padding rows are unlabelled (-1), so the kNN and
    probe accuracies ignore them after the features are gathered."""
    import numpy as np

    n = min(len(ds), cap) if cap else len(ds)
    if world_size == 1 and n == len(ds):
        return ds
    per = -(-n // world_size)
    idx = rank + world_size * np.arange(per)
    pad = idx >= n
    sub = ds.subset(np.where(pad, idx % n, idx))
    for attr in ("fine", "coarse"):
        labels = getattr(sub, attr)
        if labels is not None and pad.any():
            labels = labels.copy()
            labels[pad] = -1
            setattr(sub, attr, labels)
    return sub


def is_first_process() -> bool:
    """Whether this is the run's first process, before a Trainer exists: Lightning's launcher
    re-runs this script for processes 1.. with LOCAL_RANK set, a node's first process has NODE_RANK,
    torchrun sets RANK (the first of RANK, LOCAL_RANK, SLURM_PROCID set decides, as in Lightning)."""
    if (os.environ.get("NODE_RANK") or "0").strip() != "0":
        return False
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(var) is not None:
            return os.environ[var].strip() in ("", "0")
    return True


def default_out(cfg: C.Config) -> Path:
    return Path("runs") / f"{cfg.method}-{cfg.hex.mode}-{time.strftime('%Y%m%d-%H%M%S')}"


def build_loggers(cfg: C.Config, out: Path, resume_step: int | None = None, console=None) -> list:
    """CSV always (logs/metrics.csv); TensorBoard (logs/) when installed or asked for; W&B when asked
    for (offline unless train.wandb=online: files under OUT/wandb)."""
    from lightning.pytorch.loggers import CSVLogger

    t = cfg.train
    csv_logger = CSVLogger(str(out), name="", version="logs")
    if resume_step is not None:
        kept = keep_logged_rows(csv_logger, out / "logs" / "metrics.csv", resume_step)
        if console is not None:
            console.kept_rows = kept
    loggers = [csv_logger]
    if t.tensorboard != "off" and importlib.util.find_spec("tensorboard") is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(out), name="", version="logs", default_hp_metric=False))
    if t.wandb != "off":
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")  # its banner would bury the per-epoch lines
        # one W&B run per run directory: a resumed run continues it
        run_id = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]
        loggers.append(WandbLogger(name=out.name, project=t.wandb_project, save_dir=str(out), id=run_id,
                                   offline=t.wandb == "offline", resume="allow", config=C.to_dict(cfg)))
    return loggers


def build_trainer(cfg: C.Config, out: Path, extra_callbacks=(), resume_step: int | None = None, console=None):
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from train.console import show_progress_bar

    t = cfg.train
    gpu = torch.cuda.is_available() and t.accelerator != "cpu"
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if gpu else "32-true")
    if precision == "32":
        precision = "32-true"
    loggers = build_loggers(cfg, out, resume_step, console)
    # one file, checkpoints/last.ckpt, overwritten at every save (save_last alone saves nothing
    # without a top-k checkpoint in Lightning 2.6)
    ckpt = ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="last", save_top_k=1, save_last=False,
                           enable_version_counter=False,
                           every_n_train_steps=t.checkpoint_every_steps or None,
                           every_n_epochs=None if t.checkpoint_every_steps else 1, save_on_train_epoch_end=True)
    world = t.devices * t.num_nodes
    strategy = "auto"
    if world > 1:
        from lightning.pytorch.strategies import DDPStrategy

        # Buffers (queues, BatchNorm statistics) are kept identical by the code itself (all-reduced
        # BatchNorm, queues filled from gathered batches): re-broadcasting ~100 MB of queue from rank 0
        # every step would only cost time.
        strategy = DDPStrategy(process_group_backend="nccl" if gpu else "gloo", broadcast_buffers=False)
    bar = [progress_bar()] if show_progress_bar(t.progress_bar) else []
    return L.Trainer(
        default_root_dir=str(out), max_epochs=t.epochs, max_steps=t.max_steps,
        accelerator="gpu" if gpu else "cpu", devices=t.devices, num_nodes=t.num_nodes, strategy=strategy,
        precision=precision, logger=loggers, callbacks=[ckpt, *extra_callbacks, *bar],
        enable_progress_bar=bool(bar), log_every_n_steps=t.log_every_steps, num_sanity_val_steps=0,
        use_distributed_sampler=False, enable_model_summary=False, benchmark=gpu,
    )


def keep_logged_rows(csv_logger, path: Path, resume_step: int) -> int:
    """A resumed run keeps its log: Lightning's CSV writer deletes metrics.csv when it starts, so
    the rows logged before the checkpoint's step are read first and queued for its first write
    (rows after it are logged again by the resumed run). Returns the number of rows kept."""
    from train.diagnostics import read_metrics

    rows = read_metrics(path)
    writer = csv_logger.experiment  # creating it deletes the old file
    kept = 0
    for row in rows:
        if row.get("step") in (None, "") or float(row["step"]) >= resume_step:
            continue
        writer.metrics.append({k: (int(float(v)) if k in ("step", "epoch") else float(v))
                               for k, v in row.items() if v not in ("", None)})
        kept += 1
    return kept


def progress_bar():
    """Lightning's bar without its `v_num=logs` field (the run directory is on the start line)."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    class Bar(TQDMProgressBar):
        def get_metrics(self, trainer, pl_module):
            items = super().get_metrics(trainer, pl_module)
            items.pop("v_num", None)
            return items

    return Bar()


def run(cfg: C.Config, extra_callbacks=()) -> dict:
    """Pretrain with a checked config; returns the summary (also written to OUT/summary.json).

    Nothing in the run folder is written until every check has passed: the out folder, the
    checkpoint and (on resume) the config against the run's, then the data; the folder is then
    locked (train/rundir.py) for as long as the run uses it.
    """
    import lightning as L

    from train import rundir
    from train.console import end_line, make_console, quiet_lightning, say
    from train.diagnostics import finish_run
    from train.module import SSLModule

    check_environment(cfg)
    quiet_lightning()
    out = Path(cfg.train.out) if cfg.train.out else default_out(cfg)
    cfg.train.out = str(out)
    rundir.check_out(out)
    ckpt_path = None
    resume_step = None
    if cfg.train.resume:
        ckpt_path = out / "checkpoints" / "last.ckpt"
        if not ckpt_path.is_file():
            raise C.ConfigError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = rundir.read_checkpoint(ckpt_path, "restore it from a copy, or start a new run with another --out")
        rundir.check_resume(cfg, out, ckpt)
        resume_step = int(ckpt["global_step"])
        del ckpt
    elif (out / "checkpoints" / "last.ckpt").exists():
        raise C.ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    # lock before loading data, so a second run on this folder is refused at once
    lock = rundir.RunLock(out).acquire() if is_first_process() else None
    try:
        data = RunData(cfg)
        L.seed_everything(cfg.train.seed, workers=True, verbose=False)
        module = SSLModule(cfg, num_classes=data.train.num_classes,
                           num_coarse=data.train.num_coarse if data.train.coarse is not None else 0,
                           image_size=data.image_size, steps_per_epoch=data.steps_per_epoch, data=data)
    except BaseException:
        if lock is not None:
            lock.abandon()  # nothing written yet: leave no (empty) run folder behind
        raise
    try:
        console = make_console(cfg, data, out, resume_step)
        trainer = build_trainer(cfg, out, [rundir.resume_callback(), console, *extra_callbacks], resume_step,
                                console=console)
        if trainer.is_global_zero and lock is None:  # a launcher whose ranks the environment did not tell
            lock = rundir.RunLock(out).acquire()
        if trainer.is_global_zero:
            C.save_yaml(cfg, out / "config.yaml")
        started = time.perf_counter()
        # weights_only=True: Lightning's own load may not unpickle arbitrary objects either
        trainer.fit(module, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
        wall_s = time.perf_counter() - started
        summary = {}
        if trainer.is_global_zero:
            summary = finish_run(cfg, out, module.history, int(trainer.global_step), wall_s=wall_s,
                                 initial=module.initial, steps_per_epoch=data.steps_per_epoch)
            say(end_line(summary))
    finally:
        if lock is not None:
            lock.release()
    return summary


def compare_baseline(cfg: C.Config) -> dict:
    """The configured HEX run and the same budget with --hex none (same seed, so the same initial
    network), in OUT/hex-<mode> and OUT/hex-none; prints and writes (OUT/comparison.json) both side by side."""
    import copy
    import json

    from train.console import comparison_table, say
    from train.diagnostics import strict_json

    if cfg.hex.mode == "none":
        raise C.ConfigError("--compare-baseline compares a HEX rule with --hex none; choose --hex "
                            + ", ".join(m for m in C.HEX_MODES if m != "none"))
    if cfg.train.resume:
        raise C.ConfigError("--compare-baseline starts two new runs; resume each of its run directories on its own")
    if cfg.train.devices * cfg.train.num_nodes > 1:
        raise C.ConfigError("--compare-baseline runs its two trainings in one process; for multi-process runs "
                            "start the --hex setting and --hex none as two commands")
    base = Path(cfg.train.out) if cfg.train.out else Path("runs") / (
        f"compare-{cfg.method}-{cfg.hex.mode}-{time.strftime('%Y%m%d-%H%M%S')}")
    arms = {}
    for mode in (cfg.hex.mode, "none"):
        arm = copy.deepcopy(cfg)
        arm.hex.mode = mode
        arm.train.out = str(base / f"hex-{mode}")
        C.validate(arm)
        if (Path(arm.train.out) / "checkpoints" / "last.ckpt").exists():
            raise C.ConfigError(f"{arm.train.out} already holds a run; choose another --out")
        arms[f"hex {mode}"] = arm
    summaries = {}
    for label, arm in arms.items():
        say(f"--compare-baseline: {label} -> {arm.train.out}")
        summaries[label] = run(arm)
    table = comparison_table(summaries)
    say(f"--compare-baseline: the same budget ({summaries[next(iter(summaries))].get('steps')} steps, seed "
        f"{cfg.train.seed}) with and without HEX; accuracies on the {cfg.data.eval_split} split, difference in points\n"
        + table)
    keep = ("initial", "final", "gain", "steps", "wall_s", "out", "config_hash")
    result = {"runs": {label: {k: s.get(k) for k in keep} for label, s in summaries.items()}, "table": table}
    (base / "comparison.json").write_text(json.dumps(strict_json(result), indent=2, allow_nan=False))
    return summaries


def require_train_extra() -> None:
    """The trainer's packages, named as the extra that installs them, instead of a raw ImportError."""
    import importlib

    missing = []
    for name in TRAIN_EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise C.ConfigError(f"the trainer needs the [train] extra: pip install hexfast[train] "
                            f"(missing: {', '.join(missing)})")


def main(argv=None) -> int:
    try:
        args = build_parser().parse_intermixed_args(argv)
        cfg = resolve_args(args)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(C.to_dict(cfg), sort_keys=False), end="")
            return 0
        require_train_extra()
        from train.console import quiet_lightning

        quiet_lightning()
        if args.compare_baseline:
            compare_baseline(cfg)
        else:
            run(cfg)
    except C.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
