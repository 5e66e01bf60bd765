"""What a pretraining run prints: one start line, one line per epoch, the end with the gain.

    run runs/simclr-adaptive-... | simclr + HEX adaptive (q 0.99; InfoNCE warm-up while epoch <= 1) | ...
    initial network (before step 0): kNN fine 71.2% coarse 84.1% | linear probe fine 70.3% coarse 82.9%
    epoch  0/9 | loss 5.456 | eps -     hier  -    | kNN fine 74.1% coarse 85.2% | 1,210 img/s | 0:06 elapsed, ETA 0:58
    ...
    end (epoch 9, step 190): kNN fine 78.9% (+7.7 points over the initial network), ...

Every line is a plain, flushed print: redirected to a file the run reads as it does in a terminal.
The progress bar is shown only when stdout is a terminal (and train.progress_bar is true). The
per-epoch line reads values that are already logged at the epoch's end (epoch means from
`trainer.callback_metrics`, the evaluation from the module's history): nothing here adds a host
sync to the training step. Lightning's start-up chatter (accelerator availability, a logging
service's advert) is filtered, and its resume warning that "previous log files will be deleted"
(untrue here: train.pretrain.keep_logged_rows keeps the rows before the checkpoint) is replaced by
a line saying what happens to the log.
"""
from __future__ import annotations

import logging
import math
import sys
import time
import warnings

# Lightning's info lines that say nothing about this run, or that the start line says better
NOISE_PREFIXES = (
    "GPU available:", "TPU available:", "HPU available:", "IPU available:", "💡 Tip:", "`Trainer.fit` stopped:",
    "LOCAL_RANK:", "Restoring states from the checkpoint path", "Restored all states from the checkpoint",
    "Using bfloat16 Automatic Mixed Precision", "Using 16bit Automatic Mixed Precision",
)
NOISE_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda", "lightning.fabric.accelerators.cuda")
NOISE_WARNINGS = (
    # CSVLogger on a resumed run: not true here, keep_logged_rows re-queues the earlier rows
    r".*Previous log files in this directory will be deleted",
    # a deprecation inside Lightning's own code, not something a user can act on
    r".*isinstance\(treespec, LeafSpec\)",
)
# the accuracies the console reports, in the order it prints them
ACCURACY_KEYS = ("knn_fine", "knn_coarse", "linear_fine", "linear_coarse", "probe_fine", "probe_coarse")
GAIN_KEYS = ("knn_fine", "knn_coarse", "linear_fine", "linear_coarse")
METRIC_NAMES = {"knn_fine": "kNN fine", "knn_coarse": "kNN coarse", "linear_fine": "linear probe fine",
                "linear_coarse": "linear probe coarse", "probe_fine": "online probe fine",
                "probe_coarse": "online probe coarse"}


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not msg.lstrip().startswith(NOISE_PREFIXES)


_FILTER = _DropNoise()


def quiet_lightning() -> None:
    """Install the filters (idempotent; also in DDP worker processes, which run main() again)."""
    for name in NOISE_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def say(line: str) -> None:
    """Print one line, above the progress bar if one is drawn."""
    bar = sys.modules.get("tqdm")
    if bar is not None and getattr(bar.tqdm, "_instances", None):
        bar.tqdm.write(line, file=sys.stdout)
    else:
        print(line, flush=True)
    sys.stdout.flush()


def show_progress_bar(wanted: bool) -> bool:
    """The bar redraws itself with carriage returns: only worth it on a terminal."""
    return bool(wanted) and sys.stdout.isatty()


# ------------------------------------------------------------------------------------- formatting
def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pct(v, digits: int = 1) -> str:
    return f"{100 * v:.{digits}f}%" if _finite(v) else "-"


