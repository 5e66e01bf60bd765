"""The shared Lightning module: backbone, method, online linear probes, optimiser, eval, diagnostics.

    loss = method.loss(views -> backbone features) + CE(probe(features.detach()), labels)
The probes (fine and, where the dataset has them, coarse labels) see detached features, so they
never train the backbone. Evaluation (kNN + probe accuracy on the eval split) runs at the end of
every `eval.every_epochs` epochs and of the last one. Checkpoints carry, besides what Lightning saves
(weights incl. queues and EMA targets, optimizer, lr schedule, loop position): the threshold
schedule's parameters, the RNG states, the eval history and the data loader's position.
"""
from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train import distributed as D
from train.backbones import build_backbone
from train.hexterm import HexTerm, make_schedule
from train.knn import extract, knn_accuracy, probe_accuracy
from train.methods import METHODS, StepInput
from train.optim import build_optimizer, warmup_cosine

HEX_LOG_KEYS = ("eps", "hier_fraction", "empty_rows")
# train.compile -> torch.compile options. reduce-overhead adds CUDA graphs on a GPU; Inductor skips
# them for CPU tensors, so on the CPU it compiles exactly as "default".
COMPILE_OPTIONS = {"default": {}, "reduce-overhead": {"mode": "reduce-overhead"}}


def build_method(cfg, backbone: nn.Module, feat_dim: int):
    """The configured method with its HexTerm (None = the method's plain loss), wired by the class's
    policy attributes (`train.methods.base.Method`): warm-up, temperature source, always_hex."""
    cls = METHODS[cfg.method]
    params = cfg.params
    hex_term = None
    if cfg.hex.mode != "none" or cls.always_hex:
        hex_term = HexTerm(make_schedule(cfg.hex, cls, cfg.train.epochs), cls.hex_tau(params, cfg.hex), cfg.kernel)
    return cls(params, feat_dim, backbone, hex_term, cfg.hex, cfg.kernel)


