"""Resume checks before it writes: only train/rundir.RESUMABLE keys may change, any other
difference is refused at once (one message, every key with both values, exit code 2) and the run
folder stays byte-identical; the config that is recorded is the config that runs."""
import shutil

import pytest
import yaml

from tests.test_safety_checkpoint import folder_hashes
from tests.test_train_cli import TINY
from train import config as C
from train import pretrain, rundir


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    assert pretrain.main(TINY + ["--epochs", "1", "--out", str(out)]) == 0  # one epoch: 4 steps
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


@pytest.mark.parametrize("extra,lines", [
    (["--method", "byol"], ["method: run has 'simclr', requested 'byol'"]),
    (["--hex", "fixed"], ["hex.mode: run has 'adaptive', requested 'fixed'"]),
    (["--batch-size", "128"], ["train.batch_size: run has 64, requested 128"]),
    (["hex.quantile=0.5"], ["hex.quantile: run has 0.99, requested 0.5"]),  # would run 0.99, record 0.5
    (["--hex", "fixed", "hex.quantile=0.5", "--batch-size", "128", "--epochs", "5"],
     ["hex.mode: run has 'adaptive', requested 'fixed'", "hex.quantile: run has 0.99, requested 0.5",
      "train.batch_size: run has 64, requested 128"]),
])
def test_refused_resume_lists_every_difference_and_changes_nothing(run_copy, capsys, extra, lines):
    before = folder_hashes(run_copy)
    assert pretrain.main(["--out", str(run_copy), "--resume"] + extra) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1  # one message
    for line in lines:
        assert line in err, (line, err)
    assert "train.epochs" not in err.split("may not change on resume")[1].split("On resume only")[0]
    assert "On resume only these may change: train.epochs, train.max_steps" in err
    assert folder_hashes(run_copy) == before
    # the run can still be resumed as it was
    assert C.from_dict(C.load_yaml(run_copy / "config.yaml")).hex.quantile == 0.99


def test_allowed_changes_run_and_are_recorded(run_copy):
    summary = pretrain.run(pretrain.resolve(["--out", str(run_copy), "--resume", "--epochs", "2",
                                             "train.log_every_steps=2", "train.checkpoint_every_steps=3"]))
    assert summary["steps"] == 8  # the run extended by one epoch of 4 steps
    saved = C.load_yaml(run_copy / "config.yaml")
    t = saved["train"]
    assert (t["epochs"], t["log_every_steps"], t["checkpoint_every_steps"]) == (2, 2, 3)
    assert summary["config_hash"] == C.config_hash(C.from_dict(saved))


def test_a_hand_edited_config_is_checked_against_the_checkpoint(run_copy, capsys):
    """config.yaml edited to 0.5: the checkpoint still trained with 0.99, so the resume is refused."""
    path = run_copy / "config.yaml"
    data = yaml.safe_load(path.read_text())
    data["hex"]["quantile"] = 0.5
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    before = folder_hashes(run_copy)
    assert pretrain.main(["--out", str(run_copy), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"hex.quantile: run has 0.99 (stored in {run_copy / 'checkpoints' / 'last.ckpt'}), requested 0.5" in err
    assert folder_hashes(run_copy) == before


def test_an_invalid_saved_config_is_named(run_copy, capsys):
    (run_copy / "config.yaml").write_text("hex:\n  quantile: [1, 2\n")
    before = folder_hashes(run_copy)
    assert pretrain.main(["--out", str(run_copy), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(run_copy / "config.yaml") in err
    assert folder_hashes(run_copy) == before


def test_a_resume_that_fails_on_its_data_leaves_the_folder_as_it_was(run_copy, capsys, monkeypatch):
    """Past the config checks (the folder is locked by then), a data error still changes nothing:
    the lock file gets its previous content back."""
    def broken(cfg):
        raise C.ConfigError("dataset 'x': the data went missing")

    monkeypatch.setattr(pretrain, "RunData", broken)
    before = folder_hashes(run_copy)
    assert (run_copy / rundir.LOCK_NAME).is_file()
    assert pretrain.main(["--out", str(run_copy), "--resume"]) == 2
    assert "went missing" in capsys.readouterr().err
    assert folder_hashes(run_copy) == before


def test_every_resumable_key_exists():
    keys = set(rundir._flat(C.to_dict(C.Config())))
    assert set(rundir.RESUMABLE) <= keys


def test_resume_with_max_steps_from_an_epoch_end_equals_the_uninterrupted_run(tmp_path):
    """With max_steps set, Lightning re-entered the finished epoch of an end-of-epoch checkpoint:
    one batch too many there and the run ended an epoch early (5 of 6 steps)."""
    import torch

    from tests.test_train_cli import STEPS_PER_EPOCH, Crash, CrashAt

    args = TINY + ["--epochs", "2", "--max-steps", "6"]
    full = pretrain.run(pretrain.resolve(args + ["--out", str(tmp_path / "full")]))
    cut = tmp_path / "cut"
    with pytest.raises(Crash):
        pretrain.run(pretrain.resolve(args + ["--out", str(cut)]),
                     extra_callbacks=[CrashAt(STEPS_PER_EPOCH + 2).callback])
    assert torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS_PER_EPOCH
    resumed = pretrain.run(pretrain.resolve(["--out", str(cut), "--resume"]))
    assert resumed["steps"] == full["steps"] == 6
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert [h["knn_fine"] for h in full["history"]] == [h["knn_fine"] for h in resumed["history"]]
