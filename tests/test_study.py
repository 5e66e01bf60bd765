"""The study script's designs are valid trainer command lines (checked without running anything)."""
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from train.pretrain import resolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("design, runs", [("pilot", 6), ("full", 24)])
def test_every_study_command_resolves(design, runs, tmp_path):
    done = subprocess.run([sys.executable, "scripts/study.py", "--design", design, "--data-dir", str(tmp_path),
                           "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    commands = [line for line in done.stdout.splitlines() if line.startswith("python -m train.pretrain")]
    assert len(commands) == runs
    for line in commands:
        cfg = resolve(shlex.split(line)[3:])
        assert cfg.data.dataset == "fashion-mnist" and cfg.method in ("simclr", "nnclr", "barlow")


def test_unknown_design_is_rejected(tmp_path):
    done = subprocess.run([sys.executable, "scripts/study.py", "--design", "huge", "--data-dir", str(tmp_path),
                           "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "pilot" in done.stderr + done.stdout
