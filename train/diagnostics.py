"""End-of-run diagnostics: plots/hex.png (training loss, the HEX threshold eps and the fraction of
hierarchical negatives over training), plots/knn.png (accuracies per epoch, from the initial network
on) and summary.json (the initial network's and the final metrics, the gain, history, config hash).

The per-step series are read back from the CSV log (logs/metrics.csv), which a resumed run keeps
appending to, so the plots cover the whole run. Epochs are counted as the logs count them: epoch 0
is the first; the initial network is logged as epoch -1 at step 0. summary.json is strict JSON:
values that do not exist (eps of a rule without a threshold, a metric without labels) are `null`.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from train import config as C

# methods whose logged loss is an InfoNCE/HEX cross-entropy, in nats
CROSS_ENTROPY_METHODS = ("simclr", "nnclr", "mocov2")


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


def strict_json(obj):
    """`obj` with NaN / inf replaced by None and tensors / numpy scalars by floats (json.dumps(...,
    allow_nan=False) then accepts it)."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    try:
        value = float(obj)
    except (TypeError, ValueError):
        return str(obj)
    return value if math.isfinite(value) else None


def warmup_epochs(cfg) -> tuple[int, str] | None:
    """(last warm-up epoch, what runs during it) for the adaptive rule, else None."""
    from train.methods import METHODS

    h = cfg.hex
    if h.mode != "adaptive":
        return None
    kind = h.warmup if h.warmup != "auto" else METHODS[cfg.method].hex_warmup
    if kind == "off":
        return None
    what = "InfoNCE (another loss), no eps" if kind == "infonce" else f"eps fixed at raw cosine {h.warmup_eps:g}"
    return h.warmup_epochs, what


def warmup_label(cfg) -> str:
    last, what = warmup_epochs(cfg)
    span = "epoch 0" if last == 0 else f"epochs 0-{last}"
    return f"HEX warm-up, {span}: {what}"


def run_title(cfg, out: Path) -> str:
    rule = "HEX off" if cfg.hex.mode == "none" else f"HEX {cfg.hex.mode}"
    return f"{out.name}: {cfg.method} + {rule}, {cfg.data.dataset}, {cfg.model.backbone} backbone"


def _shade_warmup(ax, cfg, start: float, end: float, label: bool) -> None:
    w = warmup_epochs(cfg)
    if w is None:
        return
    ax.axvspan(start, end, color="0.85", alpha=0.6, lw=0, label=warmup_label(cfg) if label else None)


