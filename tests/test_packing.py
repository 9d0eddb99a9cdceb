"""Packed all-position rows (train.pack): several windows laid one after another in a row, each attending only to
itself. Every window's states are its states alone; a batch keeps its windows; negatives avoid every owner's items."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from ray_recall import batch as B
from ray_recall.config import TrainConfig
from ray_recall.negatives import NegativeSampler
from ray_recall.stages.train.batches import SequenceBatchBuilder, pack_windows, split_batches
from ray_recall.stages.train.step import ItemTables, batch_loss
from tests.test_models import MAX_LEN, NUM_ITEMS, make_model

PACKABLE = ["sasrec", "hstu", "comirec"]


def test_pack_windows_fits_each_batch_into_few_rows_without_overlap():
    rng = np.random.default_rng(0)
    width, group = 10, 7
    lengths = np.where(rng.random(40) < 0.3, width, rng.integers(1, width, 40))
    row, offset, ends = pack_windows(lengths, width, group)
    assert len(ends) == -(-40 // group) and np.all(np.diff(np.r_[0, ends]) > 0)
    used = np.zeros((ends[-1], width), dtype=int)
    for w, (r, o, n) in enumerate(zip(row, offset, lengths)):
        batch = w // group
        assert (0 if batch == 0 else ends[batch - 1]) <= r < ends[batch]  # a window stays in its own batch's rows
        assert o + n <= width
        used[r, o:o + n] += 1
        if n == width:
            assert np.sum(row == r) == 1  # a full window fills a row alone
    assert used.max() == 1 and used.sum() == lengths.sum()  # every position once, no overlap
    for b in range(len(ends)):  # first-fit decreasing: no two of a batch's shared rows would fit in one
        lo = 0 if b == 0 else ends[b - 1]
        fill = sorted(used[r].sum() for r in range(lo, ends[b]) if used[r].sum() < width)
        assert len(fill) < 2 or fill[0] + fill[1] > width


def _windows(lengths, seed=0):
    """Unpacked windows [W, MAX_LEN] with increasing times, and their packed layout into rows of MAX_LEN."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    real = torch.arange(MAX_LEN)[None, :] < lengths[:, None]
    hist = torch.randint(1, NUM_ITEMS + 1, (len(lengths), MAX_LEN), generator=g) * real
    times = torch.cumsum(torch.randint(1, 100_000, (len(lengths), MAX_LEN), generator=g), 1).double() * real
    return {B.HIST: hist, B.HIST_LEN: lengths, B.HIST_TIME: times}


@pytest.mark.parametrize("name", PACKABLE)
def test_a_packed_window_has_the_states_it_has_alone(name):
    torch.manual_seed(0)
    model = make_model(name).eval()
    lengths = [3, MAX_LEN, 2, 1, 4]
    alone = _windows(lengths)
    row, offset, ends = pack_windows(np.array(lengths), MAX_LEN, len(lengths))
    R = int(ends[-1])
    assert R < len(lengths)  # something was packed
    packed = {B.HIST: torch.zeros(R, MAX_LEN, dtype=torch.long), B.HIST_TIME: torch.zeros(R, MAX_LEN, dtype=torch.float64),
              B.HIST_SEG: torch.full((R, MAX_LEN), -1), B.HIST_POS: torch.zeros(R, MAX_LEN, dtype=torch.long),
              B.HIST_LEN: torch.zeros(R, dtype=torch.long)}
    for w, (r, o, n) in enumerate(zip(row, offset, lengths)):
        packed[B.HIST][r, o:o + n] = alone[B.HIST][w, :n]
        packed[B.HIST_TIME][r, o:o + n] = alone[B.HIST_TIME][w, :n]
        packed[B.HIST_SEG][r, o:o + n] = w
        packed[B.HIST_POS][r, o:o + n] = torch.arange(n)
        packed[B.HIST_LEN][r] += n
    with torch.no_grad():
        want, got = model.encode_sequence(alone), model.encode_sequence(packed)
    for w, (r, o, n) in enumerate(zip(row, offset, lengths)):
        torch.testing.assert_close(got[r, o:o + n], want[w, :n], rtol=1e-5, atol=1e-5)


def _rows(num_users=30, seed=1, num_items=None):
    """Users of 4-29 items; with num_items, drawn from 1..num_items, else from a block of 30 ids of their own (an item
    then names its user)."""
    rng = np.random.default_rng(seed)
    seqs = [(rng.choice(np.arange(1, num_items + 1), size=n, replace=False) if num_items else
             1 + 30 * u + rng.permutation(30)[:n]).tolist() for u, n in enumerate(rng.integers(4, 30, num_users))]
    return pa.table({"user_idx": pa.array(np.arange(1, num_users + 1), pa.int64()),
                     "items": pa.array(seqs, pa.list_(pa.int32())),
                     "times": pa.array([[float(10 * t) for t in range(len(s))] for s in seqs], pa.list_(pa.float64())),
                     "length": pa.array([len(s) for s in seqs], pa.int32())}), seqs


