"""`python -m train.linear`: offline linear evaluation of a pretrained checkpoint.

    python -m train.linear --ckpt runs/x/checkpoints/last.ckpt                  # all train labels
    python -m train.linear --ckpt runs/x/checkpoints/last.ckpt --fraction 0.01  # 1 % of the labels

Protocol: the backbone is frozen and its features are computed once (eval preprocessing, no
augmentation), then a linear classifier (with a per-feature standardisation fitted on the training
features) is trained with SGD + cosine schedule on the labelled `fraction` of the train split
(class-balanced, seeded) and evaluated on the eval split; fine labels, and coarse labels where the
dataset has them. This is the fast frozen-feature protocol, not solo-learn's augmented linear
training, so its numbers are comparable across our runs rather than to published tables.
Writes <run dir>/linear_<fraction>.json and prints the accuracies.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train import config as C


def balanced_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a class-balanced random `fraction` of the labelled samples (>= 1 per class)."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(idx))))
        keep.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(keep))


def train_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, epochs: int, lr: float, wd: float,
                 batch_size: int, seed: int) -> nn.Module:
    """A standardise+linear classifier on fixed features x [N, F] with labels y [N]."""
    g = torch.Generator().manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    head = nn.Linear(x.shape[1], num_classes).to(x.device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    steps = epochs * max(1, -(-len(x) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    xs = (x - mean) / std
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size].to(x.device)
            loss = F.cross_entropy(head(xs[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model = nn.Sequential(_Standardise(mean, std), head)
    return model.eval()


class _Standardise(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


def load_backbone(ckpt_path: Path):
    """(config, state_dict) of a pretraining checkpoint, read safely (tensors and plain values only:
    a crafted checkpoint cannot run code; see train/rundir.py)."""
    from train.rundir import read_checkpoint

    ckpt = read_checkpoint(ckpt_path, "pass a checkpoint written by train.pretrain")
    try:
        cfg = C.from_dict(ckpt["hexfast"]["config"])
    except ValueError as err:
        raise C.ConfigError(f"checkpoint {ckpt_path}: the config stored in it is not valid ({err})") from err
    return cfg, ckpt["state_dict"]


def evaluate_checkpoint(ckpt_path, *, fraction: float = 1.0, epochs: int = 30, lr: float = 0.1, wd: float = 0.0,
                        batch_size: int = 256, seed: int = 0, device: str = "cpu") -> dict:
    from train.backbones import build_backbone
    from train.knn import extract
    from train.pretrain import RunData

    cfg, state = load_backbone(Path(ckpt_path))
    data = RunData(cfg)
    backbone = build_backbone(cfg.model.backbone, data.image_size, cfg.model.small_stem, cfg.model.tiny_width)
    weights = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    backbone.load_state_dict(weights)
    dev = torch.device(device)
    backbone.to(dev)
    train_loader, eval_loader = data.eval_loaders(dev)
    tr, te = extract(backbone, train_loader, dev), extract(backbone, eval_loader, dev)
    results = {"ckpt": str(ckpt_path), "fraction": fraction, "epochs": epochs}
    for name, col, classes in (("fine", 1, data.train.num_classes), ("coarse", 2, data.train.num_coarse)):
        labels = tr[col].cpu().numpy()
        if classes == 0 or (labels < 0).all():
            continue
        chosen = balanced_fraction(labels, fraction, seed) if fraction < 1 else np.flatnonzero(labels >= 0)
        idx = torch.from_numpy(chosen)
        head = train_linear(tr[0][idx].cpu(), tr[col][idx].cpu(), classes, epochs=epochs, lr=lr, wd=wd,
                            batch_size=batch_size, seed=seed)
        keep = te[col] >= 0
        with torch.no_grad():
            pred = head(te[0][keep].cpu()).argmax(1)
        results[f"linear_{name}"] = float((pred == te[col][keep].cpu()).float().mean())
        results[f"labelled_{name}"] = int(len(idx))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.linear", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="a checkpoint written by train.pretrain")
    ap.add_argument("--fraction", type=float, default=1.0, help="labelled fraction of the train split (e.g. 0.01, 0.1)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if not 0 < args.fraction <= 1:
        print(f"error: --fraction must lie in (0, 1], got {args.fraction}", file=sys.stderr)
        return 2
    if args.epochs < 1 or args.batch_size < 1:
        print("error: --epochs and --batch-size must be >= 1", file=sys.stderr)
        return 2
    path = Path(args.ckpt)
    if not path.is_file():
        print(f"error: checkpoint {path} does not exist", file=sys.stderr)
        return 2
    try:
        res = evaluate_checkpoint(path, fraction=args.fraction, epochs=args.epochs, lr=args.lr, wd=args.weight_decay,
                                  batch_size=args.batch_size, seed=args.seed, device=args.device)
    except (ValueError, C.ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = path.parent.parent / f"linear_{args.fraction:g}.json"
    out.write_text(json.dumps(res, indent=2))
    print(", ".join(f"{k} {100 * v:.2f}%" for k, v in res.items() if k.startswith("linear_")) + f" (written to {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
