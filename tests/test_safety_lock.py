"""One run per run folder: an flock on OUT/run.lock, held by a real second process here; the OS
drops it when that process ends, even by kill -9. --out that is a file or cannot be created is
refused before any data is loaded."""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_safety_checkpoint import folder_hashes
from tests.test_train_cli import TINY
from train import config as C
from train import pretrain, rundir

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys; from train.rundir import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); sys.stdin.read()")


def hold_lock(out: Path) -> subprocess.Popen:
    """Another process that locks `out` (as a running train.pretrain does) until stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def no_data(*args, **kwargs):
    raise AssertionError("data was loaded although the run had to be refused first")


def test_second_run_is_refused_at_once_and_kill_9_frees_the_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    holder = hold_lock(out)
    try:
        with monkeypatch.context() as m:
            m.setattr(pretrain, "RunData", no_data)  # refused before any data is loaded
            before = folder_hashes(out)
            assert pretrain.main(TINY + ["--out", str(out)]) == 2
            err = capsys.readouterr().err
            assert f"{out} is in use by another run" in err
            assert f"pid {holder.pid} on host {socket.gethostname()}, started " in err
            assert folder_hashes(out) == before  # the holder's lock file is untouched
        os.kill(holder.pid, signal.SIGKILL)
    finally:
        holder.kill()
        holder.wait()
    # the OS dropped the dead process's flock: a run goes ahead, holds the lock, releases it at exit
    assert pretrain.main(TINY + ["--epochs", "1", "--max-steps", "1", "--out", str(out)]) == 0
    assert f'"pid": {os.getpid()}' in (out / rundir.LOCK_NAME).read_text()
    rundir.RunLock(out).acquire().release()


def test_a_crashed_run_releases_the_lock(tmp_path):
    from tests.test_train_cli import Crash, CrashAt

    out = tmp_path / "run"
    with pytest.raises(Crash):
        pretrain.run(pretrain.resolve(TINY + ["--epochs", "1", "--out", str(out)]),
                     extra_callbacks=[CrashAt(1).callback])
    rundir.RunLock(out).acquire().release()


def test_out_that_is_a_file_is_refused_before_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pretrain, "RunData", no_data)
    path = tmp_path / "a-file"
    path.write_text("mine")
    assert pretrain.main(TINY + ["--out", str(path)]) == 2
    assert f"--out {path} is a file" in capsys.readouterr().err
    assert pretrain.main(TINY + ["--out", str(path / "run")]) == 2
    assert f"{path} is a file, not a folder" in capsys.readouterr().err
    assert path.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_out_that_cannot_be_created_is_refused_before_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pretrain, "RunData", no_data)
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert pretrain.main(TINY + ["--out", str(locked / "run")]) == 2
        assert f"no write permission on {locked}" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_a_refused_fresh_run_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """The lock is taken before the data is loaded; when the data then fails, the folder that the
    run created is removed again."""
    def broken(cfg):
        raise C.ConfigError("dataset 'x': no such files")

    monkeypatch.setattr(pretrain, "RunData", broken)
    out = tmp_path / "new" / "run"
    assert pretrain.main(TINY + ["--out", str(out)]) == 2
    assert "no such files" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
