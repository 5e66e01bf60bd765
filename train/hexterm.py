"""The HEX term of a training run: threshold schedule + loss settings + kernel, process-group aware.

A method holds one `HexTerm` (or none for its plain loss) and calls:
    loss, stats = hex.square(a, b, epoch, groups)   two-view HEX of cat[a, b]   (a, b [n, D] local rows)
    loss, stats = hex.rows(s, epoch)                HEX of given similarity rows [n, 1 + K], positive
                                                    in column 0, no self (MoCo: key + queue)
With one process `square` is exactly `hexfast.hex_loss`. With W processes the local rows are the
anchors and the candidates are gathered from every process (gradients flow back), each row's positive
and self indices point into the gathered order, the adaptive eps is the mean of the row quantiles over
ALL rows (all-reduced), and the loss is the mean over the local rows: the mean over processes equals
the single-process loss (see `train/distributed.py`). Stats are summed over processes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from hexfast.hex_loss import candidate_row_quantiles, hex_loss, hex_rect_loss
from hexfast.reference import hex_from_similarities, row_quantiles
from hexfast.thresholds import HexSettings, Schedule, build_schedule
from train import distributed as D

def make_schedule(hex_cfg, method, epochs: int) -> Schedule:
    """The threshold schedule that `--hex` selects, from the config's `hex` section.

    method: the method's class (or its registry name); under hex.warmup=auto the adaptive rule's
    warm-up is the class's `hex_warmup` (spec §3: InfoNCE for SimCLR / MoCo v2, the raw-cosine eps for
    NNCLR / All4One, none for the methods HEX is added to).
    """
    if isinstance(method, str):
        from train.methods import METHODS  # the methods import this module

        method = METHODS[method]
    common = dict(hierarchy_weight=hex_cfg.hierarchy_weight, positive_in_denominator=hex_cfg.positive_in_denominator)
    mode = hex_cfg.mode
    if mode == "none":
        return build_schedule("none")
    if mode == "adaptive":
        warmup = hex_cfg.warmup if hex_cfg.warmup != "auto" else method.hex_warmup
        return build_schedule("adaptive", quantile=hex_cfg.quantile, warmup_epochs=hex_cfg.warmup_epochs,
                              warmup=warmup, warmup_eps=hex_cfg.warmup_eps, **common)
    if mode == "superclass":
        return build_schedule("groups", **common)
    if mode == "fixed":
        if hex_cfg.fixed_schedule == "step":
            return build_schedule("step", start=hex_cfg.fixed_start, step_down=hex_cfg.fixed_step,
                                  epoch_step=hex_cfg.fixed_epoch_step, floor=hex_cfg.fixed_min, **common)
        return build_schedule(hex_cfg.fixed_schedule, start=hex_cfg.fixed_start, minimum=hex_cfg.fixed_min,
                              total_epochs=epochs, **common)
    raise ValueError(f"unknown hex mode {mode!r}; valid: none, adaptive, fixed, superclass")


class HexTerm:
    """HEX with a schedule; see the module docstring. `temperature` is the method's tau."""

    def __init__(self, schedule: Schedule, temperature: float, kernel: str = "auto"):
        self.schedule = schedule
        self.temperature = temperature
        self.kernel = kernel

    def mode(self, epoch: int) -> HexSettings:
        """The schedule's rule and loss settings for `epoch`."""
        return self.schedule(epoch)

    def square(self, a: Tensor, b: Tensor, epoch: int, groups: Tensor | None = None):
        """HEX over cat[a, b] (a_i's positive is b_i and back). a, b [n, D]; groups [n] or None."""
        settings = self.mode(epoch)
        rule = settings.rule
        if rule.kind != "groups":
            groups = None
        elif groups is None:
            raise ValueError("the superclass rule needs coarse labels (groups); this batch has none")
        common = dict(temperature=self.temperature, hierarchy_weight=settings.hierarchy_weight,
                      positive_in_denominator=settings.positive_in_denominator, kernel=self.kernel, return_stats=True)
        if not D.is_distributed():
            return hex_loss(a, b, rule=rule, groups=groups, **common)
        n, world = a.shape[0], D.world_size()
        anchors = torch.cat([a, b])
        candidates = torch.cat([D.gather(a), D.gather(b)])
        own = D.row_offsets(n, a.device)
        self_index = torch.cat([own, own + world * n])
        pos_index = torch.cat([own + world * n, own])
        if rule.needs_quantiles:
            rule = rule.with_cosine_threshold(D.global_mean_nograd(
                candidate_row_quantiles(anchors.detach(), candidates.detach(), rule.quantile, self.kernel)))
        labels = {}
        if groups is not None:
            g = D.gather_nograd(groups)
            labels = dict(anchor_groups=torch.cat([groups, groups]), candidate_groups=torch.cat([g, g]))
        loss, stats = hex_rect_loss(anchors, candidates, pos_index, self_index, rule=rule, **labels, **common)
        return loss, _global_stats(stats)

    def rows(self, s: Tensor, epoch: int, groups: Tensor | None = None, candidate_groups: Tensor | None = None):
        """HEX of similarity rows s [n, 1 + K] (positive in column 0, no self): MoCo's key + queue.

        Runs the reference on the given similarities (the candidates differ per row in column 0,
        which the fused rectangular kernel does not express). The adaptive eps is the mean over all
        rows of all processes of each row's quantile. The superclass rule needs `groups` [n] (the
        queries' labels) and `candidate_groups` [1 + K] (column 0 is the positive, never a negative).
        """
        settings = self.mode(epoch)
        rule = settings.rule
        labels = {}
        if rule.kind == "groups":
            if groups is None or candidate_groups is None:
                raise ValueError("the superclass rule needs labels for the queries and the queue")
            labels = dict(anchor_groups=groups, candidate_groups=candidate_groups)
        if rule.needs_quantiles:
            rule = rule.with_cosine_threshold(D.global_mean_nograd(row_quantiles(s.detach(), rule.quantile)))
        n = s.shape[0]
        pos = torch.zeros(n, dtype=torch.long, device=s.device)
        loss, stats = hex_from_similarities(
            s, pos, torch.full_like(pos, -1), temperature=self.temperature, rule=rule,
            hierarchy_weight=settings.hierarchy_weight, positive_in_denominator=settings.positive_in_denominator,
            **labels)
        return loss, _global_stats(stats)


def _global_stats(stats: dict) -> dict:
    """Counts summed over processes, fraction recomputed (eps is already global)."""
    if not D.is_distributed():
        return stats
    keys = ("hier_count", "neg_count", "empty_rows", "rows")
    summed = D.all_reduce_sum_nograd(torch.stack([stats[k].float() for k in keys]))
    out = dict(stats)
    out.update({k: summed[i] for i, k in enumerate(keys)})
    out["hier_fraction"] = summed[0] / summed[1].clamp_min(1)
    return out