def test_a_packed_batch_holds_the_same_windows_and_no_owners_item_among_its_negatives():
    rows, seqs = _rows()
    sampler = NegativeSampler(np.r_[0, np.ones(900)], "uniform")
    L, batch_size, N = 8, 6, 300
    kw = dict(seed=0, epoch=0, targets="all_positions", window="tile")
    plain = SequenceBatchBuilder(sampler, L, N, **kw)(rows)
    packed = SequenceBatchBuilder(sampler, L, N, pack_batches=batch_size, **kw)(rows)
    plain_batches, packed_batches = list(split_batches(plain, batch_size)), list(split_batches(packed, batch_size))
    assert len(plain_batches) == len(packed_batches)
    train_part = {u + 1: s[:-2] for u, s in enumerate(seqs)}
    rows_before = rows_after = shared_rows = 0
    for a, b in zip(plain_batches, packed_batches):
        def windows(batch):
            out = []
            for r in range(len(batch[B.HIST])):
                seg = batch[B.HIST_SEG][r] if B.HIST_SEG in batch else torch.zeros(batch[B.HIST].shape[1])
                real = torch.arange(batch[B.HIST].shape[1]) < batch[B.HIST_LEN][r]
                for s in seg[real].unique().tolist():
                    at = real & (seg == s)
                    if B.HIST_POS in batch:
                        assert batch[B.HIST_POS][r][at].tolist() == list(range(int(at.sum())))
                    out.append((tuple(batch[B.HIST][r][at].tolist()), tuple(batch[B.POS][r][at].tolist()),
                                tuple(batch[B.HIST_TIME][r][at].tolist())))
            return sorted(out)
        assert windows(a) == windows(b)  # the same windows, targets and times, batch by batch
        rows_before, rows_after = rows_before + len(a[B.HIST]), rows_after + len(b[B.HIST])
        assert (b[B.POS][torch.arange(b[B.HIST].shape[1])[None, :] >= b[B.HIST_LEN][:, None]] == 0).all()
        for r in range(len(b[B.HIST])):  # no negative is an item of any window's user in the row
            real = b[B.HIST_SEG][r] >= 0
            owners = {(int(item) - 1) // 30 + 1 for item in b[B.HIST][r][real].tolist()}  # the block names the user
            # Each position's HIST_USER is its window's user (what a worker records as the users it trained on).
            assert b[B.HIST_USER][r][real].tolist() == [(int(i) - 1) // 30 + 1 for i in b[B.HIST][r][real].tolist()]
            assert (b[B.HIST_USER][r][~real] == 0).all() and int(b[B.USER][r]) in owners
            items = set().union(*(train_part[u] for u in owners))
            assert not set(b[B.NEG][r].tolist()) & items
            shared_rows += len(owners) > 1
    assert rows_after < rows_before and shared_rows  # fewer rows: the padding is gone


def test_sample_shared_rejects_every_owners_positives():
    sampler = NegativeSampler(np.r_[0, np.ones(12)], "uniform")
    owners, items = np.array([1, 1, 1, 2, 2, 3]), np.array([1, 2, 3, 4, 5, 6])
    keys = sampler.positive_keys_of(owners, items)
    # Rows: 0 owned by users 1 and 2, 1 by user 3.
    out = sampler.sample_shared(np.array([1, 2, 3]), np.array([0, 0, 1]), 200, np.random.default_rng(0), keys)
    assert out.shape == (2, 200)
    assert not set(out[0].tolist()) & {1, 2, 3, 4, 5} and set(out[0].tolist()) <= set(range(6, 13))
    assert 6 not in set(out[1].tolist()) and {1, 2, 3, 4, 5} <= set(out[1].tolist())
    with pytest.raises(ValueError, match="dense user"):
        small = NegativeSampler(np.r_[0, np.ones(3)], "uniform", max_rounds=5)
        small.sample_shared(np.array([1, 2]), np.array([0, 0]), 4, np.random.default_rng(0),
                            small.positive_keys_of(np.array([1, 1, 2]), np.array([1, 2, 3])))


@pytest.mark.parametrize("name", PACKABLE)
def test_a_packed_batch_trains(name):
    """batch_loss on a packed batch: finite, and every parameter that a window reaches gets a finite gradient."""
    rows, _ = _rows(num_items=NUM_ITEMS)
    sampler = NegativeSampler(np.r_[0, np.ones(NUM_ITEMS)], "word2vec")
    chunk = SequenceBatchBuilder(sampler, MAX_LEN, 5, seed=0, epoch=0, targets="all_positions", window="tile",
                                 pack_batches=8)(rows)
    batch = next(split_batches(chunk, 8))
    model = make_model(name).train()
    counts = np.r_[0, np.ones(NUM_ITEMS)]
    loss, n = batch_loss(model, batch, TrainConfig(temperature=0.1), ItemTables.build(sampler.probs, counts))
    assert n == int((batch[B.POS] > 0).sum()) and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad.to_dense()).all() for p in model.parameters() if p.grad is not None)
