"""Run a function in N local processes (ranks of a gloo process group), started from a server that has torch imported.

`torch.multiprocessing.spawn` starts each rank as a fresh interpreter that imports torch again: about 2 s of CPU a
rank here, most of what a 2- or 4-rank test costs. A forkserver imports torch, torch.distributed and the modules
named below once; every rank is a fork of it (no Ray, no threads in it: it never ran a test).
"""

from __future__ import annotations

import multiprocessing

import torch.multiprocessing as mp

_PRELOAD = ["torch", "torch.distributed", "torch.nn.parallel", "ray_recall.objectives",
            "ray_recall.stages.train.comm", "ray_recall.stages.train.optim"]


def run_ranks(fn, world: int, *args) -> None:
    """fn(rank, *args) in `world` processes at once; raises if any of them fails (as `mp.spawn` does)."""
    multiprocessing.set_forkserver_preload(_PRELOAD)  # takes effect when the server starts: the first call
    mp.start_processes(fn, args=args, nprocs=world, start_method="forkserver")