def clock(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def hex_rule(cfg) -> str:
    """The HEX rule in words, warm-up included (as train.hexterm.make_schedule builds it)."""
    from train.methods import METHODS

    h = cfg.hex
    if h.mode == "none":
        return f"{cfg.method}, HEX off (--hex none: the method's own loss)"
    if h.mode == "adaptive":
        warmup = h.warmup if h.warmup != "auto" else METHODS[cfg.method].hex_warmup
        if warmup == "off":
            when = "no warm-up"
        elif warmup == "cosine":
            when = f"raw-cosine eps {h.warmup_eps:g} while epoch <= {h.warmup_epochs}"
        else:
            when = f"InfoNCE warm-up while epoch <= {h.warmup_epochs}"
        return f"{cfg.method} + HEX adaptive (q {h.quantile:g}; {when})"
    if h.mode == "fixed":
        if h.fixed_schedule == "step":
            sched = (f"step {h.fixed_start:g} - {h.fixed_step:g} every {h.fixed_epoch_step} epochs, "
                     f"floor {h.fixed_min:g}")
        else:
            sched = f"{h.fixed_schedule} {h.fixed_start:g} -> {h.fixed_min:g}"
        return f"{cfg.method} + HEX fixed ({sched})"
    return f"{cfg.method} + HEX superclass (coarse labels as groups)"


def start_line(cfg, data, *, out, kernel: str, loader: str, devices: str, resume_step: int | None) -> str:
    t = cfg.train
    parts = [f"run {out}", hex_rule(cfg), f"kernel {kernel}", f"loader {loader}", devices,
             f"data {cfg.data.dataset}: {len(data.train):,} train / {len(data.eval):,} eval images"
             + (f" (kNN bank {len(data.bank):,})" if len(data.bank) != len(data.train) else "")
             + f", {data.image_size} px",
             f"{t.epochs} epochs x {data.steps_per_epoch} steps at batch {t.batch_size}"
             + (f" (stop at step {t.max_steps})" if t.max_steps > 0 else "")]
    if resume_step is not None:
        parts.append(f"resuming at step {resume_step}")
    return " | ".join(parts)


def resume_line(kept_rows: int, resume_step: int) -> str:
    return (f"resume: logs/metrics.csv keeps its {kept_rows} rows logged before step {resume_step}; "
            f"steps from {resume_step} on are logged again by this run (nothing is deleted)")


def accuracies(m: dict, keys=ACCURACY_KEYS) -> str:
    """'kNN fine 74.1% coarse 85.2% | linear probe fine ... | online probe fine ...' for the keys present."""
    groups = (("kNN", "knn"), ("linear probe", "linear"), ("online probe", "probe"))
    out = []
    for label, prefix in groups:
        items = [f"{name} {pct(m[f'{prefix}_{name}'])}" for name in ("fine", "coarse")
                 if f"{prefix}_{name}" in m and f"{prefix}_{name}" in keys]
        if items:
            out.append(f"{label} " + " ".join(items))
    return " | ".join(out)


def initial_line(initial: dict) -> str:
    return "initial network (before step 0): " + accuracies(initial, ("knn_fine", "knn_coarse", "linear_fine",
                                                                       "linear_coarse"))


def epoch_line(epoch: int, last_epoch: int, *, loss, eps, hier, evaluation: dict | None, img_s: float,
               elapsed: float, eta: float | None, hex_mode: str = "adaptive") -> str:
    """One epoch: loss, eps and hierarchical fraction (epoch means), kNN, throughput, time."""
    width = len(str(last_epoch))
    if hex_mode == "superclass":
        eps_text = "eps n/a"  # the labels decide, no threshold
    elif _finite(eps):
        eps_text = f"eps {eps:.3f}"
    else:  # no threshold this epoch: HEX off, or the InfoNCE warm-up (whose zero fraction means nothing)
        eps_text, hier = ("eps warm-up" if hex_mode == "adaptive" else "eps -"), None
    parts = [f"epoch {epoch:>{width}}/{last_epoch}", f"loss {loss:.4f}" if _finite(loss) else "loss -",
             f"{eps_text:<11}", f"hier {pct(hier, 2):>6}" if _finite(hier) else "hier      -"]
    if evaluation:
        parts.append(accuracies(evaluation, ("knn_fine", "knn_coarse")))
    parts.append(f"{img_s:,.0f} img/s")
    parts.append(f"{clock(elapsed)} elapsed" + (f", ETA {clock(eta)}" if eta is not None else ""))
    return " | ".join(parts)


def gains(initial: dict | None, final: dict) -> dict:
    """{metric: final - initial} (fractions) for the metrics both have and are finite."""
    if not initial:
        return {}
    return {k: final[k] - initial[k] for k in GAIN_KEYS
            if _finite(final.get(k)) and _finite(initial.get(k))}


def end_line(summary: dict) -> str:
    final, initial = summary.get("final") or {}, summary.get("initial")
    where = f"end (epoch {final.get('epoch', '?')}, step {summary.get('steps', '?')})"
    gain = gains(initial, final)
    parts = []
    for k in ACCURACY_KEYS:
        if k not in final:
            continue
        text = f"{METRIC_NAMES[k]} {pct(final[k])}"
        if k in gain:
            text += f" ({100 * gain[k]:+.1f})"
        parts.append(text)
    head = where + (" vs the initial network, in points" if gain else "")
    wall = summary.get("wall_s")
    tail = f"{wall:.0f} s of training" if _finite(wall) else None
    out = summary.get("out")  # absent when a summary is built outside a run (tests, callbacks)
    return f"{head}: " + ", ".join(parts) + (f" | {tail}" if tail else "") + (f" | run dir {out}" if out else "")


def comparison_table(runs: dict[str, dict]) -> str:
    """Side-by-side table of summaries {label: summary} (same budget, e.g. HEX vs --hex none)."""
    labels = list(runs)
    first = runs[labels[0]]
    rows = [("", ["initial"] + labels + ([f"{labels[0]} - {labels[1]}"] if len(labels) == 2 else []))]
    for k in ACCURACY_KEYS:
        finals = [runs[label].get("final", {}).get(k) for label in labels]
        if all(v is None for v in finals):
            continue
        init = (first.get("initial") or {}).get(k) if k in GAIN_KEYS else None
        cells = [pct(init)] + [pct(v) for v in finals]
        if len(labels) == 2:
            a, b = finals
            cells.append(f"{100 * (a - b):+.1f}" if _finite(a) and _finite(b) else "-")
        rows.append((METRIC_NAMES[k], cells))
    pad = [""] if len(labels) == 2 else []
    rows.append(("steps", [""] + [str(runs[label].get("steps", "-")) for label in labels] + pad))
    rows.append(("training s", [""] + [f"{runs[label]['wall_s']:.0f}" if _finite(runs[label].get("wall_s")) else "-"
                                        for label in labels] + pad))
    widths = [max(len(r[0]) for r in rows)] + [max(len(r[1][i]) for r in rows) for i in range(len(rows[0][1]))]
    lines = []
    for name, cells in rows:
        lines.append("  ".join([name.ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells, widths[1:])]))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- the callback