class SSLModule(L.LightningModule):
    def __init__(self, cfg, *, num_classes: int, num_coarse: int, image_size: int, steps_per_epoch: int,
                 data=None):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.model.backbone, image_size, cfg.model.small_stem, cfg.model.tiny_width)
        feat_dim = self.backbone.feat_dim
        self.method = build_method(cfg, self.backbone, feat_dim)
        self.probe_fine = nn.Linear(feat_dim, num_classes) if num_classes else None
        self.probe_coarse = nn.Linear(feat_dim, num_coarse) if num_coarse else None
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = cfg.train.epochs * steps_per_epoch
        self.data = data          # train.pretrain.RunData: builds loaders once rank/device are known
        self.history: list[dict] = []   # per-evaluation metrics (for plots and summary.json)
        self.initial: dict | None = None  # the same metrics of the initial network, before step 0
        self._loader = None
        self._shown_loss = None   # host copy of the loss for the progress bar (see training_step)
        self._graph_epochs: dict = {}  # HEX settings -> the epoch whose graph computes them (compile)

    # ---------------------------------------------------------------- set-up
    def setup(self, stage=None):
        if self.trainer is not None and self.trainer.world_size > 1:
            D.convert_batchnorm(self)  # global-batch statistics, also on the CPU (gloo)
        if self.cfg.train.channels_last:
            self.to(memory_format=torch.channels_last)  # 4-D weights only

    def train_dataloader(self):
        self._loader = self.data.pretrain_loader(self.global_rank, self.trainer.world_size,
                                                 self.trainer.strategy.root_device)
        state = getattr(self, "_resume_loader_state", None)
        if state is not None:
            self._loader.load_state_dict(state)
        return self._loader

    def on_train_epoch_start(self):
        if self._loader is not None:
            self._loader.set_epoch(self.current_epoch)

    # ---------------------------------------------------------------- the step
    def compute_loss(self, batch: dict, epoch: int):
        """(total loss, logs) for one batch of local rows; logs hold detached tensors.

        Under train.compile the forward runs as a torch.compile graph (its backward too), with static
        shapes: every batch of a run has the same size (the loaders drop the remainder). Graphs are
        keyed by the epoch, which the methods read only through their HEX schedule, so each epoch is
        mapped to the first epoch with the same HEX settings: a run compiles one graph per distinct
        setting (SimCLR + adaptive: the InfoNCE warm-up and HEX), not one per epoch.
        """
        self.method.commit_queues()  # a previous loss's pushes, if its caller has not committed them
        if self.cfg.train.compile == "off":
            return self._loss(batch, epoch)
        if self.cfg.train.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the previous graphs' outputs are done
        return self._compiled()(batch, self._graph_epoch(epoch))

    def _compiled(self):
        fn = self.__dict__.get("_compiled_loss")  # built on first use, so the module still pickles before
        if fn is None:
            fn = torch.compile(self._loss, dynamic=False, **COMPILE_OPTIONS[self.cfg.train.compile])
            self.__dict__["_compiled_loss"] = fn
        return fn

    def _graph_epoch(self, epoch: int) -> int:
        hex_term = self.method.hex
        settings = hex_term.mode(epoch) if hex_term is not None else None
        return self._graph_epochs.setdefault(settings, epoch)

    def _loss(self, batch: dict, epoch: int):
        views = batch["views"]
        if self.cfg.train.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        feats = [self.backbone(v) for v in views]
        step = StepInput(views, feats, batch["fine"], batch["coarse"], batch["index"], epoch)
        loss, logs = self.method.loss(step)
        logs = dict(logs)
        logs["ssl_loss"] = loss.detach()
        total = loss
        detached = torch.cat(feats).detach().float()
        for name, probe, key in (("fine", self.probe_fine, "fine"), ("coarse", self.probe_coarse, "coarse")):
            if probe is None:
                continue
            labels = torch.cat([batch[key]] * len(feats))
            logits = probe(detached)
            valid = labels >= 0
            # sum / global count keeps the probe's gradient independent of the process split;
            # ignore_index drops unlabelled rows without a boolean index (a host sync on a GPU)
            probe_loss = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum") / max(len(labels), 1)
            total = total + probe_loss
            logs[f"probe_{name}_loss"] = probe_loss.detach()
            n_valid = valid.sum()  # no host sync: NaN when the batch has no labels
            acc = ((logits.argmax(1) == labels) & valid).sum() / n_valid.clamp_min(1)
            logs[f"probe_{name}_acc"] = torch.where(n_valid > 0, acc.float(), float("nan"))
        return total, logs

    def training_step(self, batch, batch_idx):
        """One step without a host sync (tests/test_train_sync.py): logged values stay device tensors
        (Lightning reads them at its logging cadence only), the lr is logged as a host tensor (no
        host-to-device copy per step), and the progress bar, which Lightning turns into numbers at
        every step, shows a host copy of the loss taken at the logging cadence."""
        total, logs = self.compute_loss(batch, self.current_epoch)
        stats = logs.pop("hex", None)
        metrics: dict = {f"train/{k}": v.float() for k, v in logs.items()}
        if stats is not None:
            metrics.update({f"hex/{k}": stats[k].float() for k in HEX_LOG_KEYS})
        metrics["train/lr"] = torch.tensor(float(self.trainer.optimizers[0].param_groups[0]["lr"]))
        # no sync_dist: an all-reduce per metric per step would cost more than it tells; the HEX stats
        # are already global (summed in HexTerm), the losses are process 0's
        self.log_dict(metrics, on_step=True, on_epoch=True, sync_dist=False, prog_bar=False)
        if self._logging_step():
            self._shown_loss = torch.tensor(float(logs["ssl_loss"]))  # the one sync, at the cadence
        if self._shown_loss is not None:
            self.log("loss", self._shown_loss, prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return total

    def _logging_step(self) -> bool:
        """Whether Lightning writes the step's metrics to the loggers (its log_every_n_steps rule:
        after optimizer step k when (k + 1) % n == 0)."""
        every = self.trainer.log_every_n_steps
        return every > 0 and (self.global_step + 1) % every == 0

    def on_after_backward(self):
        self.method.commit_queues()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.method.after_optimizer_step(self.global_step, self.total_steps, self.backbone)

    # ---------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        cfg, p = self.cfg, self.cfg.params
        lr = p.lr * (cfg.train.batch_size / 256 if cfg.optim.scale_lr else 1.0)
        special = self.method.param_groups()
        taken = {id(q) for g in special for q in g["params"]}
        probes = [q for m in (self.probe_fine, self.probe_coarse) if m is not None for q in m.parameters()]
        taken |= {id(q) for q in probes}
        main = [q for q in self.parameters() if q.requires_grad and id(q) not in taken]
        groups = [{"params": main}]
        groups += [{"params": g["params"], "lr": g["lr"]} for g in special]
        if probes:
            groups.append({"params": probes, "lr": cfg.optim.classifier_lr, "weight_decay": 0.0, "lars_exclude": True})
        opt = build_optimizer(p.optimizer, groups, lr=lr, weight_decay=p.weight_decay, momentum=cfg.optim.momentum,
                              lars_eta=cfg.optim.lars_eta, lars_clip=cfg.optim.lars_clip, betas=cfg.optim.adamw_betas)
        warmup = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        total, o = self.total_steps, cfg.optim
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, warmup, total, o.warmup_start_factor, o.min_lr_factor))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---------------------------------------------------------------- evaluation
    def on_train_start(self):
        """Evaluate the initial network once, before the first step (not again on resume), so that
        the run can state what pretraining added. Logged at step 0 as epoch -1."""
        if self.data is None or self.initial is not None or self.global_step > 0:
            return
        device = next(self.backbone.parameters()).device
        # the evaluation must not shift the random streams the training draws from
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            metrics = self.evaluate(linear=True)
        self.initial = {**metrics, "epoch": -1, "step": 0}
        for logger in self.loggers:
            logger.log_metrics({"epoch": -1, **{f"eval/{k}": float(v) for k, v in metrics.items()}}, step=0)

    def on_train_epoch_end(self):
        epoch = self.current_epoch
        last = epoch + 1 == self.cfg.train.epochs
        if self.data is None or not ((epoch + 1) % self.cfg.eval.every_epochs == 0 or last):
            return
        metrics = self.evaluate(linear=last)  # the frozen-feature probe at the end, to compare with the start
        metrics["epoch"] = epoch
        metrics["step"] = int(self.global_step)
        self.history.append(metrics)
        self.log_dict({f"eval/{k}": float(v) for k, v in metrics.items() if k not in ("epoch", "step")},
                      on_step=False, on_epoch=True, sync_dist=True)  # same value on every process

    @torch.no_grad()
    def evaluate(self, linear: bool = False) -> dict:
        """kNN (fine, coarse) and probe accuracies on the eval split; the bank is the train split.

        linear: also fit a linear classifier on the frozen bank features (train.linear's protocol:
        standardised features, SGD, 30 epochs) and report it as linear_fine / linear_coarse. Unlike
        the online probe, which is trained alongside the backbone, it means the same thing for the
        initial network and the final one.

        With several processes each extracts its shard of both splits and the features are
        gathered, so every process holds the same bank and reports the same numbers.
        """
        device = next(self.backbone.parameters()).device
        loaders = self.data.eval_loaders(device, D.rank(), D.world_size(), self.cfg.eval.max_bank)
        tr, te = ([D.gather_nograd(t) for t in extract(self.backbone, loader, device)] for loader in loaders)
        k, t = self.cfg.eval.knn_k, self.cfg.eval.knn_temperature
        out = {"knn_fine": knn_accuracy(tr[0], tr[1], te[0], te[1], k, t)}
        if self.probe_fine is not None:
            out["probe_fine"] = probe_accuracy(self.probe_fine, te[0], te[1])
        if self.probe_coarse is not None:
            out["knn_coarse"] = knn_accuracy(tr[0], tr[2], te[0], te[2], k, t)
            out["probe_coarse"] = probe_accuracy(self.probe_coarse, te[0], te[2])
        if linear:
            out.update(linear_probe_accuracies(tr, te, self.probe_fine, self.probe_coarse, self.cfg.train.seed))
        return out

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint):
        from train.config import to_dict

        checkpoint["hexfast"] = {
            "config": to_dict(self.cfg),  # lets train.linear rebuild the backbone from the file alone
            # numpy's state as a tensor: Lightning loads checkpoints with weights_only=True
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "history": list(self.history),
            "initial": self.initial,
            "schedule": self.method.hex.schedule.state_dict() if self.method.hex is not None else None,
            "loader": self._loader.state_dict() if self._loader is not None else None,
        }

    def on_load_checkpoint(self, checkpoint):
        extra = checkpoint.get("hexfast", {})
        self.history = list(extra.get("history", []))
        self.initial = extra.get("initial")
        if extra.get("schedule") is not None and self.method.hex is not None:
            self.method.hex.schedule.load_state_dict(extra["schedule"])
        rng = extra.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            name, keys, pos, has_gauss, cached = rng["numpy"]
            np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))
            random.setstate(rng["python"])
            if rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        self._resume_loader_state = extra.get("loader")


def linear_probe_accuracies(train, test, probe_fine, probe_coarse, seed: int) -> dict:
    """{linear_fine, linear_coarse}: train.linear's frozen-feature classifier fitted on the bank
    features `train` = (feats, fine, coarse) and scored on `test` (NaN where no sample has a label)."""
    from train.linear import train_linear

    out = {}
    with torch.enable_grad():
        for name, col, head in (("fine", 1, probe_fine), ("coarse", 2, probe_coarse)):
            if head is None:
                continue
            keep, keep_test = train[col] >= 0, test[col] >= 0
            if not keep.any() or not keep_test.any():
                out[f"linear_{name}"] = float("nan")
                continue
            clf = train_linear(train[0][keep], train[col][keep], head.out_features, epochs=LINEAR_EPOCHS, lr=0.1,
                               wd=0.0, batch_size=256, seed=seed)
            with torch.no_grad():
                pred = clf(test[0][keep_test]).argmax(1)
            out[f"linear_{name}"] = float((pred == test[col][keep_test]).float().mean())
    return out


LINEAR_EPOCHS = 30  # python -m train.linear's default


def _numpy_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return (name, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(cached))
