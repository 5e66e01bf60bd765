"""The run folder's safety rules: safe checkpoint reads, resume checks, the out folder, the lock.

- Checkpoints are read with ``weights_only=True`` only: tensors and plain values, never arbitrary
  objects, so a crafted ``last.ckpt`` cannot run code (``read_checkpoint``).
- A resume may change only the keys in ``RESUMABLE``; any other difference from the run's saved
  config is refused, listing every differing key, before anything is written (``check_resume``).
- ``--out`` must be a folder that exists or can be created (``check_out``), checked before any
  data is loaded.
- ``RunLock``: an OS file lock (``flock``) on ``OUT/run.lock`` while a run uses the folder; the OS
  drops it when the process ends, also on ``kill -9``. A second run on the same folder is refused
  at once, naming the process that holds it (pid, host, start time written into the lock file).
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from train import config as C

# The config keys a resume may change: how long to train, how often to log, checkpoint and
# evaluate, and on how many processes. Everything else changes what is computed and is refused.
RESUMABLE = (
    "train.epochs", "train.max_steps", "train.devices", "train.num_nodes", "train.log_every_steps",
    "train.progress_bar", "train.checkpoint_every_steps", "eval.every_epochs", "data.num_workers",
    "train.out", "train.resume",
)
LOCK_NAME = "run.lock"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: C.Config, requested: C.Config) -> list[tuple[str, object, object]]:
    """(key, saved value, requested value) for every key that differs and may not change on resume."""
    a, b = _flat(C.to_dict(saved)), _flat(C.to_dict(requested))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in RESUMABLE]


def _saved_config(data: dict, where: str) -> C.Config:
    try:
        return C.from_dict(data)
    except ValueError as err:
        raise C.ConfigError(f"{where} is not a valid run config ({err}); repair it or start a new run "
                            "with another --out") from err


def check_resume(cfg: C.Config, out: Path, ckpt: dict | None = None) -> None:
    """Refuse a resume whose config differs from the run's beyond RESUMABLE (reads only).

    Compared with OUT/config.yaml and, when given, the config stored in the checkpoint (what the
    run actually trained with); one ConfigError lists every differing key with both values.
    """
    path = out / "config.yaml"
    saved = [("", _saved_config(C.load_yaml(path), str(path)))]
    if ckpt is not None and isinstance(ckpt.get("hexfast"), dict) and "config" in ckpt["hexfast"]:
        ckpt_path = out / "checkpoints" / "last.ckpt"
        saved.append((f" (stored in {ckpt_path})", _saved_config(ckpt["hexfast"]["config"],
                                                                 f"the config stored in {ckpt_path}")))
    seen, lines = set(), []
    for label, old in saved:
        for key, was, now in config_differences(old, cfg):
            if (key, repr(was)) not in seen:
                seen.add((key, repr(was)))
                lines.append(f"  {key}: run has {was!r}{label}, requested {now!r}")
    if lines:
        raise C.ConfigError(
            f"--resume: the requested config differs from the run in {out} in key(s) that may not "
            f"change on resume:\n" + "\n".join(lines) + "\nOn resume only these may change: "
            + ", ".join(k for k in RESUMABLE if k not in ("train.out", "train.resume"))
            + ". Start a new run with another --out to train with different settings.")


def read_checkpoint(path: Path, purpose: str) -> dict:
    """The dict in checkpoint `path`, read with weights_only=True (tensors and plain values only).

    `purpose` ends the error messages: what the user can do instead. Raises ConfigError naming the
    file when it is empty, truncated, corrupt, holds objects other than tensors and plain values
    (unpickling those could run code), or is not a train.pretrain checkpoint.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise C.ConfigError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise C.ConfigError(f"checkpoint {path} is empty (0 bytes; a save was interrupted?); {purpose}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # no object refused: a damaged or foreign stream
            raise C.ConfigError(f"checkpoint {path} cannot be read: it is truncated, corrupt or not a "
                                f"checkpoint (UnpicklingError: {_first_line(err)}); {purpose}") from err
        raise C.ConfigError(
            f"checkpoint {path} holds objects other than tensors and plain values; refusing to load it "
            f"because unpickling it could run arbitrary code ({_refused_global(err)}); {purpose}") from err
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... for bad files
        raise C.ConfigError(
            f"checkpoint {path} cannot be read: it is truncated, corrupt or not a checkpoint "
            f"({type(err).__name__}: {_first_line(err)}); {purpose}") from err
    if not isinstance(ckpt, dict) or "global_step" not in ckpt or "state_dict" not in ckpt:
        raise C.ConfigError(f"checkpoint {path} is not a train.pretrain checkpoint (no global_step / state_dict); "
                            f"{purpose}")
    extra = ckpt.get("hexfast")
    if not isinstance(extra, dict) or not isinstance(extra.get("config"), dict):
        raise C.ConfigError(f"checkpoint {path} is not a train.pretrain checkpoint (no 'hexfast' config entry); "
                            f"{purpose}")
    return ckpt


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else ""


def _refused_global(err: Exception) -> str:
    """What torch's weights-only refusal names, e.g. 'it references io.open'."""
    import re

    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    return f"it references {found.group(1)}" if found else _first_line(err)


def complete_saved_epoch(checkpoint: dict) -> None:
    """Mark an epoch whose last batch had run when the checkpoint was saved as completed (in memory).

    The checkpoint is written in on_train_epoch_end, before Lightning counts the epoch as completed.
    Lightning fixes that up itself on resume, except when max_steps is set ("iteration-based"
    training): then it re-enters the finished epoch, runs one batch too many in it and ends the run
    an epoch early. Completing the epoch here makes both cases resume at the next epoch's start.
    """
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not fit or "epoch_progress" not in fit or "epoch_loop.batch_progress" not in fit:
        return
    epochs, batches = fit["epoch_progress"], fit["epoch_loop.batch_progress"]
    cur = epochs["current"]
    if batches.get("is_last_batch") and cur["ready"] == cur["started"] == cur["processed"] == cur["completed"] + 1:
        for part in ("total", "current"):
            epochs[part]["completed"] = epochs[part]["processed"]
        batches["current"] = {k: 0 for k in batches["current"]}
        batches["is_last_batch"] = False


def resume_callback():
    """A Lightning callback applying complete_saved_epoch to the checkpoint a run resumes from."""
    from lightning.pytorch.callbacks import Callback

    class CompleteSavedEpoch(Callback):
        def on_load_checkpoint(self, trainer, pl_module, checkpoint):
            complete_saved_epoch(checkpoint)

    return CompleteSavedEpoch()


def check_out(out: Path) -> None:
    """Refuse an --out that is a file or cannot be created, without creating anything."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise C.ConfigError(f"--out {out} is a file, not a folder; choose another --out")
    probe = out
    while not probe.exists():  # the nearest existing ancestor must be a writable folder
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise C.ConfigError(f"--out {out} cannot be created: {probe} is a file, not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise C.ConfigError(f"--out {out} cannot be {'written' if probe == out else 'created'}: "
                            f"no write permission on {probe}")


class RunLock:
    """An exclusive flock on OUT/run.lock; the holder's pid, host and start time are written into it.

    `acquire` creates OUT (and missing parents) when needed; `abandon` undoes that for a run that
    fails before it has written anything, so a refused command leaves no empty run folder behind.
    """

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self._fd: int | None = None
        self._created: list[Path] = []   # folders this lock created, deepest first
        self._previous: bytes | None = None  # the lock file's content before (None: it did not exist)

    def acquire(self) -> "RunLock":
        import fcntl

        missing, p = [], self.out
        while not p.exists() and p.parent != p:
            missing.append(p)
            p = p.parent
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise C.ConfigError(f"--out {self.out} cannot be created: {err}") from err
        self._created = missing
        while True:
            existed = self.path.is_file()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not truncated before it is held
            except OSError as err:
                self._remove_created()
                raise C.ConfigError(f"cannot create the run lock {self.path}: {err}") from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise C.ConfigError(f"{self.out} is in use by another run ({holder}); wait for it to finish "
                                    "or choose another --out") from None
            try:  # the file may have been replaced between open and flock: then lock the new one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._previous = os.pread(fd, 1 << 16, 0) if existed else None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def abandon(self) -> None:
        """Release, leaving the folder as it was: the lock file's old content restored, or the
        file and the folders `acquire` created removed (for a run that failed before writing)."""
        if self._fd is not None:
            try:
                if self._previous is None or self._created:
                    self.path.unlink()  # while still held, so no other process can hold this file
                else:
                    os.ftruncate(self._fd, 0)
                    os.pwrite(self._fd, self._previous, 0)
            except OSError:
                pass
        self.release()
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its pid"