def _float(v):
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def make_console(cfg, data, out, resume_step=None, kept_rows: int = 0):
    """A Lightning callback printing the start line, the initial evaluation, one line per epoch."""
    from lightning.pytorch.callbacks import Callback

    class Console(Callback):
        def __init__(self):
            self.pending = None      # the finished epoch whose line is not printed yet
            self.started = None      # perf_counter at on_train_start
            self.first_step = 0      # global step when this invocation started
            self.epoch_t0 = self.epoch_step0 = None
            self.train_s = 0.0
            self.initial_shown = False
            self.kept_rows = kept_rows  # set by train.pretrain.build_loggers on resume

        def on_train_start(self, trainer, module):
            self.started = time.perf_counter()
            self.first_step = int(trainer.global_step)
            if not trainer.is_global_zero:
                return
            loader = getattr(getattr(module, "_loader", None), "backend", cfg.data.loader)
            say(start_line(cfg, data, out=out, kernel=kernel_name(cfg, trainer), loader=loader,
                           devices=devices_name(cfg, trainer), resume_step=resume_step))
            if resume_step is not None:
                say(resume_line(self.kept_rows, resume_step))

        def on_train_epoch_start(self, trainer, module):
            self._flush(trainer, module)
            if trainer.is_global_zero and not self.initial_shown and resume_step is None and module.initial:
                say(initial_line(module.initial))
                self.initial_shown = True
            self.epoch_t0, self.epoch_step0 = time.perf_counter(), int(trainer.global_step)

        def on_train_epoch_end(self, trainer, module):
            # runs before the module's evaluation (Lightning calls callbacks first): training time only
            device = getattr(trainer.strategy, "root_device", None)
            if device is not None and device.type == "cuda":
                import torch

                torch.cuda.synchronize(device)  # once per epoch: the step's queued work is done
            if self.epoch_t0 is not None:
                self.train_s = time.perf_counter() - self.epoch_t0
            self.pending = (int(trainer.current_epoch), int(trainer.global_step) - (self.epoch_step0 or 0))

        def on_train_end(self, trainer, module):
            self._flush(trainer, module)

        def _flush(self, trainer, module):
            if self.pending is None:
                return
            epoch, steps = self.pending
            self.pending = None
            if not trainer.is_global_zero:
                return
            m = trainer.callback_metrics
            evaluation = module.history[-1] if module.history and module.history[-1].get("epoch") == epoch else None
            now = time.perf_counter()
            elapsed = now - self.started
            done = int(trainer.global_step) - self.first_step
            total = module.total_steps if cfg.train.max_steps < 0 else min(module.total_steps, cfg.train.max_steps)
            left = max(total - int(trainer.global_step), 0)
            eta = elapsed / done * left if done > 0 else None
            img_s = steps * cfg.train.batch_size / self.train_s if self.train_s > 0 else 0.0
            say(epoch_line(epoch, cfg.train.epochs - 1, loss=_float(m.get("train/ssl_loss_epoch")),
                           eps=_float(m.get("hex/eps_epoch")), hier=_float(m.get("hex/hier_fraction_epoch")),
                           evaluation=evaluation, img_s=img_s, elapsed=elapsed, eta=eta, hex_mode=cfg.hex.mode))

    return Console()


