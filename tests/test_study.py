"""The study script: its commands are valid trainer command lines that pin every setting the runs
depend on, it runs them in its stated order and skips finished ones, and its statistics are right.
Nothing here trains a network."""
import dataclasses
import importlib.util
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from train import config as C
from train.pretrain import resolve

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("study", ROOT / "scripts" / "study.py")
study = importlib.util.module_from_spec(spec)
sys.modules["study"] = study
spec.loader.exec_module(study)

CPU = study.designs(None)["cpu"]
NEW_ARMS = ["simclr-fixed", "simclr-superclass", "nnclr-none", "nnclr-adaptive", "barlow-none", "barlow-adaptive"]


@pytest.fixture
def pilot_results(tmp_path):
    """A results folder holding only the pilot's six runs (the study adds more as it goes)."""
    import shutil

    dst = tmp_path / "results"
    for arm in ("simclr-none", "simclr-adaptive"):
        for seed in (0, 1, 2):
            shutil.copytree(ROOT / "results/fashion-mnist/cpu" / arm / f"seed{seed}", dst / "cpu" / arm / f"seed{seed}")
    shutil.copy(ROOT / "results/fashion-mnist/cpu/floor.json", dst / "cpu" / "floor.json")
    return dst


def dry_run(design, data_dir, results=None):
    cmd = [sys.executable, "scripts/study.py", "--design", design, "--data-dir", str(data_dir), "--dry-run"]
    if results is not None:
        cmd += ["--results", str(results)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.startswith("python -m train.pretrain")]


@pytest.mark.parametrize("design, runs", [("cpu", 28), ("full", 24)])
def test_every_study_command_resolves(design, runs, tmp_path):
    commands = dry_run(design, tmp_path)
    assert len(commands) == runs
    for line in commands:
        cfg = resolve(shlex.split(line.split("    # done")[0])[3:])
        assert cfg.data.dataset == "fashion-mnist" and cfg.method in ("simclr", "nnclr", "barlow")


