"""Training in the calling process, without Ray: the same batches, objective and optimizer as the Ray Train loop.

For tests, notebooks and debugging on small data. It reads what `train.loop` reads from the run
directory (schema, sequences, sampler counts, data/train samples), builds batches with the same
`TrainBatchBuilder` and takes the loss from the same `train_step_loss`; only the data iteration
differs (an in-memory numpy shuffle per epoch instead of a streamed Ray Data shard).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ray_recall import batch as B
from ray_recall.config import PipelineConfig
from ray_recall.rundir import RunDir
from ray_recall.stages.train.batches import TrainBatchBuilder, chunk_size, split_batches
from ray_recall.stages.train.loop import optimizer_step, setup_training


def fit_in_process(cfg: PipelineConfig, run: RunDir, epochs: int | None = None, log=None) -> torch.nn.Module:
    """Train `cfg.model` on <run>/data/train for `epochs` (default cfg.train.epochs); returns the model in eval mode.

    Seeded by cfg.train.seed (init, shuffling, negatives), so a rerun gives the same model. `log`, if
    given, receives one line per epoch. Nothing is written to the run directory.
    """
    tc = cfg.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)

    schema, seqs, sampler, model, optimizer = setup_training(cfg, run)

    train = run.read_split("train")
    samples = {c: train[c].to_numpy() for c in ("user_idx", "pos", "target")}
    n = len(train)
    for epoch in range(tc.epochs if epochs is None else epochs):
        t0 = time.perf_counter()
        model.train()
        builder = TrainBatchBuilder(seqs, sampler, schema.max_len, tc.num_negatives, tc.seed, epoch)
        order = rng.permutation(n)
        loss_sum = 0.0
        chunk = chunk_size(tc.batch_size)
        for i in range(0, n, chunk):
            idx = order[i:i + chunk]
            for batch in split_batches(builder({k: v[idx] for k, v in samples.items()}), tc.batch_size):
                loss_sum += optimizer_step(model, optimizer, batch, tc) * len(batch[B.USER])
        if log is not None:
            log(f"[train/local] epoch {epoch + 1}: loss {loss_sum / max(n, 1):.4f} ({time.perf_counter() - t0:.2f}s)")
    return model.eval()
