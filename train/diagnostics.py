"""End-of-run diagnostics: PNG plots of the HEX threshold and hierarchical fraction over training and
of kNN accuracy over epochs, and summary.json (final metrics, config hash).

The per-step series are read back from the CSV log (logs/metrics.csv), which a resumed run keeps
appending to, so the plots cover the whole run.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from train import config as C


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def series(rows: list[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v, s = r.get(key, ""), r.get(x, "")
        if v not in ("", None) and s not in ("", None):
            xs.append(float(s))
            ys.append(float(v))
    return xs, ys


def plot(out: Path, rows: list[dict], history: list[dict]) -> list[str]:
    """Write plots/hex.png and plots/knn.png; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "plots").mkdir(parents=True, exist_ok=True)
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key, title in ((axes[0], "hex/eps_step", "threshold eps"),
                           (axes[1], "hex/hier_fraction_step", "hierarchical fraction of negatives")):
        xs, ys = series(rows, key)
        ax.plot(xs, ys, lw=1)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "plots" / "hex.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(str(path))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("knn_fine", "kNN fine"), ("knn_coarse", "kNN coarse")):
        pts = [(h["epoch"] + 1, h[key]) for h in history if key in h and not math.isnan(h[key])]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "plots" / "knn.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(str(path))
    return written


def finish_run(cfg, out: Path, history: list[dict], steps: int, wall_s: float | None = None) -> dict:
    """Plots + summary.json; returns the summary dict. wall_s: seconds of this invocation's training
    (a resumed run reports only its own part)."""
    rows = read_metrics(out / "logs" / "metrics.csv")
    plots = plot(out, rows, history)
    eps = series(rows, "hex/eps_step")[1]
    frac = series(rows, "hex/hier_fraction_step")[1]
    summary = {
        "method": cfg.method,
        "hex": cfg.hex.mode,
        "kernel": cfg.kernel,
        "dataset": cfg.data.dataset,
        "steps": steps,
        "wall_s": wall_s,
        "final": history[-1] if history else {},
        "history": history,
        "hex_last": {"eps": eps[-1] if eps else None, "hier_fraction": frac[-1] if frac else None},
        "config_hash": C.config_hash(cfg),
        "plots": plots,
        "out": str(out),
    }
    with open(out / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=2, default=float)
    return summary
