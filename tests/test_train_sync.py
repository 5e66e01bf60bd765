"""No host synchronisation in a training step, outside the logging cadence.

A GPU step that reads a value on the host (`.item()`, `if t:`, a boolean index, a device-to-host
copy) waits for the device, so the host can no longer queue the next step ahead of it. These tests
run real Lightning training (the CLI's `train.pretrain.run`, torchvision loader in-process, progress
bar on) on the CPU under `train.hostsync.HostSyncCounter`, which records such operations on device
data, and require none in the steps where Lightning does not log: SimCLR, and MoCo v2 (EMA target,
key queues, HEX on similarity rows). Every method (and the other loss paths: NNCLR's own
contrastive loss, the superclass rule) then runs the same step by hand -- loader batch, loss,
backward, its configured optimiser (LARS / SGD), EMA update -- under the counter: no sync at all.

The HEX loss validates tensor *values* (finite embeddings, index ranges) for CPU tensors always,
and for CUDA tensors only in its "full" validation mode (`hexfast.hex_loss.set_validation`): those
checks are host reads by design. A GPU run uses the default "cheap" mode, so the step is measured
here as the GPU runs it: with the value checks off, as `hexfast.validate.values_checked` answers for
CUDA tensors in that mode.
"""
import collections

import lightning as L
import pytest
import torch

import hexfast.validate as validate_module
from train import pretrain
from train.config import METHOD_NAMES
from train.data import augment_preset, load_dataset, make_pretrain_loader
from train.methods import METHODS
from train.module import SSLModule
from train.hostsync import HostSyncCounter
from train.testing import TINY_METHOD, tiny_config

LOG_EVERY = 2
STEPS_PER_EPOCH = 3   # 96 images at batch 32; two epochs: an epoch boundary and its evaluation included
EPOCHS = 2
LIGHTNING_CASES = [("simclr", "adaptive"), ("mocov2", "adaptive")]
STEP_CASES = [(m, "adaptive") for m in METHOD_NAMES] + [("nnclr", "none"), ("mocov2", "superclass")]


class _TagSteps(L.Callback):
    """Labels every recorded sync with the phase of training it happened in."""

    def __init__(self, counter: HostSyncCounter):
        self.counter = counter

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.counter.tag = ("step", trainer.global_step)  # until the next batch: data fetch included

    def on_train_epoch_end(self, trainer, pl_module):
        self.counter.tag = ("epoch_end", trainer.global_step)  # evaluation, checkpoint

    def on_train_epoch_start(self, trainer, pl_module):
        self.counter.tag = ("epoch_start", trainer.global_step)


def _run(tmp_path, method, mode, monkeypatch):
    monkeypatch.setattr(validate_module, "values_checked", lambda t: False)  # see the module docstring
    monkeypatch.setattr("train.diagnostics.finish_run", lambda *a, **k: {})  # plots: not a step, and slow
    argv = ["--method", method, "--hex", mode, "--backbone", "tiny", "--batch-size", "32", "--kernel", "torch",
            "--loader", "torchvision", "--epochs", str(EPOCHS), "--out", str(tmp_path / "run"),
            "model.tiny_width=4", "data.train_subset=96", "data.eval_subset=32", "data.num_workers=0",
            "train.progress_bar=true", "hex.warmup_epochs=0", f"train.log_every_steps={LOG_EVERY}",
            "train.channels_last=false"]
    argv += [f"{method}.{k}={v}" for k, v in TINY_METHOD[method].items()]
    counter = HostSyncCounter()
    with counter:
        pretrain.run(pretrain.resolve(argv), extra_callbacks=[_TagSteps(counter)])
    return counter.syncs


@pytest.mark.parametrize("method,mode", LIGHTNING_CASES)
def test_no_host_sync_outside_the_logging_cadence(tmp_path, monkeypatch, method, mode):
    syncs = _run(tmp_path, method, mode, monkeypatch)
    steps = STEPS_PER_EPOCH * EPOCHS
    cadence = {k for k in range(steps) if (k + 1) % LOG_EVERY == 0}
    per_step = collections.Counter(s.tag[1] for s in syncs if s.tag and s.tag[0] == "step")
    bad = [s for s in syncs if s.tag and s.tag[0] == "step" and s.tag[1] not in cadence]
    assert not bad, "host syncs in non-logging steps:\n" + "\n".join(
        f"step {s.tag[1]}: {s.op} ({s.why}) at {s.where}" for s in bad[:20])
    # the counter does see the logging: Lightning turns the logged tensors into numbers at the cadence
    assert all(per_step[k] > 0 for k in cadence), per_step


@pytest.mark.parametrize("method,mode", STEP_CASES)
def test_training_step_of_every_method_is_sync_free(monkeypatch, method, mode):
    monkeypatch.setattr(validate_module, "values_checked", lambda t: False)  # see the module docstring
    torch.manual_seed(0)
    ds = load_dataset("fashion-mnist-small").subset(torch.arange(64).numpy())
    cfg = tiny_config(method, mode)
    module = SSLModule(cfg, num_classes=ds.num_classes, num_coarse=ds.num_coarse, image_size=ds.image_size,
                       steps_per_epoch=4)
    opt = module.configure_optimizers()["optimizer"]
    loader = make_pretrain_loader(ds, augment_preset(METHODS[method].augment, ds.image_size), batch_size=16,
                                  loader="torchvision", num_workers=0)
    batches = iter(loader)
    batch = next(batches)  # starting the DataLoader draws its worker seed with .item(): once per epoch
    with HostSyncCounter() as counter:
        for step in range(2):
            if step:
                batch = next(batches)
            loss, logs = module.compute_loss(batch, epoch=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            module.method.after_optimizer_step(step + 1, 4, module.backbone)
    assert not counter.syncs, "\n".join(f"{s.op} ({s.why}) at {s.where}" for s in counter.syncs)
    assert torch.isfinite(loss)  # read after the counted steps


def test_counter_sees_host_reads_of_device_data_only():
    x = torch.randn(8)
    with HostSyncCounter() as c:
        x.sum().item()
        bool(x[0] > 0)
        x[x > 0]
        x.nonzero()
        x.tolist()
        torch.unique(x)
        (x * 2).repeat_interleave(torch.full((8,), 2))
        x.repeat_interleave(torch.full((8,), 2), output_size=16)  # size given: no sync
        torch.tensor(0.5).item()                                   # a host constant: no sync
        torch.where(x > 0, x, 0.0).sum(0)                          # no sync
    ops = [s.op for s in c.syncs]
    assert ops == ["aten._local_scalar_dense.default", "aten._local_scalar_dense.default", "aten.index.Tensor",
                   "aten.nonzero.default", "Tensor.tolist", "aten._unique2.default", "aten.repeat_interleave.Tensor"]
    assert torch.Tensor.tolist is not None and "method" not in torch.Tensor.tolist.__qualname__  # restored
