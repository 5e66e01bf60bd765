"""Adding a method is one file and one registry line: a toy method, registered at run time, trains
two steps through the CLI with its config section, and the trainer takes its HEX policy (warm-up,
temperature source) from the class alone."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from train.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]

# What a new method's file holds, then the one registry line (made before the config is imported,
# as train/methods/__init__.py makes it).
TOY = '''
import sys
from dataclasses import dataclass

import torch

from train.methods import METHODS
from train.methods.base import Method, MethodParams, mlp, ranged


@dataclass
class ToyParams(MethodParams):
    lr: float = 0.05
    temperature: float = 0.37
    proj_dim: int = ranged(8, lo=1)


class Toy(Method):
    name = "toy"
    Params = ToyParams
    hex_combine = "replace"
    hex_temperature = "method"
    hex_warmup = "cosine"

    def __init__(self, params, feat_dim, backbone, hex_term, hex_cfg, kernel="auto"):
        super().__init__(params, feat_dim, backbone, hex_term, hex_cfg, kernel)
        self.projector = mlp([feat_dim, params.proj_dim], bn=False)

    def loss(self, step):
        z1, z2 = (self.projector(f) for f in step.feats)
        loss, stats = self.hex.square(z1, z2, step.epoch, self.hex_groups(step))
        return loss, {"hex": stats, "tau": torch.tensor(self.hex.temperature)}


METHODS["toy"] = Toy
from train import pretrain

sys.exit(pretrain.main(sys.argv[1:]))
'''

ARGS = ["--method", "toy", "--backbone", "tiny", "--batch-size", "32", "--kernel", "torch", "--loader", "torchvision",
        "--epochs", "1", "--max-steps", "2", "model.tiny_width=4", "data.train_subset=64", "data.eval_subset=32",
        "data.num_workers=0", "train.progress_bar=false", "train.log_every_steps=1", "hex.warmup_epochs=0",
        "hex.warmup_eps=0.8", "toy.proj_dim=6"]


def test_a_registered_toy_method_trains_through_the_cli(tmp_path):
    assert "toy" not in METHODS
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", TOY, *ARGS, "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"] == "toy" and cfg["toy"]["proj_dim"] == 6 and cfg["toy"]["temperature"] == 0.37
    rows = list(csv.DictReader((out / "logs" / "metrics.csv").open()))
    steps = [r for r in rows if r.get("train/tau_step")]
    assert len(steps) == 2
    for row in steps:
        assert float(row["train/tau_step"]) == pytest.approx(0.37)  # hex_temperature = "method": toy.temperature
        assert float(row["hex/eps_step"]) == pytest.approx(0.8)     # hex_warmup = "cosine": hex.warmup_eps
        assert math.isfinite(float(row["train/ssl_loss_step"]))


def test_a_bad_policy_names_the_attribute_and_the_choices():
    from train.methods.base import Method

    class Bad(Method):
        name = "bad"
        hex_warmup = "sometimes"

    with pytest.raises(ValueError, match="Bad.hex_warmup = 'sometimes'; valid: infonce, cosine, off"):
        Bad.check_policy()

    class NoTau(Method):
        name = "notau"
        hex_temperature = "method"

    with pytest.raises(ValueError, match="needs a `temperature` field in MethodParams"):
        NoTau.check_policy()
