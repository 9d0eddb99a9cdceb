"""The DDP gradient hook for small CPU models: the same mean as an all-reduce, the same bits on every rank."""

import gc
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ray_recall.train.comm import SMALL_GRADIENT_BYTES, exchange_allreduce_hook, use_exchange_allreduce


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(24, 4))


def _inputs(rank: int) -> torch.Tensor:
    return torch.randint(0, 50, (16, 3), generator=torch.Generator().manual_seed(100 + rank))


def _grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _worker(rank: int, world: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    try:
        # Expected: the mean over ranks of each rank's gradient, computed here without communication.
        reference = _model()
        for r in range(world):
            (reference(_inputs(r)).pow(2).mean() / world).backward()
        ddp = nn.parallel.DistributedDataParallel(_model())
        chosen = use_exchange_allreduce(ddp)
        if chosen:
            ddp.register_comm_hook(None, exchange_allreduce_hook)
        too_big = use_exchange_allreduce(nn.Linear(SMALL_GRADIENT_BYTES // 4, 1))  # 1 MiB + 4 bytes of gradient
        for _ in range(2):  # a second step: DDP rebuilds its buckets after the first
            ddp.zero_grad()
            ddp(_inputs(rank)).pow(2).mean().backward()
        got = _grads(ddp.module)
        every = [torch.empty_like(got) for _ in range(world)]
        dist.all_gather(every, got)
        torch.save({"got": got, "expected": _grads(reference), "every": every, "chosen": chosen,
                    "too_big": too_big},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        # DDP holds the process group: drop it first, or gloo may abort the process as it exits.
        del ddp
        gc.collect()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3, 4])
def test_exchange_hook_averages_like_allreduce(world, tmp_path):
    """2 and 4 ranks use the hook, 3 (not a power of two) DDP's all-reduce; either way the mean gradient."""
    mp.spawn(_worker, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for res in results:
        assert res["chosen"] == (world != 3)
        assert not res["too_big"]  # gradients beyond one bucket keep DDP's overlapped all-reduce
        torch.testing.assert_close(res["got"], res["expected"], rtol=1e-5, atol=1e-7)
        for other in res["every"]:
            assert torch.equal(other, res["every"][0])  # every rank holds the same bits: parameters stay in step


def test_exchange_hook_needs_a_process_group():
    assert not use_exchange_allreduce(_model())  # a single process: nothing to sync
