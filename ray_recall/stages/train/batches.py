"""Building a training batch from (user, pos, target) samples: history windows and negatives, cut at batch time."""

from __future__ import annotations

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from ray_recall import batch as B
from ray_recall.batch import SequenceTable
from ray_recall.negatives import NegativeSampler


CHUNK_SAMPLES = 4096  # samples built at a time, rounded down to whole batches (at least one)


def chunk_size(batch_size: int) -> int:
    """Samples per `TrainBatchBuilder` call for steps of `batch_size`: a whole number of batches."""
    return batch_size * max(1, CHUNK_SAMPLES // batch_size)


def split_batches(chunk: dict[str, torch.Tensor], batch_size: int):
    """A built chunk -> its consecutive batches of `batch_size` (views; the last may be shorter)."""
    for start in range(0, len(chunk[B.USER]), batch_size):
        yield {k: v[start:start + batch_size] for k, v in chunk.items()}


class TrainBatchBuilder(NumpyBatchCollateFn):
    """collate_fn for `iter_torch_batches`: samples -> a full training batch (see ray_recall.batch).

    Trainers call it on a chunk of several steps' samples (`chunk_size`) and cut the result into
    batches (`split_batches`): one vectorized call, and one Ray Data batch, per chunk instead of per step.
    Negatives are drawn fresh for every epoch, seeded by (seed, epoch, the chunk's first sample):
    the same epoch of the same run draws the same negatives, whatever the worker count.
    """

    def __init__(self, seqs: SequenceTable, sampler: NegativeSampler, max_len: int, num_negatives: int, seed: int, epoch: int):
        self.seqs, self.sampler = seqs, sampler
        self.max_len, self.num_negatives = max_len, num_negatives
        self.seed, self.epoch = seed, epoch

    def __call__(self, samples: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        users = samples["user_idx"].astype(np.int64)
        pos = samples["pos"].astype(np.int64)
        target = samples["target"].astype(np.int64)
        rng = np.random.default_rng([self.seed, self.epoch, int(users[0]), int(pos[0]), len(users)])
        hist, hist_len = self.seqs.windows(users, pos, self.max_len)
        neg = self.sampler.sample(users, self.num_negatives, rng) if self.num_negatives else np.zeros((len(users), 0), np.int64)
        return {
            B.USER: torch.from_numpy(users),
            B.HIST: torch.from_numpy(hist),
            B.HIST_LEN: torch.from_numpy(hist_len),
            B.POS: torch.from_numpy(target),
            B.NEG: torch.from_numpy(neg),
            B.POS_LOGQ: torch.from_numpy(self.sampler.log_probs[target].astype(np.float32)),
        }
