"""Shared negatives (train.shared_negatives): one draw per batch, a row's own items masked instead of redrawn.

The builder's pools and flags against the rows' train parts; the loss against the per-row path it
shortcuts (the pool repeated on every row), with and without masked candidates; the config's guard.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_recall import batch as B
from ray_recall.config import TrainConfig
from ray_recall.negatives import NegativeSampler
from ray_recall.stages.train.batches import SequenceBatchBuilder, split_batches
from ray_recall.stages.train.step import ItemTables, batch_loss
from tests.test_models import NUM_ITEMS, make_model, user_batch
from tests.test_sequence_training import SEQS, USERS, _rows_table, _window

N = 6


@pytest.mark.parametrize("targets", ["all_positions", "per_prefix"])
def test_a_chunk_draws_one_pool_per_batch_and_flags_each_rows_own_items(targets):
    sampler = NegativeSampler(np.ones(41), "uniform")  # 40 items: the users' own items are drawn often
    out = SequenceBatchBuilder(sampler, 4, N, seed=0, epoch=0, targets=targets, shared_batches=3)(_rows_table(SEQS, USERS))
    examples = len(out[B.USER])
    assert B.NEG not in out and out[B.NEG_POOL].shape == (-(-examples // 3), N)
    own = {u: set(s[:-2]) for u, s in zip(USERS, SEQS)}  # train parts only: validation and test items may be drawn
    want = torch.tensor([[int(item) in own[int(u)] for item in out[B.NEG_POOL][r // 3]]
                         for r, u in enumerate(out[B.USER])])
    assert torch.equal(out[B.NEG_SEEN], want) and want.any() and not want.all()
    batches = list(split_batches(out, 3))
    assert len(batches) == len(out[B.NEG_POOL]) and sum(len(b[B.USER]) for b in batches) == examples
    for i, batch in enumerate(batches):
        assert B.NEG_POOL not in batch and torch.equal(batch[B.NEG], out[B.NEG_POOL][i:i + 1])
        assert torch.equal(batch[B.NEG_SEEN], out[B.NEG_SEEN][3 * i:3 * i + 3])


def _shared(batch: dict, pool: torch.Tensor, seen: torch.Tensor) -> dict:
    return {**batch, B.NEG: pool[None], B.NEG_SEEN: seen}


def _repeated(batch: dict, pool: torch.Tensor) -> dict:
    return {**batch, B.NEG: pool.expand(len(batch[B.USER]), -1).clone()}


def _per_prefix(seed: int = 0) -> dict:
    batch = user_batch(seed)
    g = torch.Generator().manual_seed(seed + 1)
    return {**batch, B.POS: torch.randint(1, NUM_ITEMS + 1, (len(batch[B.USER]),), generator=g)}


CASES = [("sasrec", _window), ("hstu", _window), ("dssm", _per_prefix), ("mind", _per_prefix)]


@pytest.mark.parametrize("name,make_batch", CASES, ids=[c[0] for c in CASES])
def test_the_shared_loss_is_the_per_row_loss_with_the_pool_on_every_row(name, make_batch):
    batch = make_batch()
    pool = torch.randint(1, NUM_ITEMS + 1, (N,), generator=torch.Generator().manual_seed(3))
    tables = ItemTables.build(NegativeSampler(np.arange(NUM_ITEMS + 1.0), "word2vec").probs, np.ones(NUM_ITEMS + 1))
    tc = TrainConfig(num_negatives=N, shared_negatives=True, temperature=0.2)
    grads = []
    for b in (_shared(batch, pool, torch.zeros(len(batch[B.USER]), N, dtype=torch.bool)), _repeated(batch, pool)):
        model = make_model(name).eval()  # no dropout: the two paths see the same network
        loss, targets = batch_loss(model, b, tc, tables)
        loss.backward()
        grads.append((loss.detach(), targets, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (shared, n1, g1), (per_row, n2, g2) = grads
    torch.testing.assert_close(shared, per_row, rtol=1e-6, atol=1e-6)
    assert n1 == n2 > 0 and len(g1) == len(g2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,make_batch", CASES[:1] + CASES[2:3], ids=["sasrec", "dssm"])
def test_a_masked_candidate_is_as_if_it_had_not_been_drawn(name, make_batch):
    batch = make_batch()
    pool = torch.randint(1, NUM_ITEMS + 1, (N,), generator=torch.Generator().manual_seed(4))
    rows = len(batch[B.USER])
    seen = torch.zeros(rows, N, dtype=torch.bool)
    seen[torch.arange(rows), torch.arange(rows) % N] = True  # a different candidate masked on each row
    tables = ItemTables.build(np.full(NUM_ITEMS + 1, 1.0 / NUM_ITEMS), np.ones(NUM_ITEMS + 1))
    tc = TrainConfig(num_negatives=N, shared_negatives=True, logq_correction=False)  # logQ depends on N
    model = make_model(name).eval()
    loss, targets = batch_loss(model, _shared(batch, pool, seen), tc, tables)
    total, count = 0.0, 0
    for r in range(rows):  # each row alone against the per-row path, its masked candidate left out
        one = {k: v[r:r + 1] for k, v in batch.items()}
        kept = pool[~seen[r]]
        row_loss, row_targets = batch_loss(model, _repeated(one, kept), TrainConfig(num_negatives=N, logq_correction=False), tables)
        total, count = total + row_loss.item() * row_targets, count + row_targets
    assert targets == count
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("overrides", [{"mode": "pointwise"}, {"mode": "pairwise"}, {"softmax": "full"},
                                       {"num_negatives": 0, "in_batch_negatives": True}])
def test_shared_negatives_are_refused_where_there_is_no_sampled_softmax(overrides):
    with pytest.raises(ValueError, match="shared_negatives"):
        TrainConfig(shared_negatives=True, **overrides)