def kernel_name(cfg, trainer) -> str:
    """The HEX implementation the run uses ('auto' resolved the way hexfast.hex_loss resolves it)."""
    if cfg.method == "mocov2" and cfg.hex.mode != "none":
        return f"{cfg.kernel} (MoCo v2: the reference, the fused kernel has no per-row positive)"
    if cfg.kernel != "auto":
        return cfg.kernel
    device = getattr(trainer.strategy, "root_device", None)
    if device is not None and device.type == "cuda":
        from hexfast.backend import KernelUnavailableError, load

        try:
            load("triton")
            return "auto (triton: the fused kernel on CUDA)"
        except KernelUnavailableError:
            return "auto (torch: the fused kernel cannot be imported)"
    return "auto (torch reference: no CUDA device)"


def devices_name(cfg, trainer) -> str:
    t = cfg.train
    device = getattr(trainer.strategy, "root_device", None)
    kind = "GPU" if device is not None and device.type == "cuda" else "CPU process"
    n = t.devices * t.num_nodes
    where = f"{n} {kind}{'es' if kind.endswith('process') and n > 1 else ('s' if n > 1 else '')}"
    if t.num_nodes > 1:
        where += f" ({t.num_nodes} nodes x {t.devices})"
    precision = getattr(trainer, "precision", None) or t.precision
    return f"{where}, precision {precision}"
