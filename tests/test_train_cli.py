"""`python -m train.pretrain` end to end on the embedded dataset, config errors, kill-and-resume."""
import json

import pytest
import torch

from train import config as C
from train import pretrain

# a CPU-tiny run on 256 embedded images: 4 steps per epoch at batch 64
TINY = ["--backbone", "tiny", "--batch-size", "64", "--kernel", "torch", "--loader", "torchvision",
        "model.tiny_width=4", "data.train_subset=256", "data.eval_subset=128", "data.num_workers=0",
        "train.progress_bar=false", "simclr.proj_hidden_dim=32", "simclr.proj_output_dim=16",
        "hex.warmup_epochs=0", "optim.warmup_epochs=0.5", "train.log_every_steps=1"]
STEPS_PER_EPOCH = 4


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain.main(TINY + ["--epochs", "1", "--max-steps", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kNN fine" in printed and "kNN coarse" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["wall_s"] > 0
    assert 0.0 <= summary["final"]["knn_fine"] <= 1.0
    assert summary["config_hash"] == C.config_hash(C.from_dict(C.load_yaml(out / "config.yaml")))
    for name in ("config.yaml", "checkpoints/last.ckpt", "logs/metrics.csv", "plots/hex.png", "plots/knn.png"):
        assert (out / name).is_file(), name
    header = (out / "logs" / "metrics.csv").read_text().splitlines()[0]
    for key in ("hex/eps_step", "hex/hier_fraction_step", "hex/empty_rows_step"):
        assert key in header


def test_optimizer_steps_equal_epochs_times_steps_per_epoch(tmp_path):
    cfg = pretrain.resolve(TINY + ["--epochs", "2", "--out", str(tmp_path / "r")])
    summary = pretrain.run(cfg)
    assert summary["steps"] == 2 * STEPS_PER_EPOCH
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 2 * STEPS_PER_EPOCH  # one scheduler step per optimizer step
    assert [h["epoch"] for h in summary["history"]] == [0, 1]


@pytest.mark.parametrize("argv,words", [
    (["nosuch.key=1"], ["unknown config key", "nosuch"]),
    (["train.epochs=abc"], ["train.epochs", "integer"]),
    (["train.epochs=1.5"], ["train.epochs", "integer"]),
    (["--method", "swav"], ["method", "swav", "simclr", "nnclr"]),
    (["--hex", "sometimes"], ["hex.mode", "adaptive", "superclass"]),
    (["hex.quantile=1.5"], ["hex.quantile"]),
    (["train.epochs"], ["key=value"]),
    (["--batch-size", "6", "--devices", "4"], ["batch_size", "processes"]),
    (["--dataset", "cifar100", "--data-dir", "/nonexistent/cifar"], ["cifar100", "/nonexistent/cifar"]),
    (["--dataset", "imagenet"], ["imagenet", "cifar100"]),
])
def test_config_errors_are_caught_before_training(tmp_path, argv, words, capsys):
    out = tmp_path / "run"
    assert pretrain.main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()  # nothing ran


def test_triton_without_gpu_fails_fast(tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the triton kernel can run")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert pretrain.main(["--kernel", "triton", "--out", str(tmp_path / "r")]) == 2
    assert "GPU" in capsys.readouterr().err


def test_yaml_config_and_saved_resolved_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: byol\nhex:\n  mode: fixed\n  fixed_start: 0.9\nbyol:\n  momentum: 0.995\n")
    cfg = pretrain.resolve(["--config", str(path), "train.seed=3", "--epochs", "7"])
    assert (cfg.method, cfg.hex.mode, cfg.hex.fixed_start, cfg.byol.momentum) == ("byol", "fixed", 0.9, 0.995)
    assert (cfg.train.seed, cfg.train.epochs) == (3, 7)
    C.save_yaml(cfg, tmp_path / "saved.yaml")
    again = C.from_dict(C.load_yaml(tmp_path / "saved.yaml"))
    assert C.to_dict(again) == C.to_dict(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text("hex:\n  quantlie: 0.9\n")
    with pytest.raises(C.ConfigError, match="quantlie"):
        pretrain.resolve(["--config", str(bad)])


class Crash(Exception):
    pass


class CrashAt:
    """A callback that kills training after `step` optimizer steps (as a crash would)."""

    def __init__(self, step):
        from lightning.pytorch.callbacks import Callback

        outer = self

        class _C(Callback):
            def on_train_batch_end(self, trainer, *args):
                if trainer.global_step >= outer.step:
                    raise Crash(f"killed at step {trainer.global_step}")

        self.step = step
        self.callback = _C()


@pytest.mark.parametrize("method,every,crash", [
    ("simclr", 0, STEPS_PER_EPOCH + 2),   # resume from the end-of-epoch-0 checkpoint
    ("nnclr", 0, STEPS_PER_EPOCH + 2),
    ("simclr", 2, STEPS_PER_EPOCH + 3),   # resume mid-epoch 1 (checkpoint at step 6 of 4 per epoch)
])
def test_kill_and_resume_equals_uninterrupted(tmp_path, method, every, crash):
    extra = [f"--method={method}", f"train.checkpoint_every_steps={every}"]
    if method == "nnclr":
        extra += ["nnclr.proj_hidden_dim=32", "nnclr.pred_hidden_dim=32", "nnclr.proj_output_dim=16",
                  "nnclr.queue_size=128"]
    args = TINY + extra + ["--epochs", "3"]
    full = pretrain.run(pretrain.resolve(args + ["--out", str(tmp_path / "full")]))
    cut = tmp_path / "cut"
    with pytest.raises(Crash):
        pretrain.run(pretrain.resolve(args + ["--out", str(cut)]), extra_callbacks=[CrashAt(crash).callback])
    saved = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == (crash - 1 if every else STEPS_PER_EPOCH)  # where the resume starts
    resumed = pretrain.run(pretrain.resolve(["--out", str(cut), "--resume"]))
    assert resumed["steps"] == full["steps"] == 3 * STEPS_PER_EPOCH
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in a["state_dict"].items():  # weights, queues, EMA targets, BN statistics
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(sb["momentum_buffer"], sa["momentum_buffer"], rtol=0, atol=0)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert [h["knn_fine"] for h in full["history"]] == [h["knn_fine"] for h in resumed["history"]]
    # the same log continues: every step logged once, from the first (rows before the checkpoint
    # kept, rows after it logged again by the resumed run)
    import csv

    with open(cut / "logs" / "metrics.csv", newline="") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh) if r.get("train/ssl_loss_step")]
    assert steps == list(range(3 * STEPS_PER_EPOCH))


def test_example_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
    assert configs, "configs/ holds the example runs"
    for path in configs:
        cfg = pretrain.resolve(["--config", str(path)])
        assert cfg.train.epochs >= 100, path


@pytest.mark.parametrize("method", ["byol", "mocov2", "all4one"])
def test_two_process_ddp_run_through_lightning(tmp_path, method):
    """The real Lightning DDP path (2 gloo processes) for the methods with frozen EMA targets and
    queues: a frozen parameter that requires grad makes DDP fail at the second step."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "train.pretrain", "--method", method, "--devices", "2", "--max-steps", "3",
           "--batch-size", "32", "--out", str(out), "--loader", "torchvision", "data.train_subset=256",
           "data.eval_subset=128", "data.num_workers=0", "train.progress_bar=false", "model.tiny_width=4"]
    done = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
