"""The Fashion-MNIST study: does HEX help, fine and coarse, with which rule, for which method?

Runs every arm x seed of a design through the project's CLI (`python -m train.pretrain`), one run
after another, keeps each run's raw `summary.json` and `metrics.csv` plus its wall-clock under the
results folder, then writes the report (tables, paired differences with t intervals and a Holm
correction, the initial network's accuracy as the floor, eps / hierarchical-fraction curves per rule)
and PNG plots.

    python scripts/study.py --data-dir DATA/fashion-mnist                    # the CPU study (28 runs)
    python scripts/study.py --floor --data-dir DATA/fashion-mnist            # the initial networks' accuracy
    python scripts/study.py --design full --data-dir DATA/fashion-mnist      # the full study (GPU)
    python scripts/study.py --data-dir DATA/fashion-mnist --dry-run          # print the commands, in run order
    python scripts/study.py --report-only                                    # re-make report + plots

Designs (same budget for every arm of a design):
  cpu:   the CPU study: tiny CNN, first 10k training images, 25 epochs; SimCLR none / adaptive (seeds
         0-4) / fixed (step) / superclass, NNCLR none / adaptive, Barlow Twins none / adaptive
         (seeds 0-2). Its first six runs (SimCLR none and adaptive, seeds 0-2) are the earlier pilot's.
         Every setting a run depends on is pinned on its command line (CPU_PINS, METHOD_PINS), so a
         later change of a trainer default does not change the study's runs.
  full:  ResNet-18 with the small-image stem, all 60k training images, 200 epochs, the same eight
         arms, seeds 0-2.
Evaluation is on the full 10k test set: kNN (k=20) fine and coarse, online linear probe fine and
coarse, as the trainer reports them at its last epoch.

Runs go seed-major (seed 0 of every arm, then seed 1, ...), so a study cut short leaves every arm
with the same seeds (paired with its method's `none` arm) and as many arms as possible measured. A
finished run (its summary kept under the results folder) is skipped when the script is started again;
a run killed part-way is resumed from its checkpoint (`--resume`).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEEDS3 = (0, 1, 2)
SEEDS5 = (0, 1, 2, 3, 4)
# final-epoch metrics reported per arm, with their labels
METRICS = (("knn_fine", "kNN fine"), ("knn_coarse", "kNN coarse"),
           ("probe_fine", "probe fine"), ("probe_coarse", "probe coarse"))
PLACEHOLDER_DATA = "DATA/fashion-mnist"  # how run.json records the data folder

# Every trainer setting the CPU study depends on, at the value the pilot ran with (the trainer's
# defaults then). Pinned on each command line so that changing a default later changes no run.
# Values are YAML, as the trainer parses them ('32' stays a string).
CPU_PINS = (
    "kernel=torch",
    "data.loader=torchvision", "data.num_workers=2", "data.image_size=0", "data.train_split=train",
    "data.eval_split=test", "data.eval_subset=0",
    "model.small_stem=auto", "model.tiny_width=32",
    "optim.scale_lr=true", "optim.momentum=0.9", "optim.lars_eta=0.02", "optim.lars_clip=false",
    "optim.warmup_epochs=1.0", "optim.warmup_start_factor=0.0", "optim.min_lr_factor=0.0",
    "optim.classifier_lr=0.1", "optim.adamw_betas=[0.9, 0.999]",
    "train.batch_size=256", "train.max_steps=-1", "train.devices=1", "train.num_nodes=1",
    "train.accelerator=cpu", "train.precision='32'", "train.log_every_steps=10", "train.channels_last=true",
    "train.checkpoint_every_steps=0", "train.compile='off'",  # compile: added after the pilot, which ran eager
    "eval.knn_k=20", "eval.knn_temperature=0.07", "eval.every_epochs=1", "eval.max_bank=0",
    # HEX: the released settings (q = 0.99, w = 0, positive not in the denominator; Barlow's added
    # term alpha 0.1, tau 0.1); the warm-up of the adaptive rule: epochs 0 and 1 of 25
    "hex.quantile=0.99", "hex.warmup_epochs=1", "hex.warmup_eps=0.9", "hex.hierarchy_weight=0.0",
    "hex.positive_in_denominator=false", "hex.alpha=0.1", "hex.temperature=0.1",
)
# Per method: its supplement Table 6 hyperparameters and its released adaptive warm-up (spec §3:
# SimCLR plain InfoNCE, NNCLR a raw-cosine eps of 0.9, Barlow Twins none).
METHOD_PINS = {
    "simclr": ("simclr.optimizer=lars", "simclr.lr=0.4", "simclr.weight_decay=0.00001",
               "simclr.proj_hidden_dim=2048", "simclr.proj_output_dim=128", "simclr.temperature=0.1",
               "hex.warmup=infonce"),
    # the support queue: Table 6's 98304 holds about two epochs of CIFAR's 50k images; with 10k
    # training images 98304 would be ten epochs of stale embeddings (every image ~10 times), so the
    # CPU study keeps the same ~1.6 epochs: 16384
    "nnclr": ("nnclr.optimizer=lars", "nnclr.lr=1.0", "nnclr.weight_decay=0.00001", "nnclr.proj_hidden_dim=2048",
              "nnclr.pred_hidden_dim=4096", "nnclr.proj_output_dim=256", "nnclr.queue_size=16384",
              "nnclr.temperature=0.2", "hex.warmup=cosine"),
    "barlow": ("barlow.optimizer=lars", "barlow.lr=0.3", "barlow.weight_decay=0.0001", "barlow.proj_hidden_dim=2048",
               "barlow.proj_output_dim=2048", "barlow.lamb=0.0051", "barlow.scale_loss=0.1", "hex.warmup='off'"),
}
# The fixed rule of the CPU study: Table 7's step schedule 0.95 -> 0.65 by 0.1 (66.20 on CIFAR-100;
# 0.05 steps gave 66.23, the same within noise). The released run steps every 100 of 400 epochs, so
# each of 0.95 / 0.85 / 0.75 / 0.65 holds a quarter of the run; at 25 epochs a step every 6 epochs
# gives 0.95 (epochs 0-5), 0.85 (6-11), 0.75 (12-17), 0.65 (18-24).
CPU_FIXED = ("hex.fixed_schedule=step", "hex.fixed_start=0.95", "hex.fixed_step=0.1", "hex.fixed_epoch_step=6",
             "hex.fixed_min=0.65")


@dataclass(frozen=True)
class Arm:
    method: str
    hex: str
    overrides: tuple = ()   # extra key=value settings of this arm only
    seeds: tuple = SEEDS3

    @property
    def name(self) -> str:
        return f"{self.method}-{self.hex}"


@dataclass(frozen=True)
class Design:
    name: str
    backbone: str
    epochs: int
    train_subset: int       # first N training images; 0 = all 60k
    arms: tuple
    common: tuple = field(default=())  # key=value settings shared by every arm (same budget)
    method_pins: dict = field(default_factory=dict)  # method -> key=value settings of its arms
    note: str = ""

    @property
    def seeds(self) -> tuple:
        return tuple(sorted({s for a in self.arms for s in a.seeds}))


def designs(epochs: int | None) -> dict:
    # hex.warmup_epochs=k keeps the warm-up for epochs 0..k (k + 1 epochs; the released code's
    # `epoch <= warm_epoch`, spec §3)
    cpu = Design(
        name="cpu", backbone="tiny", epochs=epochs or 25, train_subset=10000,
        arms=(Arm("simclr", "none", seeds=SEEDS5), Arm("simclr", "adaptive", seeds=SEEDS5),
              Arm("simclr", "fixed", CPU_FIXED), Arm("simclr", "superclass"),
              Arm("nnclr", "none"), Arm("nnclr", "adaptive"),
              Arm("barlow", "none"), Arm("barlow", "adaptive")),
        common=CPU_PINS, method_pins=METHOD_PINS,
        note="CPU study: tiny CNN, first 10k training images")
    e = epochs or 200
    full = Design(
        name="full", backbone="resnet18", epochs=e, train_subset=0,
        arms=(Arm("simclr", "none"), Arm("simclr", "adaptive"),
              # step schedule 0.95 -> 0.65 by 0.1; the supplement steps every 100 of 400 epochs,
              # scaled here to every quarter of the run
              Arm("simclr", "fixed", ("hex.fixed_schedule=step", f"hex.fixed_epoch_step={max(1, e // 4)}")),
              Arm("simclr", "superclass"),
              Arm("nnclr", "none"), Arm("nnclr", "adaptive"),
              Arm("barlow", "none"), Arm("barlow", "adaptive")),
        # warm-up 10 of 400 epochs in the released code: the same 2.5% of the run here
        common=(f"hex.warmup_epochs={max(1, round(e * 10 / 400))}",),
        note="full study: ResNet-18 (small-image stem), all 60k training images")
    return {"cpu": cpu, "full": full}


def run_dir(runs: Path, design: Design, arm: Arm, seed: int) -> Path:
    return runs / design.name / arm.name / f"seed{seed}"


def command(design: Design, arm: Arm, seed: int, data_dir: str, out: Path) -> list[str]:
    """The exact pretraining command of one run."""
    cmd = ["python", "-m", "train.pretrain", "--method", arm.method, "--hex", arm.hex,
           "--dataset", "fashion-mnist", "--data-dir", data_dir, "--backbone", design.backbone,
           "--epochs", str(design.epochs), "--seed", str(seed), "--out", str(out)]
    if design.train_subset:
        cmd.append(f"data.train_subset={design.train_subset}")
    cmd += list(design.common) + list(design.method_pins.get(arm.method, ())) + list(arm.overrides)
    return cmd + ["train.progress_bar=false"]


def plan(design: Design) -> list[tuple[Arm, int]]:
    """Every (arm, seed) of the design in run order: seed-major, arms in design order. A study cut
    short (or continued) thus has seed 0 of every arm before any arm's seed 1, and each HEX arm's
    seed next to its method's `none` arm of the same seed (the pair a paired difference needs)."""
    return [(arm, seed) for seed in design.seeds for arm in design.arms if seed in arm.seeds]


