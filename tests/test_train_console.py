"""What a run shows: the console lines, the initial network's evaluation, strict summary.json, the
CLI's help / --print-config / missing-extra / download route, the loggers, --compare-baseline."""
import csv
import json
import sys

import pytest
import yaml

from train import config as C
from train import console
from train import pretrain
from tests.test_train_cli import TINY


def strict_load(text: str):
    """json.loads that refuses NaN / Infinity (which json.dumps writes by default, and JSON forbids)."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_main_job_prints_start_initial_epochs_and_gain(tmp_path, capfd, recwarn):
    out = tmp_path / "run"
    # progress bar left on (the default): stdout is not a terminal here, so none may be drawn
    argv = [a for a in TINY if a != "train.progress_bar=false"] + ["--epochs", "2", "--out", str(out)]
    assert pretrain.main(argv) == 0
    captured = capfd.readouterr()
    text = captured.out + captured.err
    lines = captured.out.splitlines()
    assert "\r" not in text, "a progress bar was drawn into a non-terminal"
    for noise in ("GPU available", "TPU available", "Tip:", "litlogger", "LitLogger"):
        assert noise not in text, noise
    start = next(line for line in lines if line.startswith("run "))
    for word in (str(out), "simclr + HEX adaptive", "kernel torch", "loader torchvision", "1 CPU process",
                 "256 train / 128 eval images", "2 epochs x 4 steps at batch 64"):
        assert word in start, (word, start)
    assert any(line.startswith("initial network (before step 0): kNN fine") for line in lines)
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(" |")[0] for line in epoch_lines] == ["epoch 0/1", "epoch 1/1"]
    for line in epoch_lines:
        for word in ("loss ", "eps", "hier", "kNN fine", "img/s", "elapsed", "ETA"):
            assert word in line, (word, line)
    end = next(line for line in lines if line.startswith("end (epoch 1, step 8)"))
    assert "vs the initial network" in end and "kNN fine" in end and str(out) in end

    summary = strict_load((out / "summary.json").read_text())
    init, final = summary["initial"], summary["final"]
    assert init["epoch"] == -1 and init["step"] == 0
    for key in ("knn_fine", "knn_coarse", "linear_fine", "linear_coarse"):
        assert 0 <= init[key] <= 1 and 0 <= final[key] <= 1
        assert summary["gain"][key] == pytest.approx(final[key] - init[key])
        assert f"({100 * summary['gain'][key]:+.1f})" in end
    assert [h["epoch"] for h in summary["history"]] == [0, 1]
    with open(out / "logs" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    first = [r for r in rows if r.get("eval/knn_fine")][0]
    assert (int(first["epoch"]), int(first["step"])) == (-1, 0)  # the initial network, logged first
    assert float(first["eval/knn_fine"]) == pytest.approx(init["knn_fine"])
    assert not [w for w in recwarn if "isinstance(treespec" in str(w.message)]


def test_initial_evaluation_leaves_the_training_unchanged(tmp_path):
    """The evaluation before step 0 draws no random numbers the training would see."""
    import torch

    a = pretrain.run(pretrain.resolve(TINY + ["--epochs", "1", "--max-steps", "2", "--out", str(tmp_path / "a")]))

    from train.module import SSLModule

    original = SSLModule.on_train_start
    try:
        SSLModule.on_train_start = lambda self: None  # no initial evaluation
        b = pretrain.run(pretrain.resolve(TINY + ["--epochs", "1", "--max-steps", "2", "--out", str(tmp_path / "b")]))
    finally:
        SSLModule.on_train_start = original
    assert a["initial"] and not b["initial"]
    wa = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    wb = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)


def test_resume_says_the_log_is_kept(tmp_path, capfd, recwarn):
    from tests.test_train_cli import Crash, CrashAt

    out = tmp_path / "run"
    with pytest.raises(Crash):
        pretrain.run(pretrain.resolve(TINY + ["--epochs", "2", "--out", str(out)]),
                     extra_callbacks=[CrashAt(6).callback])
    capfd.readouterr()
    assert pretrain.main(["--out", str(out), "--resume"]) == 0
    text = "".join(capfd.readouterr())
    assert "resuming at step 4" in text
    assert "logs/metrics.csv keeps its" in text and "before step 4" in text
    assert "will be deleted" not in text
    assert not [w for w in recwarn if "will be deleted" in str(w.message)]
    assert "initial network (before step 0)" not in text  # evaluated once, by the first invocation
    summary = strict_load((out / "summary.json").read_text())
    assert summary["initial"]["epoch"] == -1  # carried by the checkpoint
    assert [h["epoch"] for h in summary["history"]] == [0, 1]


def test_superclass_summary_is_strict_json(tmp_path):
    out = tmp_path / "run"
    assert pretrain.main(TINY + ["--hex", "superclass", "--epochs", "1", "--max-steps", "2", "--out", str(out)]) == 0
    summary = strict_load((out / "summary.json").read_text())
    assert summary["hex_last"]["eps"] is None  # no threshold under the superclass rule
    assert 0 <= summary["hex_last"]["hier_fraction"] <= 1


def test_help_shows_every_default_and_the_dataset_names(capsys):
    with pytest.raises(SystemExit) as stop:
        pretrain.main(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in ("fashion-mnist-small", "fashion-mnist", "mnist", "cifar10", "cifar100", "stl10", "imagefolder",
                 "flatfolder"):
        assert name in text, name
    parser = pretrain.build_parser()
    for action in parser._actions:
        if action.dest in pretrain.FLAGS:
            shown = pretrain.default(pretrain.FLAGS[action.dest])
            assert "default" in (action.help or ""), action.dest
            if shown not in ("", None):
                assert f"default {shown}" in " ".join(action.help.split()), (action.dest, action.help)
    assert "--print-config" in text and "--compare-baseline" in text


def test_print_config_prints_the_resolved_config_and_exits(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pretrain.main(["--print-config", "--epochs", "7", "hex.quantile=0.98"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 7 and printed["hex"]["quantile"] == 0.98
    assert C.to_dict(C.from_dict(printed)) == printed  # the whole resolved config, valid as a --config file
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing written


def test_missing_train_extra_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lightning", None)  # `import lightning` now fails as if not installed
    assert pretrain.main(TINY + ["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "pip install hexfast[train]" in err and "lightning" in err


def test_missing_dataset_names_the_download_route_and_the_route_exists(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere"
    assert pretrain.main(["--dataset", "cifar100", "--data-dir", str(missing), "--out", str(tmp_path / "r")]) == 2
    assert "data.download=true" in capsys.readouterr().err

    import train.data.registry as registry
    from train.data import DataError

    calls = []

    def fake_fetch(name, root):  # no network in tests: record the call, then fail as offline would
        calls.append((name, str(root)))
        raise DataError("cannot download: offline")

    monkeypatch.setattr(registry, "fetch", fake_fetch)
    argv = ["--dataset", "cifar100", "--data-dir", str(missing), "data.download=true", "--out", str(tmp_path / "r")]
    assert pretrain.main(argv) == 2
    assert calls == [("cifar100", str(missing))]
    assert "offline" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_tensorboard_logger(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    assert pretrain.main(TINY + ["--tensorboard", "on", "--epochs", "1", "--max-steps", "2", "--out", str(out)]) == 0
    events = list((out / "logs").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "logs"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "eval/knn_fine" in tags and "train/ssl_loss_step" in tags


def test_wandb_logger_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # belt and braces: never reach the network
    out = tmp_path / "run"
    assert pretrain.main(TINY + ["--wandb", "--epochs", "1", "--max-steps", "2", "--out", str(out)]) == 0
    runs = list((out / "wandb").glob("offline-run-*"))
    assert runs, list((out / "wandb").iterdir()) if (out / "wandb").exists() else "no wandb folder"
    assert list(runs[0].glob("*.wandb"))


def test_missing_logger_packages_are_named(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "wandb") else real(name, *a))
    assert pretrain.main(TINY + ["--tensorboard", "on", "--out", str(tmp_path / "a")]) == 2
    assert "pip install hexfast[tensorboard]" in capsys.readouterr().err
    assert pretrain.main(TINY + ["--wandb", "--out", str(tmp_path / "b")]) == 2
    assert "pip install hexfast[wandb]" in capsys.readouterr().err
    # auto without TensorBoard: CSV only, the run goes on
    cfg = pretrain.resolve(TINY + ["--out", str(tmp_path / "c")])
    assert [type(lg).__name__ for lg in pretrain.build_loggers(cfg, tmp_path / "c")] == ["CSVLogger"]


def test_compare_baseline_runs_both_and_prints_them_side_by_side(tmp_path, capfd):
    out = tmp_path / "cmp"
    assert pretrain.main(TINY + ["--compare-baseline", "--epochs", "1", "--max-steps", "2", "--out", str(out)]) == 0
    text = capfd.readouterr().out
    header = next(line for line in text.splitlines() if "hex adaptive" in line and "hex none" in line)
    assert "initial" in header
    assert any(line.startswith("kNN fine") for line in text.splitlines())
    assert any(line.startswith("linear probe coarse") for line in text.splitlines())
    result = strict_load((out / "comparison.json").read_text())
    a, b = result["runs"]["hex adaptive"], result["runs"]["hex none"]
    assert a["steps"] == b["steps"] == 2
    assert a["initial"]["knn_fine"] == b["initial"]["knn_fine"]  # same seed: the same initial network
    assert strict_load((out / "hex-none" / "summary.json").read_text())["hex"] == "none"
    assert pretrain.main(TINY + ["--compare-baseline", "--hex", "none", "--out", str(tmp_path / "x")]) == 2


def test_epoch_line_reads_warmup_and_rules():
    nan = float("nan")
    kw = dict(evaluation=None, img_s=1000.0, elapsed=61.0, eta=3725.0)
    line = console.epoch_line(0, 9, loss=5.25, eps=nan, hier=0.0, **kw)
    assert "eps warm-up" in line and "hier      -" in line and "0:01:01" not in line and "1:01 elapsed" in line
    assert "ETA 1:02:05" in line
    assert "hier  1.25%" in console.epoch_line(3, 9, loss=5.0, eps=0.95, hier=0.0125, **kw)
    assert "hier 10.00%" in console.epoch_line(3, 9, loss=5.0, eps=nan, hier=0.1, hex_mode="superclass", **kw)
    assert console.show_progress_bar(True) is False  # pytest's stdout is not a terminal


def test_readme_states_the_warmup_as_the_code_runs_it():
    """Default hex.warmup_epochs = 1 and the released `epoch <= warmup_epochs`: epochs 0 AND 1."""
    from pathlib import Path

    from train.hexterm import make_schedule

    cfg = C.Config()
    schedule = make_schedule(cfg.hex, cfg.method, cfg.train.epochs)
    warm = [e for e in range(cfg.train.epochs) if schedule(e).rule.kind == "none"]
    assert warm == [0, 1]
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    assert "epochs 0 and 1" in readme and "epoch <= warmup_epochs" in readme


def _rows(spe: int, epochs: int, warm_last: int):
    """metrics.csv-like rows: per step eps (NaN during the warm-up) and fraction (0 then), epoch means."""
    rows = []
    for step in range(spe * epochs):
        e = step // spe
        warm = e <= warm_last
        rows.append({"step": str(step), "epoch": str(e), "train/ssl_loss_step": str(5 - 0.01 * step),
                     "hex/eps_step": "nan" if warm else str(0.95 - 0.001 * step),
                     "hex/hier_fraction_step": "0.0" if warm else "0.0125"})
    return rows


def _span(patch):
    from matplotlib.patches import Rectangle

    if isinstance(patch, Rectangle):
        return (patch.get_x(), patch.get_x() + patch.get_width())
    xs = [v[0] for v in patch.get_xy()]
    return (min(xs), max(xs))


def test_plots_are_labelled_in_percent_with_warmup_and_logged_epochs():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.patches import Polygon, Rectangle

    from train import diagnostics as Dg

    cfg = C.from_dict({"hex": {"warmup_epochs": 1}})
    fig = Dg.training_figure(_rows(4, 4, 1), cfg, 4, "runs/x: the title")
    assert fig.get_suptitle() == "runs/x: the title"
    loss_ax, eps_ax, frac_ax = fig.axes
    for ax in fig.axes:
        assert ax.get_xlabel().startswith("epoch") and ax.get_ylabel()
        spans = [p for p in ax.patches if isinstance(p, (Polygon, Rectangle))]
        assert spans, "warm-up not shaded"
        assert _span(spans[0]) == (0, 2)  # epochs 0 and 1 (epoch <= 1)
    assert "%" in frac_ax.get_ylabel() and "cosine" in eps_ax.get_ylabel() and "nats" in loss_ax.get_ylabel()
    frac = frac_ax.lines[0]
    assert min(frac.get_xdata()) >= 2  # the warm-up's zeros are not drawn as measurements
    assert max(frac.get_ydata()) == pytest.approx(1.25)  # percent, not a fraction
    assert max(eps_ax.lines[0].get_xdata()) < 4 and min(eps_ax.lines[0].get_xdata()) >= 2

    history = [{"epoch": e, "step": 4 * (e + 1), "knn_fine": 0.7 + 0.01 * e, "knn_coarse": 0.8,
                "probe_fine": 0.5, "probe_coarse": 0.6} for e in range(4)]
    history[-1].update(linear_fine=0.75, linear_coarse=0.85)
    initial = {"epoch": -1, "step": 0, "knn_fine": 0.65, "knn_coarse": 0.78, "linear_fine": 0.6,
               "linear_coarse": 0.7, "probe_fine": 0.1, "probe_coarse": 0.2}
    fig = Dg.accuracy_figure(history, initial, cfg, "runs/x: the title")
    (ax,) = fig.axes
    assert ax.get_title() == "runs/x: the title" and "%" in ax.get_ylabel() and ax.get_xlabel().startswith("epoch")
    lines = {ln.get_label(): ln for ln in ax.lines}
    knn = lines["kNN fine"]
    assert list(knn.get_xdata()) == [-1, 0, 1, 2, 3]  # the logs' epochs, the initial network at -1
    assert knn.get_ydata()[0] == pytest.approx(65.0) and knn.get_ydata()[-1] == pytest.approx(73.0)
    assert list(lines["online probe fine"].get_xdata()) == [0, 1, 2, 3]
    assert list(lines["linear probe fine (frozen features)"].get_ydata()) == pytest.approx([60.0, 75.0])
    assert "initial network: kNN fine 65.0%" in lines
    assert "init" in [t.get_text() for t in ax.get_xticklabels()]
    assert ax.patches, "warm-up not shaded"
