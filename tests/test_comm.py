"""train.grad_sync: the pairwise-exchange hook and DDP's all-reduce give the mean gradient, the same bits on every rank;
"auto" picks the exchange only where it applies, "exchange" where it cannot apply is an error, not a silent switch."""

import gc
import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ray_recall.errors import ConfigError
from ray_recall.stages.train.comm import SMALL_GRADIENT_BYTES, exchange_unsuitable, setup_grad_sync
from tests.ranks import run_ranks


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(24, 4))


def _inputs(rank: int) -> torch.Tensor:
    return torch.randint(0, 50, (16, 3), generator=torch.Generator().manual_seed(100 + rank))


def _grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _worker(rank: int, world: int, store_path: str, out_dir: str, grad_sync: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    try:
        # Expected: the mean over ranks of each rank's gradient, computed here without communication.
        reference = _model()
        for r in range(world):
            (reference(_inputs(r)).pow(2).mean() / world).backward()
        ddp = nn.parallel.DistributedDataParallel(_model())
        line = setup_grad_sync(ddp, grad_sync)
        chosen = "pairwise exchange" in line
        big = nn.Linear(SMALL_GRADIENT_BYTES // 4, 1)  # 1 MiB + 4 bytes of gradient
        too_big = exchange_unsuitable(big)
        try:
            setup_grad_sync(nn.parallel.DistributedDataParallel(big), "exchange")
            refused = ""
        except ConfigError as e:
            refused = str(e)
        for _ in range(2):  # a second step: DDP rebuilds its buckets after the first
            ddp.zero_grad()
            ddp(_inputs(rank)).pow(2).mean().backward()
        got = _grads(ddp.module)
        every = [torch.empty_like(got) for _ in range(world)]
        dist.all_gather(every, got)
        torch.save({"got": got, "expected": _grads(reference), "every": every, "chosen": chosen,
                    "too_big": too_big, "refused": refused, "line": line},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        # DDP holds the process group: drop it first, or gloo may abort the process as it exits.
        del ddp
        gc.collect()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world, grad_sync, hook", [(2, "auto", True), (4, "exchange", True), (3, "auto", False),
                                                   (2, "allreduce", False)])
def test_grad_sync_averages_like_allreduce(world, grad_sync, hook, tmp_path):
    """auto: 2 and 4 ranks use the exchange, 3 (not a power of two) DDP's all-reduce; allreduce never the hook.
    Either way every rank ends with the mean gradient."""
    run_ranks(_worker, world, world, str(tmp_path / "store"), str(tmp_path), grad_sync)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for res in results:
        assert res["chosen"] == hook, res["line"]
        assert ("not a power of two" in res["line"]) == (world == 3)
        if world != 3:
            assert "more than one DDP bucket" in res["too_big"]  # beyond one bucket: DDP's overlapped all-reduce
            assert "train.grad_sync='exchange' cannot apply" in res["refused"]
        torch.testing.assert_close(res["got"], res["expected"], rtol=1e-5, atol=1e-7)
        for other in res["every"]:
            assert torch.equal(other, res["every"][0])  # every rank holds the same bits: parameters stay in step


def test_exchange_hook_needs_a_process_group():
    assert exchange_unsuitable(_model()) == "a single worker"  # a single process: nothing to sync
    assert setup_grad_sync(_model(), "exchange") == ""
