"""Two processes (gloo, CPU) on halves of a batch == one process on the whole batch, every method.

For each method and HEX mode the worker runs two optimizer steps of the full trainer step
(backbone, method, probes): the loss averaged over processes and the gradients averaged over
processes (what DDP applies) must equal the single-process loss and gradients, at both steps (the
second step checks that queues and EMA targets took the keys of both processes in rank order).
One spawn runs every case, which keeps the test to a few seconds.
"""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from train import distributed as D
from train.module import SSLModule
from train.testing import fake_batch, tiny_config

CASES = [(m, h) for m in ("simclr", "nnclr", "all4one", "barlow", "byol", "mocov2", "vicreg", "simsiam")
         for h in ("none", "adaptive")]
CASES += [("simclr", "fixed"), ("simclr", "superclass"), ("nnclr", "superclass"), ("mocov2", "fixed"),
          ("mocov2", "superclass")]
GLOBAL_BATCH = 16
STEPS = 2


def run_cases(rank: int, world: int) -> dict:
    """{case: [(loss, {param: grad}) per step]} with losses/grads averaged over processes."""
    torch.set_num_threads(1)
    results = {}
    for method, mode in CASES:
        torch.manual_seed(0)
        # q = 0.9: at 2B = 32 rows q = 0.99 picks each row's maximum (its self entry, ~1), which puts
        # eps within rounding of the similarity of duplicated nearest neighbours (s = 1): masks would
        # then depend on float summation order, not on the distributed code.
        cfg = tiny_config(method, mode, hex={"quantile": 0.9})
        module = SSLModule(cfg, num_classes=4, num_coarse=2, image_size=12, steps_per_epoch=4)
        if world > 1:
            D.convert_batchnorm(module)
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        steps = []
        for step in range(STEPS):
            full = fake_batch(GLOBAL_BATCH, seed=step)
            n = GLOBAL_BATCH // world
            local = {k: ([x[rank * n:(rank + 1) * n] for x in v] if k == "views" else v[rank * n:(rank + 1) * n])
                     for k, v in full.items()}
            module.zero_grad()
            loss, _ = module.compute_loss(local, epoch=1)
            loss.backward()
            loss = loss.detach()
            grads = {name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for name, p in params}
            if world > 1:  # what DDP does: average the gradients; the logged loss is the mean too
                dist.all_reduce(loss)
                loss /= world
                for g in grads.values():
                    dist.all_reduce(g)
                    g /= world
            steps.append((float(loss), grads))
            with torch.no_grad():
                for name, p in params:
                    p.sub_(0.1 * grads[name])
            module.method.after_optimizer_step(step + 1, STEPS, module.backbone)
        results[f"{method}/{mode}"] = steps
    return results


class _EvalData:
    """Stands in for train.pretrain.RunData: 37 train and 23 eval images (odd, so shards pad)."""

    def __init__(self):
        from train.data import ImageDataset

        rng = np.random.default_rng(0)

        def make(n):
            fine = rng.integers(0, 4, n)
            return ImageDataset(name="fake", images=rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8),
                                fine=fine, coarse=fine % 2, num_classes=4, num_coarse=2, image_size=12)

        self.train, self.eval = make(37), make(23)

    def eval_loaders(self, device, rank, world_size, max_bank):
        from train.data import make_eval_loader
        from train.pretrain import shard_dataset

        return (make_eval_loader(shard_dataset(self.train, rank, world_size, max_bank), batch_size=8),
                make_eval_loader(shard_dataset(self.eval, rank, world_size), batch_size=8))


def run_eval(world: int) -> dict:
    """kNN / probe metrics of a tiny module with features extracted in shards and gathered."""
    torch.manual_seed(0)
    cfg = tiny_config("simclr", "adaptive", eval={"knn_k": 3, "max_bank": 31})
    module = SSLModule(cfg, num_classes=4, num_coarse=2, image_size=12, steps_per_epoch=4, data=_EvalData())
    if world > 1:
        D.convert_batchnorm(module)
    return module.evaluate()


def _worker(rank: int, world: int, port: int, path: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = run_cases(rank, world)
        results["eval"] = run_eval(world)
        if rank == 0:
            torch.save(results, path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ddp") / "two.pt")
    mp.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    single = run_cases(0, 1)
    single["eval"] = run_eval(1)
    return single, torch.load(path)


def test_sharded_evaluation_equals_one_process(both):
    single, double = both
    assert set(single["eval"]) == {"knn_fine", "probe_fine", "knn_coarse", "probe_coarse"}
    for key, value in single["eval"].items():
        assert double["eval"][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("case", [f"{m}/{h}" for m, h in CASES])
def test_two_processes_equal_one(both, case):
    single, double = both
    for step, ((l1, g1), (l2, g2)) in enumerate(zip(single[case], double[case])):
        assert l2 == pytest.approx(l1, rel=1e-4, abs=1e-5), f"{case} step {step}: loss {l2} vs {l1}"
        for name in g1:
            # float32 sums in a different order (all-reduced BN statistics, split matmuls): the
            # absolute tolerance scales with the gradient's own size
            scale = float(g1[name].abs().max())
            torch.testing.assert_close(g2[name], g1[name], rtol=2e-3, atol=1e-5 + 3e-3 * scale,
                                       msg=lambda m: f"{case} step {step} grad {name}: {m}")


def test_convert_batchnorm_keeps_frozen_parameters_frozen():
    """EMA targets' BatchNorm parameters must stay frozen after conversion: a frozen parameter that
    requires grad but never gets one makes DDP wait for it (a crash on the second step)."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    frozen = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).requires_grad_(False)
    for module, expected in ((net, True), (frozen, False)):
        converted = D.convert_batchnorm(module)
        assert isinstance(converted[1], D.AllReduceBatchNorm)
        assert all(p.requires_grad == expected for p in converted.parameters())
