"""The Fashion-MNIST study: does HEX help, fine and coarse, over seeds?

Runs every arm x seed of a design through the project's CLI (`python -m train.pretrain`), one run
after another, keeps each run's raw `summary.json` and `metrics.csv` plus its wall-clock under the
results folder, then writes the report (tables, paired differences, eps / hierarchical-fraction
curves) and PNG plots.

    python scripts/study.py --data-dir DATA/fashion-mnist                    # the CPU pilot
    python scripts/study.py --design full --data-dir DATA/fashion-mnist      # the full study (GPU)
    python scripts/study.py --design full --data-dir DATA --dry-run          # print the commands only
    python scripts/study.py --report-only                                    # re-make report + plots

Designs (same budget for every arm of a design, seeds 0, 1, 2):
  pilot: tiny CNN, first 10k training images, SimCLR none vs adaptive, 25 epochs (HEX warm-up:
         plain InfoNCE in epochs 0 and 1, `hex.warmup_epochs=1`).
  full:  ResNet-18 with the small-image stem, all 60k training images; SimCLR none / adaptive /
         fixed (step) / superclass, NNCLR none / adaptive, Barlow Twins none / adaptive.
Evaluation is on the full 10k test set: kNN (k=20) fine and coarse, online linear probe fine and
coarse, as the trainer reports them at its last epoch.

A finished run (its summary kept under the results folder) is skipped when the script is started
again; a run killed part-way is resumed from its checkpoint (`--resume`).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEEDS = (0, 1, 2)
# final-epoch metrics reported per arm, with their labels
METRICS = (("knn_fine", "kNN fine"), ("knn_coarse", "kNN coarse"),
           ("probe_fine", "probe fine"), ("probe_coarse", "probe coarse"))


@dataclass(frozen=True)
class Arm:
    method: str
    hex: str
    overrides: tuple = ()   # extra key=value settings of this arm only

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
    note: str = ""


def designs(epochs: int | None) -> dict:
    # hex.warmup_epochs=k keeps plain InfoNCE for epochs 0..k (k + 1 epochs; the released code's
    # `epoch <= warm_epoch`, spec §3)
    pilot = Design(
        name="pilot", backbone="tiny", epochs=epochs or 25, train_subset=10000,
        arms=(Arm("simclr", "none"), Arm("simclr", "adaptive")),
        # HEX warm-up (plain InfoNCE) kept short relative to the run: epochs 0 and 1 of 25
        common=("hex.warmup_epochs=1",),
        note="CPU pilot: tiny CNN, first 10k training images")
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
    return {"pilot": pilot, "full": full}


def run_dir(runs: Path, design: Design, arm: Arm, seed: int) -> Path:
    return runs / design.name / arm.name / f"seed{seed}"


def command(design: Design, arm: Arm, seed: int, data_dir: str, out: Path) -> list[str]:
    """The exact pretraining command of one run."""
    cmd = ["python", "-m", "train.pretrain", "--method", arm.method, "--hex", arm.hex,
           "--dataset", "fashion-mnist", "--data-dir", data_dir, "--backbone", design.backbone,
           "--epochs", str(design.epochs), "--seed", str(seed), "--out", str(out)]
    if design.train_subset:
        cmd.append(f"data.train_subset={design.train_subset}")
    cmd += list(design.common) + list(arm.overrides) + ["train.progress_bar=false"]
    return cmd


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


def run_all(design: Design, data_dir: str, runs: Path, results: Path, dry_run: bool) -> None:
    for seed in SEEDS:  # seed-major order: a run cut short leaves every arm with the same seeds
        for arm in design.arms:
            out = run_dir(runs, design, arm, seed)
            keep = results / design.name / arm.name / f"seed{seed}"
            cmd = command(design, arm, seed, data_dir, out)
            if dry_run:
                print(" ".join(cmd))
                continue
            if (keep / "summary.json").is_file():
                print(f"[study] {arm.name} seed {seed}: done already, skipped", flush=True)
                continue
            if (REPO / out / "checkpoints" / "last.ckpt").is_file():
                cmd = ["python", "-m", "train.pretrain", "--out", str(out), "--resume"]
            print(f"[study] {arm.name} seed {seed}: {' '.join(cmd)}", flush=True)
            t0 = time.perf_counter()
            subprocess.run([sys.executable] + cmd[1:], cwd=REPO, check=True)
            wall = time.perf_counter() - t0
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / out / "summary.json", keep / "summary.json")
            shutil.copy(REPO / out / "logs" / "metrics.csv", keep / "metrics.csv")
            with open(keep / "run.json", "w") as fh:
                json.dump({"command": " ".join(command(design, arm, seed, "DATA/fashion-mnist", out)),
                           "wall_s": round(wall, 1), "machine": machine(),
                           "resumed": "--resume" in cmd}, fh, indent=2)
            print(f"[study] {arm.name} seed {seed}: {wall:.0f} s", flush=True)


# ------------------------------------------------------------------------------------- report


def load_runs(design: Design, results: Path) -> dict:
    """{arm name: {seed: {"summary", "run", "rows"}}} for the runs that finished."""
    out: dict = {}
    for arm in design.arms:
        for seed in SEEDS:
            keep = results / design.name / arm.name / f"seed{seed}"
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


def t_crit_95(df: int) -> float:
    """Two-sided 95% Student t quantile (small df; no scipy needed)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
    return table.get(df, 1.96)


def pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.2f}"


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


def report(design: Design, results: Path, plots: Path) -> str:
    """The markdown report of a design (tables, paired differences, curves); writes the PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = load_runs(design, results)
    if not data:
        raise SystemExit(f"no finished runs of design {design.name!r} under {results}")
    plots.mkdir(parents=True, exist_ok=True)
    lines = [f"## {design.note}", "",
             f"{design.epochs} epochs per run, seeds {', '.join(map(str, SEEDS))}; metrics at the last epoch on the "
             "10k test set, in % (mean ± sample std over seeds).", ""]
    machines = sorted({r["run"].get("machine", "?") for runs in data.values() for r in runs.values()})
    lines += [f"Machine: {'; '.join(machines)}.", ""]

    # per-arm table
    lines += ["| arm | seeds | " + " | ".join(lab for _, lab in METRICS) + " | wall-clock / run |",
              "|---|---|" + "---|" * len(METRICS) + "---|"]
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

    # per-seed numbers
    lines += ["Per seed:", "", "| arm | seed | " + " | ".join(lab for _, lab in METRICS) + " | final eps | final hier. fraction | wall-clock |",
              "|---|---|" + "---|" * len(METRICS) + "---|---|---|"]
    for arm in design.arms:
        for seed, r in sorted(data.get(arm.name, {}).items()):
            f, h = r["summary"]["final"], r["summary"].get("hex_last", {})
            eps = "-" if h.get("eps") is None or math.isnan(h["eps"]) else f"{h['eps']:.3f}"
            frac = "-" if h.get("hier_fraction") is None or arm.hex == "none" else f"{100 * h['hier_fraction']:.2f}%"
            wall = f"{r['run']['wall_s']:.0f} s" if "wall_s" in r["run"] else "n/a"
            lines.append(f"| {arm.name} | {seed} | " + " | ".join(pct(f.get(k, float('nan'))) for k, _ in METRICS)
                         + f" | {eps} | {frac} | {wall} |")
    lines.append("")

    # paired differences: each HEX arm against the same method's `none` arm, seed by seed
    for arm in design.arms:
        if arm.hex == "none":
            continue
        base = f"{arm.method}-none"
        seeds = sorted(set(data.get(arm.name, {})) & set(data.get(base, {})))
        if not seeds:
            continue
        lines += [f"Paired difference {arm.name} − {base} (percentage points, same seed):", "",
                  "| metric | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | 95% CI (t) | verdict |",
                  "|---|" + "---|" * len(seeds) + "---|---|---|"]
        for key, lab in METRICS:
            diffs = [100 * (data[arm.name][s]["summary"]["final"][key] - data[base][s]["summary"]["final"][key])
                     for s in seeds]
            m, s = mean_std(diffs)
            if len(diffs) > 1:
                half = t_crit_95(len(diffs) - 1) * s / math.sqrt(len(diffs))
                ci = f"[{m - half:+.2f}, {m + half:+.2f}]"
                verdict = "helped" if m - half > 0 else "hurt" if m + half < 0 else "within noise"
            else:
                ci, verdict = "n/a", "one seed only"
            lines.append(f"| {lab} | " + " | ".join(f"{d:+.2f}" for d in diffs)
                         + f" | {m:+.2f} ± {s:.2f} | {ci} | {verdict} |")
        lines.append("")

    # accuracy over epochs, mean over seeds
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4))
    for ax, (key, lab) in zip(axes, METRICS):
        for arm in design.arms:
            runs = data.get(arm.name, {})
            curves = [[(h["epoch"] + 1, h[key]) for h in r["summary"]["history"] if key in h] for r in runs.values()]
            curves = [c for c in curves if c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            xs = [c[i][0] for i in range(n) for c in curves[:1]]
            ys = [100 * statistics.fmean(c[i][1] for c in curves) for i in range(n)]
            ax.plot(xs, ys, marker=".", label=arm.name)
        ax.set_title(lab)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%), mean over seeds")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = plots / f"{design.name}_accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    lines += [f"![accuracy over epochs]({path.name})", ""]

    # eps and hierarchical fraction of the HEX arms (every seed)
    hex_arms = [a for a in design.arms if a.hex != "none" and a.name in data]
    if hex_arms:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for arm in hex_arms:
            for seed, r in sorted(data[arm.name].items()):
                for ax, key in ((axes[0], "hex/eps_step"), (axes[1], "hex/hier_fraction_step")):
                    xs, ys = per_step(r["rows"], key)
                    if key.endswith("fraction_step"):
                        ys = [100 * y for y in ys]
                    ax.plot(xs, ys, lw=0.8, label=f"{arm.name} s{seed}")
        axes[0].set_title("threshold eps (per logged step)")
        axes[1].set_title("hierarchical negatives (% of negatives)")
        for ax in axes:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        path = plots / f"{design.name}_hex_curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        lines += [f"![eps and hierarchical fraction]({path.name})", ""]
        # epoch means, to read the trend as numbers
        for arm in hex_arms:
            lines += [f"{arm.name}: epoch means of eps / hierarchical fraction (mean over seeds)", "",
                      "| epoch | eps | hier. fraction |", "|---|---|---|"]
            per_seed = [(per_epoch(r["rows"], "hex/eps_step"), per_epoch(r["rows"], "hex/hier_fraction_step"))
                        for r in data[arm.name].values()]
            epochs = sorted(set.intersection(*[set(e[0][0]) for e in per_seed]))
            for ep in epochs:
                ev = [e[0][1][e[0][0].index(ep)] for e in per_seed]
                fv = [e[1][1][e[1][0].index(ep)] for e in per_seed if ep in e[1][0]]
                eps_s = "NaN (warm-up)" if all(math.isnan(v) for v in ev) else f"{statistics.fmean(ev):.4f}"
                lines.append(f"| {ep} | {eps_s} | {100 * statistics.fmean(fv):.3f}% |")
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--design", default="pilot", help="pilot (CPU) or full (GPU); default pilot")
    ap.add_argument("--data-dir", help="folder with the Fashion-MNIST gzipped IDX files")
    ap.add_argument("--epochs", type=int, help="epochs of every run (default: pilot 25, full 200)")
    ap.add_argument("--runs", default="runs/study", help="where the run directories go (checkpoints; not kept)")
    ap.add_argument("--results", default="results/fashion-mnist", help="where summaries and the report go")
    ap.add_argument("--plots", default="docs/results", help="where the PNG plots go")
    ap.add_argument("--dry-run", action="store_true", help="print the commands of every run, run nothing")
    ap.add_argument("--report-only", action="store_true", help="only re-make the report and plots")
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
        run_all(design, args.data_dir, Path(args.runs), results, args.dry_run)
        if args.dry_run:
            return 0
    text = report(design, results, plots)
    path = results / design.name / "report.md"
    path.write_text(text + "\n")
    print(text)
    print(f"[study] report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