def kept(results: Path, design: Design, arm: Arm, seed: int) -> Path:
    return results / design.name / arm.name / f"seed{seed}"


def machine() -> str:
    """The CPU model and core count, and the GPU if one is used."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{model}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            desc += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return desc


def commit() -> str:
    """The commit of the code that ran (with "+changes" when the tree differs from it), or "?"."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "train", "hexfast", "kernels"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+changes" if dirty else "")


def thread_env(threads: int) -> dict:
    """The environment of a run: torch's intra-op pool (and BLAS) capped at `threads`."""
    env = dict(os.environ)
    if threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    return env


def run_all(design: Design, data_dir: str, runs: Path, results: Path, dry_run: bool, threads: int = 2,
            runner=subprocess.run) -> list[tuple[Arm, int]]:
    """Run the design's runs that have no kept summary yet, in `plan` order; returns those run
    (or, with dry_run, those that would run; every command is printed, a finished one marked)."""
    todo, failed = [], []
    for arm, seed in plan(design):
        out = run_dir(runs, design, arm, seed)
        keep = kept(results, design, arm, seed)
        cmd = command(design, arm, seed, data_dir, out)
        done = (keep / "summary.json").is_file()
        if dry_run:
            print(shlex.join(cmd) + ("    # done" if done else ""))
            if not done:
                todo.append((arm, seed))
            continue
        if done:
            print(f"[study] {arm.name} seed {seed}: done already, skipped", flush=True)
            continue
        if (REPO / out / "checkpoints" / "last.ckpt").is_file():
            cmd = ["python", "-m", "train.pretrain", "--out", str(out), "--resume"]
        print(f"[study] {time.strftime('%H:%M:%S')} {arm.name} seed {seed}: {shlex.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        try:
            runner([sys.executable] + cmd[1:], cwd=REPO, check=True, env=thread_env(threads))
        except subprocess.CalledProcessError as err:  # one failed run does not stop the others
            print(f"[study] {arm.name} seed {seed}: FAILED (exit {err.returncode}); continuing", flush=True)
            failed.append((arm, seed))
            continue
        wall = time.perf_counter() - t0
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / out / "summary.json", keep / "summary.json")
        shutil.copy(REPO / out / "logs" / "metrics.csv", keep / "metrics.csv")
        with open(keep / "run.json", "w") as fh:
            json.dump({"command": shlex.join(command(design, arm, seed, PLACEHOLDER_DATA, out)),
                       "wall_s": round(wall, 1), "machine": machine(), "threads": threads, "commit": commit(),
                       "resumed": "--resume" in cmd}, fh, indent=2)
        todo.append((arm, seed))
        print(f"[study] {arm.name} seed {seed}: {wall:.0f} s", flush=True)
    if failed:
        print("[study] failed runs (started again, they resume or restart): "
              + ", ".join(f"{a.name} seed {s}" for a, s in failed), flush=True)
    return todo


