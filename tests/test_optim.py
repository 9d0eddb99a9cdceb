"""The row-wise lazy Adam against torch's SparseAdam, its gradient averaging over workers against one worker on
the global batch, and the cutting of all-position batches to their longest window."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from ray_recall import batch as B
from ray_recall.config import TrainConfig
from ray_recall.negatives import NegativeSampler
from ray_recall.stages.train.batches import by_length, split_batches
from ray_recall.stages.train.optim import RowAdam
from ray_recall.stages.train.step import ItemTables, batch_loss
from tests.ranks import run_ranks
from tests.test_models import MAX_LEN, NUM_ITEMS, make_model
from tests.test_sequence_training import _window

ROWS, DIM = 50, 8


def _lookups(step: int, rank: int = 0) -> torch.Tensor:
    """Ids with repeats (a popular few and a long tail), different on every step and worker."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.cat([torch.randint(1, 4, (6,), generator=g), torch.randint(0, ROWS, (20,), generator=g)])


def _loss(table: torch.nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    target = torch.linspace(-1, 1, DIM)
    return ((table(ids) - target) ** 2).sum() / len(ids)


def _table(seed: int = 0) -> torch.nn.Embedding:
    torch.manual_seed(seed)
    return torch.nn.Embedding(ROWS, DIM, sparse=True)


def test_row_adam_takes_sparse_adams_steps_and_continues_from_its_state():
    ours, theirs = _table(), _table()
    opt, ref = RowAdam(ours.parameters(), lr=0.05), torch.optim.SparseAdam(theirs.parameters(), lr=0.05)
    for step in range(6):
        for table, o in ((ours, opt), (theirs, ref)):
            o.zero_grad()
            _loss(table, _lookups(step)).backward()
            o.step()
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-6, atol=1e-7)
    untouched = sorted(set(range(ROWS)) - set(torch.cat([_lookups(s) for s in range(6)]).tolist()))
    assert untouched and torch.equal(ours.weight[untouched], _table().weight[untouched])
    # A checkpoint written with SparseAdam (before RowAdam) resumes into RowAdam: the same next steps.
    resumed = _table()
    resumed.weight.data.copy_(theirs.weight.data)
    opt2 = RowAdam(resumed.parameters(), lr=0.05)
    opt2.load_state_dict(ref.state_dict())
    for step in range(6, 9):
        for table, o in ((resumed, opt2), (theirs, ref)):
            o.zero_grad()
            _loss(table, _lookups(step)).backward()
            o.step()
    torch.testing.assert_close(resumed.weight, theirs.weight, rtol=1e-6, atol=1e-7)


def _small(seed: int = 0) -> torch.nn.Embedding:
    """A second table of another width: both tables' rows travel in one exchange."""
    torch.manual_seed(seed + 100)
    return torch.nn.Embedding(30, 3, sparse=True)


def _small_loss(table: torch.nn.Embedding, step: int, rank: int) -> torch.Tensor:
    ids = torch.randint(0, 30, (7,), generator=torch.Generator().manual_seed(77 * step + rank))
    return table(ids).sin().sum() / 7


def _touches(step: int, rank: int) -> tuple[bool, bool]:
    """(big table, small table) touched by `rank` on `step`: on step 2 worker 1 touches no row of the big
    table, on step 3 worker 0 none of the small one."""
    return not (step == 2 and rank == 1), not (step == 3 and rank == 0)


def _averaging_worker(rank: int, world: int, store: str, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    try:
        table, small = _table(seed=rank), _small(seed=rank)  # a different start on each worker: the broadcast fixes it
        opt = RowAdam([table.weight, small.weight], lr=0.05, average_over_workers=True)
        with torch.no_grad():
            dist.broadcast(table.weight, src=0)
            dist.broadcast(small.weight, src=0)
        for step in range(5):
            opt.zero_grad()
            big_on, small_on = _touches(step, rank)
            loss = (_loss(table, _lookups(step, rank)) if big_on else 0) + (_small_loss(small, step, rank) if small_on else 0)
            loss.backward()
            opt.step()
        torch.save((table.weight.detach(), small.weight.detach()), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_rows_averaged_over_workers_equal_one_worker_on_the_global_batch(tmp_path):
    run_ranks(_averaging_worker, 2, 2, str(tmp_path / "store"), str(tmp_path))
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*got))  # every worker holds the same tables
    table, small = _table(seed=0), _small(seed=0)
    opt = RowAdam([table.weight, small.weight], lr=0.05)
    for step in range(5):  # DDP's convention: the mean of the workers' losses
        opt.zero_grad()
        losses = []
        for r in range(2):
            big_on, small_on = _touches(step, r)
            losses += ([_loss(table, _lookups(step, r))] if big_on else []) + ([_small_loss(small, step, r)] if small_on else [])
        (sum(losses) / 2).backward()
        opt.step()
    torch.testing.assert_close(got[0][0], table.weight.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[0][1], small.weight.detach(), rtol=1e-6, atol=1e-7)


def test_all_position_batches_are_cut_to_their_longest_window_without_changing_the_loss():
    short = {k: v[1:] for k, v in _window(seed=3).items()}  # windows of 5, 1 and 3 items: width MAX_LEN > 5
    assert MAX_LEN > 5
    tc = TrainConfig(num_negatives=5, temperature=0.5)
    counts = np.ones(NUM_ITEMS + 1)
    counts[0] = 0
    tables = ItemTables.build(NegativeSampler(counts, "uniform").probs, counts)
    (cut,) = split_batches(short, batch_size=8)
    assert cut[B.HIST].shape[1] == cut[B.POS].shape[1] == cut[B.HIST_TIME].shape[1] == 5
    for name in ("sasrec", "gru4rec", "hstu"):
        model = make_model(name).eval()
        with torch.no_grad():
            full, n_full = batch_loss(model, short, tc, tables)
            trimmed, n_cut = batch_loss(model, cut, tc, tables)
        assert n_full == n_cut == int((short[B.POS] > 0).sum())
        torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-6, msg=name)


def test_length_batches_hold_windows_of_neighbouring_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 51, size=103)
    order = by_length(rng.permutation(103), lengths, 10, rng)
    assert sorted(order.tolist()) == list(range(103))
    runs = [lengths[order[i:i + 10]] for i in range(0, 100, 10)]
    ranked = np.sort(lengths)
    spans = sorted((r.min(), r.max()) for r in runs)
    # Each full run is a run of the sorted lengths (the 3 shortest are the leftover, last); the runs' order is shuffled.
    assert [(int(a), int(b)) for a, b in spans] == [(int(ranked[3 + 10 * i]), int(ranked[12 + 10 * i])) for i in range(10)]
    assert sorted(lengths[order[100:]].tolist()) == ranked[:3].tolist()
    assert [r.min() for r in runs] != sorted(r.min() for r in runs)