def test_unknown_design_is_rejected(tmp_path):
    done = subprocess.run([sys.executable, "scripts/study.py", "--design", "huge", "--data-dir", str(tmp_path),
                           "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "cpu" in done.stderr + done.stdout


def _perturbed(obj, prefix=""):
    """Every leaf of a config dataclass set to another valid value (a stand-in for changed defaults)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = _perturbed(v)
        elif "choices" in f.metadata:
            out[f.name] = next(c for c in f.metadata["choices"] if c != v)
        elif isinstance(v, bool):
            out[f.name] = not v
        elif isinstance(v, int):
            out[f.name] = v + 3
        elif isinstance(v, float):
            out[f.name] = v * 0.5 + 0.01
        elif isinstance(v, tuple):
            out[f.name] = [0.5] * len(v)
        elif isinstance(v, str):
            out[f.name] = v + "x"
    return out


# set by a named flag of the command, or not read by the arm (out/resume/progress bar: where and how
# a run is written, not what it computes)
NOT_PINNED = {"method", "hex.mode", "data.dataset", "data.root", "model.backbone", "train.epochs", "train.seed",
              "train.out", "train.resume", "train.progress_bar", "hex.vicreg_scale",
              # what watches a run and where its data comes from, not what it computes
              "train.tensorboard", "train.wandb", "train.wandb_project", "data.download"}
FIXED_ONLY = {"hex.fixed_schedule", "hex.fixed_start", "hex.fixed_min", "hex.fixed_step", "hex.fixed_epoch_step"}


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


@pytest.mark.parametrize("arm", CPU.arms, ids=lambda a: a.name)
def test_cpu_runs_do_not_depend_on_trainer_defaults(arm, tmp_path):
    """Changing any trainer default (simulated: a config file changing every field, which the
    command line's flags and key=value settings override) leaves the run's config unchanged."""
    defaults = C.Config()
    changed = _perturbed(defaults)
    # only the arm's own method section is read by its run
    for name in C.METHOD_NAMES:
        if name != arm.method:
            changed.pop(name)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    argv = study.command(CPU, arm, 0, str(tmp_path), Path("out"))[3:]
    plain = dict(_leaves(C.to_dict(resolve(argv))))
    moved = dict(_leaves(C.to_dict(resolve(["--config", str(path)] + argv))))
    ignored = NOT_PINNED | (set() if arm.hex == "fixed" else FIXED_ONLY)
    unpinned = sorted(k for k in plain if k.split(".")[0] in {"kernel", "hex", "data", "model", "optim", "train",
                                                              "eval", arm.method}
                      and k not in ignored and plain[k] != moved[k])
    assert not unpinned, f"{arm.name}: pin these settings in scripts/study.py (CPU_PINS / METHOD_PINS): {unpinned}"


def test_cpu_pins_keep_the_pilot_settings(tmp_path):
    """The pinned values are those the pilot's recorded commands ran with, with auto resolved as on a
    CPU (so the pilot's six runs are runs of this design)."""
    for arm in CPU.arms[:2]:
        rec = json.loads((ROOT / "results/fashion-mnist/cpu" / arm.name / "seed0" / "run.json").read_text())
        old = resolve(shlex.split(rec["command"].replace(study.PLACEHOLDER_DATA, str(tmp_path)))[3:])
        new = resolve(study.command(CPU, arm, 0, str(tmp_path), Path(old.train.out))[3:])
        old.kernel, old.data.loader, old.train.accelerator, old.train.precision = "torch", "torchvision", "cpu", "32"
        old.hex.warmup = "infonce"
        # the pilot's command left these to the defaults of its day (since changed for the CPU main job)
        old.train.batch_size, old.optim.classifier_lr = 256, 0.1
        assert C.to_dict(old) == C.to_dict(new)


def test_plan_order_new_arms_first_then_second_seeds(pilot_results):
    """28 runs; with the pilot's six kept, the 22 new ones go: seed 0 of every new arm, then seed 1,
    then seed 2, then SimCLR none/adaptive seeds 3 and 4, each HEX arm next to its none arm."""
    order = [(a.name, s) for a, s in study.plan(CPU)]
    assert len(order) == 28 and len(set(order)) == 28
    todo = [(a.name, s) for a, s in study.run_all(CPU, "DATA", Path("runs/x"), pilot_results, dry_run=True)]
    assert len(todo) == 22
    assert todo[:6] == [(n, 0) for n in NEW_ARMS]
    assert todo[6:12] == [(n, 1) for n in NEW_ARMS]
    assert todo[12:18] == [(n, 2) for n in NEW_ARMS]
    assert todo[18:] == [("simclr-none", 3), ("simclr-adaptive", 3), ("simclr-none", 4), ("simclr-adaptive", 4)]


def test_finished_runs_are_skipped_and_new_ones_kept(tmp_path):
    results, runs = tmp_path / "results", tmp_path / "runs"
    design = dataclasses.replace(CPU, arms=CPU.arms[:2])  # simclr none / adaptive, seeds 0-4
    first = study.kept(results, design, design.arms[0], 0)
    first.mkdir(parents=True)
    (first / "summary.json").write_text("{}")
    calls = []

    def fake_trainer(cmd, cwd, check, env):
        out = Path(cmd[cmd.index("--out") + 1])
        calls.append((cmd[cmd.index("--hex") + 1], int(cmd[cmd.index("--seed") + 1]), env["OMP_NUM_THREADS"]))
        (out / "logs").mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps({"final": {}, "seed": calls[-1][1]}))
        (out / "logs" / "metrics.csv").write_text("step\n1\n")

    ran = study.run_all(design, "DATA", runs, results, dry_run=False, threads=2, runner=fake_trainer)
    assert len(ran) == 9 and ("none", 0, "2") not in calls and len(calls) == 9
    assert calls[0] == ("adaptive", 0, "2") and calls[1] == ("none", 1, "2")
    kept = study.kept(results, design, design.arms[1], 4)
    assert json.loads((kept / "summary.json").read_text())["seed"] == 4
    rec = json.loads((kept / "run.json").read_text())
    assert rec["wall_s"] >= 0 and rec["threads"] == 2 and rec["commit"] and study.PLACEHOLDER_DATA in rec["command"]
    # started again: everything is there, nothing runs
    calls.clear()
    assert study.run_all(design, "DATA", runs, results, dry_run=False, runner=fake_trainer) == [] and not calls


def test_t_distribution_and_holm():
    assert study.t_p_two_sided(2.776, 4) == pytest.approx(0.05, abs=2e-4)
    assert study.t_p_two_sided(12.706, 1) == pytest.approx(0.05, abs=2e-4)
    assert study.t_p_two_sided(0.0, 3) == pytest.approx(1.0)
    assert study.t_crit_95(2) == pytest.approx(4.303, abs=1e-3)
    assert study.t_crit_95(4) == pytest.approx(2.776, abs=1e-3)
    assert study.holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    st = study.paired([1.0, 1.2, 0.8])
    assert st["lo"] > 0 and st["p"] < 0.05 and study.verdict(st) == "helped"
    assert study.verdict(study.paired([0.5])) == "one seed: no interval"
    assert study.verdict(study.paired([-1.0, -1.1, -0.9])) == "hurt"


def test_report_of_a_partial_study(pilot_results, tmp_path):
    """The report of the runs there are (the pilot's six): marked partial, with per-arm counts."""
    text = study.report(CPU, pilot_results, tmp_path / "plots")
    assert "Partial: 6 of 28 runs finished" in text
    assert "| simclr-fixed | 0 (-) | 3 |" in text and "| simclr-none | 3 (0, 1, 2) | 5 |" in text
    assert "p (Holm)" in text and (tmp_path / "plots" / "cpu_accuracy.png").is_file()
    assert math.isfinite(float(text.split("| simclr-adaptive | probe fine | ")[1].split("|")[3].strip()))


def test_a_failed_run_does_not_stop_the_study(tmp_path):
    design = dataclasses.replace(CPU, arms=CPU.arms[:1])  # simclr none, seeds 0-4
    seen = []

    def trainer(cmd, cwd, check, env):
        seed = int(cmd[cmd.index("--seed") + 1])
        seen.append(seed)
        if seed == 1:
            raise subprocess.CalledProcessError(1, cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        (out / "logs").mkdir(parents=True)
        (out / "summary.json").write_text("{}")
        (out / "logs" / "metrics.csv").write_text("step\n")

    ran = study.run_all(design, "DATA", tmp_path / "runs", tmp_path / "results", dry_run=False, runner=trainer)
    assert seen == [0, 1, 2, 3, 4] and [s for _, s in ran] == [0, 2, 3, 4]
    assert not (study.kept(tmp_path / "results", design, design.arms[0], 1) / "summary.json").exists()


def test_report_is_spliced_between_the_marks_only():
    doc = "intro\n<!-- study:cpu:start -->\nold\n<!-- study:cpu:end -->\nverdict\n"
    out = study.splice(doc, "cpu", "NEW")
    assert out == "intro\n<!-- study:cpu:start -->\nNEW\n<!-- study:cpu:end -->\nverdict\n"
    with pytest.raises(SystemExit, match="exactly one"):
        study.splice("no marks", "cpu", "NEW")


def test_verdict_table_says_why_there_is_no_verdict(pilot_results):
    data = study.load_runs(CPU, pilot_results)
    comps = study.comparisons(CPU, data)
    table = "\n".join(study.verdict_table(CPU, data, comps))
    assert "| simclr-fixed | 0 | no paired runs yet |" in table
    assert "| simclr-adaptive | 3 | within noise (-0.03) |" in table
    one = {k: v for k, v in data.items()}
    one["simclr-adaptive"] = {0: data["simclr-adaptive"][0]}
    table = "\n".join(study.verdict_table(CPU, one, study.comparisons(CPU, one)))
    assert "one seed: no interval" in table
