"""Training in the calling process, without Ray: the same batches, objective and optimizer as the Ray Train loop.

For tests, notebooks, tuning and debugging on small data. It builds the same `Trainer` as the Ray
Train loop (model, optimizer, item tables), the same batches from the same sequence rows and the
same loss; only the data iteration differs (an in-memory shuffle of the rows per epoch instead of a
streamed Ray Data shard).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ray_recall.config import PipelineConfig
from ray_recall.rundir import RunDir
from ray_recall.stages.train.batches import split_batches
from ray_recall.stages.train.loop import Trainer


def fit_in_process(cfg: PipelineConfig, run: RunDir, epochs: int | None = None, log=None,
                   validate_each_epoch=None) -> torch.nn.Module:
    """Train `cfg.model` on <run>/data/sequences for `epochs` (default cfg.train.epochs); returns the model in eval mode.

    Seeded by cfg.train.seed (init, shuffling, negatives), so a rerun gives the same model. `log`, if
    given, receives one line per epoch; `validate_each_epoch(model) -> str`, if given, is called after each
    epoch and its text logged. Nothing is written to the run directory.
    """
    tc = cfg.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)

    trainer = Trainer(cfg, run)
    model = trainer.model
    rows = run.read_parquet("data", "sequences", columns=["user_idx", "items", "times", "length"])
    for epoch in range(tc.epochs if epochs is None else epochs):
        t0 = time.perf_counter()
        model.train()
        builder = trainer.builder(epoch)
        order = rng.permutation(rows.num_rows)
        loss_sum, targets_sum = 0.0, 0
        for i in range(0, rows.num_rows, trainer.rows_per_chunk):
            chunk = builder(rows.take(order[i:i + trainer.rows_per_chunk]))
            for batch in split_batches(chunk, tc.batch_size):
                loss, targets = trainer.step(model, batch)
                loss_sum, targets_sum = loss_sum + loss * targets, targets_sum + targets
        if log is not None:
            extra = f"; {validate_each_epoch(model)}" if validate_each_epoch is not None else ""
            log(f"[train/local] epoch {epoch + 1}: loss {loss_sum / max(targets_sum, 1):.4f}, {targets_sum:,} targets "
                f"({time.perf_counter() - t0:.2f}s){extra}")
    return model.eval()