def training_figure(rows: list[dict], cfg, steps_per_epoch: int, title: str):
    """Loss, eps and hierarchical fraction (%) against the epoch (x = step / steps per epoch, so
    epoch e spans [e, e + 1) as in the logs); the HEX warm-up shaded."""
    import matplotlib.pyplot as plt

    spe = max(int(steps_per_epoch), 1)
    w = warmup_epochs(cfg)
    infonce_warmup = w is not None and w[1].startswith("InfoNCE")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharex=True)
    loss_unit = "nats" if cfg.method in CROSS_ENTROPY_METHODS else "method's loss units"
    panels = (
        (axes[0], "train/ssl_loss", f"training loss ({loss_unit})", 1.0, "training loss"),
        (axes[1], "hex/eps", "threshold eps (cosine similarity)", 1.0, "threshold eps"),
        (axes[2], "hex/hier_fraction", "hierarchical negatives (% of negatives)", 100.0,
         "hierarchical fraction of negatives"),
    )
    last_x = 0.0
    for ax, key, ylabel, scale, panel_title in panels:
        xs, ys = series(rows, f"{key}_step")
        pts = [(x / spe, y * scale) for x, y in zip(xs, ys) if math.isfinite(y)]
        if key == "hex/hier_fraction" and infonce_warmup:
            # no threshold is applied during an InfoNCE warm-up: its zeros are not a measurement
            pts = [(x, y) for x, y in pts if x >= w[0] + 1]
        ex, ey = series(rows, f"{key}_epoch", x="epoch")
        means = [(e + 0.5, y * scale) for e, y in zip(ex, ey) if math.isfinite(y) and e >= 0]
        if key == "hex/hier_fraction" and infonce_warmup:
            means = [(x, y) for x, y in means if x >= w[0] + 1]
        if xs:
            last_x = max(last_x, (max(xs) + 1) / spe)
        if pts:
            ax.plot(*zip(*pts), lw=0.8, color="C0", alpha=0.6, label="logged steps")
        if means:
            ax.plot(*zip(*means), "o", ms=4, color="C0", label="epoch mean")
        if not pts and not means:
            why = {"none": "HEX off (--hex none): no threshold",
                   "superclass": "superclass rule: the coarse labels decide, no threshold"}.get(cfg.hex.mode,
                                                                                              "nothing logged")
            ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", color="0.3")
        ax.set_title(panel_title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("epoch (0 = first, as in logs/metrics.csv)")
        ax.grid(alpha=0.3)
    epochs_run = max(int(math.ceil(last_x)), 1)
    for ax in axes:
        _shade_warmup(ax, cfg, 0, min(w[0] + 1, epochs_run) if w else 0, label=ax is axes[0])
        ax.set_xlim(0, epochs_run)
    _integer_ticks(axes[0], 0, epochs_run)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:  # one legend for the three panels, below them, covering no data
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def _integer_ticks(ax, lo: int, hi: int, labels: dict | None = None) -> None:
    step = max(1, int(math.ceil((hi - lo + 1) / 12)))
    ticks = list(range(lo, hi + 1, step))
    ax.set_xticks(ticks)
    if labels:
        ax.set_xticklabels([labels.get(t, str(t)) for t in ticks])


def accuracy_figure(history: list[dict], initial: dict | None, cfg, title: str):
    """kNN and online-probe accuracy (%) per epoch as logged, the initial network at 'init' (epoch
    -1) with dotted lines at its kNN accuracies, and the frozen-feature linear probe of the initial
    and the final network."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11.5, 4.8))
    init = initial or {}
    epochs = [h["epoch"] for h in history]
    last = max(epochs) if epochs else 0
    _shade_warmup(ax, cfg, -0.5, min(warmup_epochs(cfg)[0], last) + 0.5 if warmup_epochs(cfg) else 0, label=True)
    styles = (("knn_fine", "kNN fine", "C0", "-", "o"), ("knn_coarse", "kNN coarse", "C1", "-", "o"),
              ("probe_fine", "online probe fine", "C0", "--", "."),
              ("probe_coarse", "online probe coarse", "C1", "--", "."))
    for key, label, color, ls, marker in styles:
        pts = [(h["epoch"], 100 * h[key]) for h in history if _ok(h.get(key))]
        if key.startswith("knn") and _ok(init.get(key)):
            pts = [(-1, 100 * init[key])] + pts  # the online probe starts untrained: no initial point
            ax.axhline(100 * init[key], color=color, ls=":", lw=1,
                       label=f"initial network: {label} {100 * init[key]:.1f}%")
        if pts:
            ax.plot(*zip(*pts), ls=ls, marker=marker, color=color, label=label)
    final = history[-1] if history else {}
    for key, label, color in (("linear_fine", "linear probe fine (frozen features)", "C0"),
                              ("linear_coarse", "linear probe coarse (frozen features)", "C1")):
        pts = [(x, 100 * m[key]) for x, m in ((-1, init), (final.get("epoch"), final))
               if m and x is not None and _ok(m.get(key))]
        if pts:
            ax.plot(*zip(*pts), ls="", marker="*", ms=11, color=color, markeredgecolor="k", label=label)
    ax.set_xlim(-1.5, last + 0.5)
    _integer_ticks(ax, -1, last, labels={-1: "init"})
    ax.set_xlabel("epoch (0 = first, as in logs/metrics.csv; evaluated at its end; init = before step 0)")
    ax.set_ylabel(f"top-1 accuracy on the {cfg.data.eval_split} split (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _ok(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def plot(out: Path, rows: list[dict], history: list[dict], cfg=None, initial: dict | None = None,
         steps_per_epoch: int = 1) -> list[str]:
    """Write plots/hex.png and plots/knn.png; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = cfg if cfg is not None else C.Config()
    (out / "plots").mkdir(parents=True, exist_ok=True)
    title = run_title(cfg, out)
    written = []
    for name, fig in (("hex.png", training_figure(rows, cfg, steps_per_epoch, title)),
                      ("knn.png", accuracy_figure(history, initial, cfg, title))):
        path = out / "plots" / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(str(path))
    return written


def finish_run(cfg, out: Path, history: list[dict], steps: int, wall_s: float | None = None,
               initial: dict | None = None, steps_per_epoch: int = 1) -> dict:
    """Plots + summary.json; returns the summary dict. wall_s: seconds of this invocation's training
    (a resumed run reports only its own part). initial: the initial network's metrics (epoch -1)."""
    from train.console import gains

    rows = read_metrics(out / "logs" / "metrics.csv")
    plots = plot(out, rows, history, cfg, initial, steps_per_epoch)
    eps = [v for v in series(rows, "hex/eps_step")[1] if math.isfinite(v)]
    frac = series(rows, "hex/hier_fraction_step")[1]
    final = history[-1] if history else {}
    summary = {
        "method": cfg.method,
        "hex": cfg.hex.mode,
        "kernel": cfg.kernel,
        "dataset": cfg.data.dataset,
        "steps": steps,
        "wall_s": wall_s,
        "initial": initial,
        "final": final,
        "gain": gains(initial, final),  # final - initial, fractions (x 100 = points)
        "history": history,
        "hex_last": {"eps": eps[-1] if eps else None, "hier_fraction": frac[-1] if frac else None},
        "config_hash": C.config_hash(cfg),
        "plots": plots,
        "out": str(out),
    }
    summary = strict_json(summary)
    with open(out / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=2, allow_nan=False)
    return summary