# ------------------------------------------------------------------------------ the floor


def floor(design: Design, data_dir: str, results: Path, seeds=SEEDS3, linear_epochs: int = 30) -> dict:
    """The initial network's accuracy, per seed: what a run starts from, before its first step.

    Builds each seed's network exactly as `train.pretrain` does (the run's resolved config, the
    seed set, then the module) and evaluates it with the trainer's own evaluation: kNN (k = 20)
    fine and coarse. The online probe of an untrained network is a random head (chance), so the
    probe's floor is a frozen-feature linear classifier trained on the initial network's features
    (`train.linear`'s protocol: standardised features, SGD + cosine, `linear_epochs` epochs, all
    10k training labels): an upper bound of what a linear head can read from random features. The
    backbone is built before any method-specific part, so the seed's initial backbone is the same
    for every method and arm (checked here). Writes <results>/<design>/floor.json.
    """
    import lightning as L
    import torch

    from train.knn import extract, knn_accuracy
    from train.linear import train_linear
    from train.module import SSLModule
    from train.pretrain import RunData, resolve

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    per_seed = {}
    for seed in seeds:
        backbones = {}
        for arm in design.arms:
            if arm.method in backbones or arm.hex != "none":
                continue
            cfg = resolve(command(design, arm, seed, data_dir, Path("unused"))[3:])
            data = RunData(cfg)
            L.seed_everything(seed, workers=True, verbose=False)
            module = SSLModule(cfg, num_classes=data.train.num_classes, num_coarse=data.train.num_coarse,
                               image_size=data.image_size, steps_per_epoch=data.steps_per_epoch, data=data)
            backbones[arm.method] = (module.backbone, data, cfg)
        (first, (backbone, data, cfg)), *rest = backbones.items()
        ref = backbone.state_dict()
        for method, (other, _, _) in rest:
            if any(not torch.equal(ref[k], v) for k, v in other.state_dict().items()):
                raise SystemExit(f"seed {seed}: the initial backbone of {method} differs from {first}'s")
        if cfg.train.channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)
        dev = torch.device("cpu")
        bank, test = (extract(backbone, loader, dev) for loader in data.eval_loaders(dev))
        k, t = cfg.eval.knn_k, cfg.eval.knn_temperature
        res = {"knn_fine": knn_accuracy(bank[0], bank[1], test[0], test[1], k, t),
               "knn_coarse": knn_accuracy(bank[0], bank[2], test[0], test[2], k, t)}
        for name, col, classes in (("fine", 1, data.train.num_classes), ("coarse", 2, data.train.num_coarse)):
            head = train_linear(bank[0], bank[col], classes, epochs=linear_epochs, lr=0.1, wd=0.0,
                                batch_size=256, seed=seed)
            with torch.no_grad():
                res[f"linear_{name}"] = float((head(test[0]).argmax(1) == test[col]).float().mean())
        per_seed[str(seed)] = res
        print(f"[study] floor seed {seed}: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in res.items()), flush=True)
    out = {"design": design.name, "seeds": per_seed, "linear_epochs": linear_epochs,
           "command": f"python scripts/study.py --design {design.name} --floor --data-dir {PLACEHOLDER_DATA}",
           "machine": machine()}
    path = results / design.name / "floor.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------ statistics


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (Numerical Recipes 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_p_two_sided(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with df degrees of freedom (no scipy needed)."""
    if math.isnan(t):
        return float("nan")
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_crit_95(df: int) -> float:
    """Two-sided 95% Student t quantile (bisection on t_p_two_sided)."""
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_p_two_sided(mid, df) > 0.05 else (lo, mid)
    return (lo + hi) / 2


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN entries stay NaN, not counted)."""
    idx = sorted((i for i, p in enumerate(pvalues) if not math.isnan(p)), key=lambda i: pvalues[i])
    m, out, running = len(idx), [float("nan")] * len(pvalues), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def paired(diffs: list[float]) -> dict:
    """Mean, sample std, 95% t interval and two-sided p of paired differences (n >= 2)."""
    n = len(diffs)
    m = statistics.fmean(diffs)
    if n < 2:
        return {"n": n, "mean": m, "std": float("nan"), "lo": float("nan"), "hi": float("nan"), "p": float("nan")}
    s = statistics.stdev(diffs)
    half = t_crit_95(n - 1) * s / math.sqrt(n)
    t = m / (s / math.sqrt(n)) if s > 0 else math.copysign(math.inf, m) if m else 0.0
    return {"n": n, "mean": m, "std": s, "lo": m - half, "hi": m + half, "p": t_p_two_sided(t, n - 1)}


def verdict(st: dict, p_adj: float | None = None) -> str:
    if st["n"] < 2:
        return "one seed: no interval"
    p = st["p"] if p_adj is None else p_adj
    if p < 0.05:
        return "helped" if st["mean"] > 0 else "hurt"
    return "within noise"


# ------------------------------------------------------------------------------------- report


def load_runs(design: Design, results: Path) -> dict:
    """{arm name: {seed: {"summary", "run", "rows"}}} for the runs that finished."""
    out: dict = {}
    for arm, seed in plan(design):
        keep = kept(results, design, arm, seed)
        if not (keep / "summary.json").is_file():
            continue
        with open(keep / "summary.json") as fh:
            summary = json.load(fh)
        run = json.loads((keep / "run.json").read_text()) if (keep / "run.json").is_file() else {}
        with open(keep / "metrics.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        out.setdefault(arm.name, {})[seed] = {"summary": summary, "run": run, "rows": rows}
    return out


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def per_epoch(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """Epoch means of a per-step series from metrics.csv (x = epoch + 1)."""
    acc: dict = {}
    for r in rows:
        v, e = r.get(key, ""), r.get("epoch", "")
        if v not in ("", None) and e not in ("", None):
            acc.setdefault(int(float(e)), []).append(float(v))
    eps = sorted(acc)
    return [e + 1 for e in eps], [statistics.fmean(acc[e]) for e in eps]


def per_step(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v, s = r.get(key, ""), r.get("step", "")
        if v not in ("", None) and s not in ("", None):
            xs.append(float(s))
            ys.append(float(v))
    return xs, ys


def comparisons(design: Design, data: dict) -> list[dict]:
    """Every HEX arm x metric against its method's `none` arm on the seeds both have, with the
    t interval, the raw p and the Holm-adjusted p over all comparisons with >= 2 seeds."""
    out = []
    for arm in design.arms:
        base = f"{arm.method}-none"
        if arm.hex == "none" or arm.name not in data or base not in data:
            continue
        seeds = sorted(set(data[arm.name]) & set(data[base]))
        if not seeds:
            continue
        for key, lab in METRICS:
            diffs = [100 * (data[arm.name][s]["summary"]["final"][key] - data[base][s]["summary"]["final"][key])
                     for s in seeds]
            out.append({"arm": arm.name, "base": base, "metric": key, "label": lab, "seeds": seeds, "diffs": diffs,
                        **paired(diffs)})
    adj = holm([c["p"] for c in out])
    for c, p in zip(out, adj):
        c["p_holm"] = p
    return out


def status_lines(design: Design, data: dict) -> list[str]:
    planned = plan(design)
    done = sum(1 for arm, seed in planned if seed in data.get(arm.name, {}))
    lines = [f"**{'Complete' if done == len(planned) else 'Partial'}: {done} of {len(planned)} runs finished.**",
             "", "| arm | seeds finished | of |", "|---|---|---|"]
    for arm in design.arms:
        have = sorted(data.get(arm.name, {}))
        lines.append(f"| {arm.name} | {len(have)} ({', '.join(map(str, have)) or '-'}) | {len(arm.seeds)} |")
    return lines + [""]


def load_floor(design: Design, results: Path) -> dict | None:
    path = results / design.name / "floor.json"
    return json.loads(path.read_text()) if path.is_file() else None


def report(design: Design, results: Path, plots: Path, link_from: Path | None = None) -> str:
    """The markdown report of a design (status, tables, paired differences, curves); writes the PNGs.
    Image links are relative to the folder `link_from` (default: the plots folder)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = load_runs(design, results)
    if not data:
        raise SystemExit(f"no finished runs of design {design.name!r} under {results}")
    plots.mkdir(parents=True, exist_ok=True)
    fl = load_floor(design, results)
    lines = [f"### {design.note}", ""] + status_lines(design, data)
    lines += [f"{design.epochs} epochs per run; metrics at the last epoch on the 10k test set, in % "
              "(mean ± sample std over the seeds finished).", ""]
    machines = sorted({r["run"].get("machine", "?") for runs in data.values() for r in runs.values()})
    lines += [f"Machine: {'; '.join(machines)}.", ""]
    commits: dict = {}
    for name, runs in data.items():
        for seed, r in sorted(runs.items()):
            commits.setdefault(r["run"].get("commit", "not recorded"), []).append(f"{name} s{seed}")
    lines += ["Code commit of the runs (full id in each run.json): "
              + "; ".join(f"{c[:12] if c != 'not recorded' else c}: {len(v)} runs" for c, v in commits.items())
              + ".", ""]

    # per-arm table, the floor first
    lines += ["| arm | seeds | " + " | ".join(lab for _, lab in METRICS) + " | wall-clock / run |",
              "|---|---|" + "---|" * len(METRICS) + "---|"]
    if fl:
        fs = list(fl["seeds"].values())
        cells = []
        for key, _ in METRICS:
            src = key if key.startswith("knn") else key.replace("probe", "linear")
            m, s = mean_std([f[src] for f in fs])
            cells.append(f"{pct(m)} ± {pct(s)}" + ("" if key.startswith("knn") else "*"))
        lines.append(f"| initial network (floor) | {len(fs)} | " + " | ".join(cells) + " | - |")
    for arm in design.arms:
        runs = data.get(arm.name, {})
        if not runs:
            continue
        cells = []
        for key, _ in METRICS:
            vals = [r["summary"]["final"][key] for r in runs.values() if key in r["summary"]["final"]]
            m, s = mean_std(vals) if vals else (float("nan"), float("nan"))
            cells.append(f"{pct(m)} ± {pct(s)}")
        walls = [r["run"]["wall_s"] for r in runs.values() if "wall_s" in r["run"]]
        wall = f"{statistics.fmean(walls) / 60:.1f} min" if walls else "n/a"
        lines.append(f"| {arm.name} | {len(runs)} | " + " | ".join(cells) + f" | {wall} |")
    lines.append("")
    if fl:
        lines += [f"\\* The floor's probe columns are a frozen-feature linear classifier trained on the initial "
                  f"network's features ({fl['linear_epochs']} epochs, all 10k training labels; the online probe "
                  "of an untrained network is a random head). Its kNN columns use the trainer's own kNN. "
                  f"Made by `{fl['command']}`.", ""]
    else:
        lines += ["The initial network's accuracy (the floor) has not been measured yet "
                  f"(`python scripts/study.py --design {design.name} --floor --data-dir DATA/fashion-mnist`).", ""]

    # per-seed numbers
    lines += ["Per seed:", "", "| arm | seed | " + " | ".join(lab for _, lab in METRICS)
              + " | final eps | final hier. fraction | wall-clock |",
              "|---|---|" + "---|" * len(METRICS) + "---|---|---|"]
    for arm in design.arms:
        for seed, r in sorted(data.get(arm.name, {}).items()):
            f, h = r["summary"]["final"], r["summary"].get("hex_last", {})
            e = _num(h.get("eps"))
            eps = "-" if math.isnan(e) else f"{e:.3f}"
            frac = "-" if h.get("hier_fraction") is None or arm.hex == "none" else f"{100 * h['hier_fraction']:.2f}%"
            wall = f"{r['run']['wall_s']:.0f} s" if "wall_s" in r["run"] else "n/a"
            lines.append(f"| {arm.name} | {seed} | " + " | ".join(pct(f.get(k, float('nan'))) for k, _ in METRICS)
                         + f" | {eps} | {frac} | {wall} |")
    lines.append("")

    # paired differences: each HEX arm against the same method's `none` arm, seed by seed
    comps = comparisons(design, data)
    m_tests = sum(1 for c in comps if not math.isnan(c["p"]))
    lines += ["#### Paired differences vs the method's own `none` arm", "",
              "Percentage points, HEX arm − `none` arm of the same seed (same initialisation, augmentations and "
              "data order). 95% CI: Student t over the seeds. p: two-sided paired t test; Holm: the p-value "
              f"adjusted by Holm's step-down method over all {m_tests} comparisons of this table that have "
              "two or more seeds (arms × 4 metrics). The verdict uses the Holm-adjusted p (< 0.05); "
              "\"uncorrected\" says what the interval alone would say.", "",
              "| arm − none | metric | per seed | mean ± std | 95% CI (t) | p | p (Holm) | verdict | uncorrected |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in comps:
        per = ", ".join(f"s{s} {d:+.2f}" for s, d in zip(c["seeds"], c["diffs"]))
        if c["n"] >= 2:
            ms = f"{c['mean']:+.2f} ± {c['std']:.2f}"
            ci = f"[{c['lo']:+.2f}, {c['hi']:+.2f}]"
            p, ph = f"{c['p']:.3f}", f"{c['p_holm']:.3f}"
        else:
            ms, ci, p, ph = f"{c['mean']:+.2f}", "n/a", "n/a", "n/a"
        lines.append(f"| {c['arm']} | {c['label']} | {per} | {ms} | {ci} | {p} | {ph} | "
                     f"{verdict(c, c['p_holm'] if c['n'] >= 2 else None)} | {verdict(c)} |")
    lines.append("")

    lines += verdict_table(design, data, comps)
    link = os.path.relpath(plots, link_from) if link_from is not None else "."
    lines += _accuracy_plot(design, data, fl, plots, plt, link)
    lines += _hex_plot(design, data, plots, plt, link)
    return "\n".join(lines)


def verdict_table(design: Design, data: dict, comps: list[dict]) -> list[str]:
    """Per HEX arm and metric, in words: helped / hurt / within noise (Holm-corrected), or why none."""
    by = {(c["arm"], c["metric"]): c for c in comps}
    lines = ["#### Verdict per method and rule (Holm-corrected paired test; mean difference in pp)", "",
             "| arm vs its none arm | seeds paired | " + " | ".join(lab for _, lab in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for arm in design.arms:
        if arm.hex == "none":
            continue
        cells = []
        for key, _ in METRICS:
            c = by.get((arm.name, key))
            if c is None:
                cells.append("no paired runs yet")
            elif c["n"] < 2:
                cells.append(f"{c['mean']:+.2f}, one seed: no interval")
            else:
                cells.append(f"{verdict(c, c['p_holm'])} ({c['mean']:+.2f})")
        n = by[(arm.name, METRICS[0][0])]["n"] if (arm.name, METRICS[0][0]) in by else 0
        lines.append(f"| {arm.name} | {n} | " + " | ".join(cells) + " |")
    return lines + [""]


def _accuracy_plot(design, data, fl, plots, plt, link=".") -> list[str]:
    """Accuracy over epochs (mean over seeds), one row per method, the floor at epoch 0."""
    methods = [m for m in dict.fromkeys(a.method for a in design.arms) if any(a.method == m and a.name in data
                                                                                 for a in design.arms)]
    fig, axes = plt.subplots(len(methods), len(METRICS), figsize=(4 * len(METRICS), 3.2 * len(methods)), squeeze=False)
    for row, method in zip(axes, methods):
        for ax, (key, lab) in zip(row, METRICS):
            for arm in design.arms:
                runs = data.get(arm.name, {}) if arm.method == method else {}
                curves = [[(h["epoch"] + 1, h[key]) for h in r["summary"]["history"] if key in h]
                          for r in runs.values()]
                curves = [c for c in curves if c]
                if not curves:
                    continue
                n = min(len(c) for c in curves)
                xs = [curves[0][i][0] for i in range(n)]
                ys = [100 * statistics.fmean(c[i][1] for c in curves) for i in range(n)]
                ax.plot(xs, ys, marker=".", label=f"{arm.name} (n={len(curves)})")
            if fl:
                src = key if key.startswith("knn") else key.replace("probe", "linear")
                v = 100 * statistics.fmean(f[src] for f in fl["seeds"].values())
                if key.startswith("knn"):
                    ax.plot([0], [v], "k*", ms=9, label="initial network")
                else:
                    ax.axhline(v, color="k", ls=":", lw=1, label="initial network, frozen linear")
            ax.set_title(f"{method}: {lab}")
            ax.set_xlabel("epoch (0 = before training)")
            ax.set_ylabel("top-1 (%), mean over seeds")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    path = plots / f"{design.name}_accuracy.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [f"![accuracy over epochs]({link}/{path.name})", ""]


def _hex_plot(design, data, plots, plt, link=".") -> list[str]:
    """eps and hierarchical fraction per rule (one row per HEX arm, every seed), plus epoch means."""
    hex_arms = [a for a in design.arms if a.hex != "none" and a.name in data]
    if not hex_arms:
        return []
    fig, axes = plt.subplots(len(hex_arms), 2, figsize=(10, 2.8 * len(hex_arms)), squeeze=False)
    for (ax_e, ax_f), arm in zip(axes, hex_arms):
        for seed, r in sorted(data[arm.name].items()):
            xs, ys = per_step(r["rows"], "hex/eps_step")
            ax_e.plot(xs, ys, lw=0.8, label=f"seed {seed}")
            xs, ys = per_step(r["rows"], "hex/hier_fraction_step")
            ax_f.plot(xs, [100 * y for y in ys], lw=0.8, label=f"seed {seed}")
        scale = "min-max normalised cosine" if arm.hex == "fixed" else "raw cosine"
        ax_e.set_title(f"{arm.name}: threshold eps" + (" (none: labels)" if arm.hex == "superclass" else ""))
        ax_e.set_ylabel(f"eps ({scale})")
        ax_f.set_title(f"{arm.name}: hierarchical negatives")
        ax_f.set_ylabel("% of negatives")
        for ax in (ax_e, ax_f):
            ax.set_xlabel("training step (logged every 10)")
            ax.grid(alpha=0.3)
        ax_f.legend(fontsize=7)
    fig.tight_layout()
    path = plots / f"{design.name}_hex_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    lines = [f"![eps and hierarchical fraction per rule]({link}/{path.name})", "",
             "Epoch means of eps / hierarchical fraction (% of negatives), mean over the finished seeds "
             "(eps blank: warm-up or no threshold; epoch 0 = the first, as metrics.csv and the console "
             "count; the plots' x is epochs completed):", ""]
    lines += ["| epoch | " + " | ".join(f"{a.name} eps | {a.name} hier." for a in hex_arms) + " |",
              "|---|" + "---|---|" * len(hex_arms)]
    series = {}
    for arm in hex_arms:
        per_seed = [tuple(dict(zip(*per_epoch(r["rows"], key))) for key in ("hex/eps_step", "hex/hier_fraction_step"))
                    for r in data[arm.name].values()]
        series[arm.name] = per_seed
    epochs = sorted({e for ps in series.values() for s in ps for e in s[1]})
    for ep in epochs:
        cells = []
        for arm in hex_arms:
            ev = [s[0][ep] for s in series[arm.name] if ep in s[0] and not math.isnan(s[0][ep])]
            fv = [s[1][ep] for s in series[arm.name] if ep in s[1]]
            cells.append(f"{statistics.fmean(ev):.4f}" if ev else "")
            cells.append(f"{100 * statistics.fmean(fv):.3f}" if fv else "")
        lines.append(f"| {ep - 1} | " + " | ".join(cells) + " |")  # per_epoch's x is epoch + 1
    return lines + [""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--design", default="cpu", help="cpu (the CPU study) or full (GPU); default cpu")
    ap.add_argument("--data-dir", help="folder with the Fashion-MNIST gzipped IDX files")
    ap.add_argument("--epochs", type=int, help="epochs of every run (default: cpu 25, full 200)")
    ap.add_argument("--runs", default="runs/study", help="where the run directories go (checkpoints; not kept)")
    ap.add_argument("--results", default="results/fashion-mnist", help="where summaries and the report go")
    ap.add_argument("--plots", default="docs/results", help="where the PNG plots go")
    ap.add_argument("--docs", default="docs/results.md",
                    help="markdown file whose <!-- study:DESIGN:start/end --> part receives the report too")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch / BLAS threads per run (0 = torch's default); default 2")
    ap.add_argument("--dry-run", action="store_true", help="print the commands of every run in run order, run nothing")
    ap.add_argument("--report-only", action="store_true", help="only re-make the report and plots")
    ap.add_argument("--floor", action="store_true", help="only measure the initial networks' accuracy (floor.json)")
    args = ap.parse_args(argv)
    all_designs = designs(args.epochs)
    if args.design not in all_designs:
        ap.error(f"--design {args.design!r} is unknown; valid: {', '.join(all_designs)}")
    design = all_designs[args.design]
    results, plots, runs = (REPO / p for p in (args.results, args.plots, args.runs))
    if not args.report_only:
        if not args.data_dir:
            ap.error("--data-dir is required to run (the folder holding train-images-idx3-ubyte.gz etc.)")
        if not args.dry_run and not (Path(args.data_dir) / "train-images-idx3-ubyte.gz").is_file():
            ap.error(f"--data-dir {args.data_dir}: no train-images-idx3-ubyte.gz there")
        if args.floor:
            floor(design, args.data_dir, results)
            return 0
        run_all(design, args.data_dir, Path(args.runs), results, args.dry_run, args.threads)
        if args.dry_run:
            return 0
    path = results / design.name / "report.md"
    path.write_text(report(design, results, plots, link_from=path.parent) + "\n")
    print(f"[study] report: {path}")
    docs = REPO / args.docs
    if docs.is_file() and MARK_START.format(design.name) in docs.read_text():
        docs.write_text(splice(docs.read_text(), design.name, report(design, results, plots, link_from=docs.parent)))
        print(f"[study] report copied into {docs} (between its {MARK_START.format(design.name)} marks)")
    return 0


MARK_START, MARK_END = "<!-- study:{}:start -->", "<!-- study:{}:end -->"


def splice(doc: str, design: str, text: str) -> str:
    """`doc` with the part between the design's start and end marks replaced by `text`."""
    start, end = MARK_START.format(design), MARK_END.format(design)
    if doc.count(start) != 1 or doc.count(end) != 1 or doc.index(start) > doc.index(end):
        raise SystemExit(f"the document needs exactly one {start} followed by one {end}")
    head, rest = doc.split(start)
    return head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1]


if __name__ == "__main__":
    sys.exit(main())
