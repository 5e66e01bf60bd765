"""Tiny configs and fake batches for the trainer tests and the step benchmark (CPU-sized)."""
from __future__ import annotations

import torch

from train import config as C

# every method's sizes shrunk so that a step takes milliseconds on the CPU
TINY_METHOD = {
    "simclr": {"proj_hidden_dim": 32, "proj_output_dim": 16},
    "nnclr": {"proj_hidden_dim": 32, "pred_hidden_dim": 32, "proj_output_dim": 16, "queue_size": 64},
    "all4one": {"proj_hidden_dim": 32, "pred_hidden_dim": 32, "proj_output_dim": 16, "queue_size": 64,
                "transformer_heads": 2, "transformer_layers": 1, "transformer_dropout": 0.0},
    "barlow": {"proj_hidden_dim": 32, "proj_output_dim": 16},
    "byol": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32},
    "mocov2": {"proj_hidden_dim": 32, "proj_output_dim": 16, "queue_size": 64},
    "vicreg": {"proj_hidden_dim": 32, "proj_output_dim": 16},
    "simsiam": {"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 8},
}


def tiny_config(method: str = "simclr", hex_mode: str = "adaptive", **sections) -> C.Config:
    data = {
        "method": method,
        "kernel": "torch",
        "hex": {"mode": hex_mode, "warmup_epochs": 0, "fixed_epoch_step": 1},
        "model": {"backbone": "tiny", "tiny_width": 4},
        "train": {"batch_size": 16, "epochs": 2, "progress_bar": False, "channels_last": False},
        method: dict(TINY_METHOD[method]),
    }
    for key, value in sections.items():
        data = C.merge(data, {key: value})
    return C.from_dict(data)


def fake_batch(n: int = 16, size: int = 12, seed: int = 0, classes: int = 4, groups: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    fine = torch.randint(0, classes, (n,), generator=g)
    return {
        "views": [torch.randn(n, 3, size, size, generator=g) for _ in range(2)],
        "fine": fine,
        "coarse": fine % groups,
        "index": torch.arange(n),
    }
