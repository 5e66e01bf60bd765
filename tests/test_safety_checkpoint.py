"""Checkpoints are read with weights_only=True everywhere: a crafted checkpoint cannot run code, and
an empty, truncated or corrupt one is refused with an error naming the file and what to do."""
import hashlib
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from tests.test_train_cli import TINY
from train import linear, pretrain


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A real (tiny, 1-step) run folder; tests work on copies of it."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert pretrain.main(TINY + ["--epochs", "2", "--max-steps", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def folder_hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


class MakesMarker:
    """Unpickling this creates the file `path` (as a real exploit would run any code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant(ckpt_path: Path, marker: Path, fmt: str) -> None:
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["hexfast"]["payload"] = MakesMarker(marker)
    if fmt == "torch":
        torch.save(ckpt, ckpt_path)
    else:  # a bare pickle stream, as an older torch.save or a hand-made file would be
        ckpt_path.write_bytes(pickle.dumps(ckpt))


def test_the_planted_checkpoint_really_runs_code_when_unpickled(tmp_path):
    """The payload is live: loading it without weights_only creates the marker."""
    marker = tmp_path / "pwned"
    path = tmp_path / "x.ckpt"
    torch.save({"x": MakesMarker(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_resume_refuses_a_checkpoint_that_would_run_code(run_copy, tmp_path, monkeypatch, capsys, fmt):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # only an explicit weights_only=True holds
    marker = tmp_path / "pwned"
    ckpt = run_copy / "checkpoints" / "last.ckpt"
    plant(ckpt, marker, fmt)
    before = folder_hashes(run_copy)
    assert pretrain.main(["--out", str(run_copy), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err
    assert not marker.exists()
    assert folder_hashes(run_copy) == before
    if fmt == "torch":
        assert "arbitrary code" in err


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_linear_refuses_a_checkpoint_that_would_run_code(run_copy, tmp_path, monkeypatch, capsys, fmt):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    ckpt = run_copy / "checkpoints" / "last.ckpt"
    plant(ckpt, marker, fmt)
    assert linear.main(["--ckpt", str(ckpt), "--epochs", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err
    assert not marker.exists()
    assert not list(run_copy.glob("linear_*.json"))


def test_lightnings_own_load_is_weights_only(run_copy, tmp_path, monkeypatch):
    """Even past the up-front check, the load inside trainer.fit refuses the payload (torch's
    default would not, with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD set)."""
    from train import rundir

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    ckpt = run_copy / "checkpoints" / "last.ckpt"
    clean = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "pwned"
    plant(ckpt, marker, "torch")
    monkeypatch.setattr(rundir, "read_checkpoint", lambda path, purpose: clean)
    with pytest.raises(pickle.UnpicklingError):
        pretrain.run(pretrain.resolve(["--out", str(run_copy), "--resume"]))
    assert not marker.exists()


def _empty(path):
    path.write_bytes(b"")


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path):
    path.write_bytes(bytes(range(256)) * 64)


def _foreign(path):
    torch.save({"weights": torch.zeros(3)}, path)  # a checkpoint, but not one of train.pretrain


@pytest.mark.parametrize("damage,words", [
    (_empty, ["is empty"]),
    (_truncated, ["cannot be read", "truncated"]),
    (_garbage, ["cannot be read", "corrupt"]),
    (_foreign, ["not a train.pretrain checkpoint"]),
])
def test_damaged_checkpoint_is_named_with_what_to_do(run_copy, capsys, damage, words):
    ckpt = run_copy / "checkpoints" / "last.ckpt"
    damage(ckpt)
    before = folder_hashes(run_copy)
    assert pretrain.main(["--out", str(run_copy), "--resume"]) == 2
    err = capsys.readouterr().err
    for w in words + [str(ckpt), "restore it from a copy", "another --out"]:
        assert w in err, (w, err)
    assert folder_hashes(run_copy) == before
    assert linear.main(["--ckpt", str(ckpt), "--epochs", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    for w in words + [str(ckpt), "pass a checkpoint written by train.pretrain"]:
        assert w in err, (w, err)


def test_linear_reads_a_good_checkpoint(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    ckpt = out / "checkpoints" / "last.ckpt"
    assert linear.main(["--ckpt", str(ckpt), "--epochs", "1", "--device", "cpu"]) == 0
    assert (out / "linear_1.json").is_file()
