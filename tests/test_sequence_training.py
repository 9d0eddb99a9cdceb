"""All-position training and the losses it uses: exact against per-prefix, chunked against unchunked,
logQ-corrected against the full softmax, gathered negatives against one worker on the global batch."""

from __future__ import annotations

import gc
import os

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.distributed as dist

from ray_recall import batch as B
from ray_recall.config import TrainConfig
from ray_recall.negatives import NegativeSampler
from ray_recall.objectives import full_softmax_loss, listwise_loss, softmax_from_scores
from ray_recall.stages.train.batches import SequenceBatchBuilder, window_starts
from ray_recall.stages.train.comm import gather_rows
from ray_recall.stages.train.step import ItemTables, batch_loss
from tests.ranks import run_ranks
from tests.test_models import MAX_LEN, NUM_ITEMS, make_model

CAUSAL = ["sasrec", "gru4rec", "hstu", "comirec"]


def _window(seed: int = 0, rows: int = 4, num_neg: int = 5) -> dict[str, torch.Tensor]:
    """An all-position batch: windows of different lengths, targets = each next item, times increasing."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([MAX_LEN, 5, 1, 3][:rows])
    seq = torch.randint(1, NUM_ITEMS + 1, (rows, MAX_LEN + 1), generator=g)
    real = torch.arange(MAX_LEN)[None, :] < lens[:, None]
    times = torch.cumsum(torch.randint(1, 100_000, (rows, MAX_LEN), generator=g), 1).double() * real
    return {B.USER: torch.arange(1, rows + 1), B.HIST: seq[:, :MAX_LEN] * real, B.HIST_LEN: lens,
            B.HIST_TIME: times, B.POS: seq[:, 1:] * real,
            B.NEG: torch.randint(1, NUM_ITEMS + 1, (rows, num_neg), generator=g)}


def _prefixes(window: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same targets as per-prefix samples: one row per (window, position), history = the window up to it."""
    rows, cols = torch.nonzero(window[B.POS] > 0, as_tuple=True)
    lens = cols + 1
    real = torch.arange(MAX_LEN)[None, :] < lens[:, None]
    return {B.USER: window[B.USER][rows], B.HIST: window[B.HIST][rows] * real, B.HIST_LEN: lens,
            B.HIST_TIME: window[B.HIST_TIME][rows] * real, B.POS: window[B.POS][rows, cols],
            B.NEG: window[B.NEG][rows]}


@pytest.mark.parametrize("name", CAUSAL)
def test_every_state_is_the_state_of_its_prefix_alone(name):
    model = make_model(name).eval()
    window = _window()
    prefixes = _prefixes(window)
    with torch.no_grad():
        states = model.encode_sequence(window)[window[B.POS] > 0]  # [M, D]
        alone = model.encode_user(prefixes)  # [M, D]
    torch.testing.assert_close(states, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CAUSAL)
@pytest.mark.parametrize("mode, softmax, in_batch", [("listwise", "sampled", False), ("listwise", "sampled", True),
                                                     ("listwise", "full", False), ("pointwise", "sampled", False),
                                                     ("pairwise", "sampled", False)])
def test_all_position_loss_equals_the_per_prefix_loss(name, mode, softmax, in_batch):
    """Same weights, same targets and negatives: one pass over the windows gives the loss of every prefix alone."""
    model = make_model(name).eval()  # no dropout: the two passes see the same network
    tc = TrainConfig(mode=mode, softmax=softmax, in_batch_negatives=in_batch, temperature=0.2, sampler="word2vec")
    counts = np.arange(NUM_ITEMS + 1) % 7 + 1.0
    counts[0] = 0
    tables = ItemTables.build(NegativeSampler(counts, "word2vec").probs, counts)
    window = _window(seed=3)
    loss_all, n_all = batch_loss(model, window, tc, tables)
    loss_prefix, n_prefix = batch_loss(model, _prefixes(window), tc, tables)
    assert n_all == n_prefix == int((window[B.POS] > 0).sum())
    torch.testing.assert_close(loss_all, loss_prefix, rtol=1e-5, atol=1e-5)
    # And position by position, for the sampled softmax.
    with torch.no_grad():
        out_all, out_prefix = model(window), model(_prefixes(window))
    valid = window[B.POS] > 0
    rows = torch.nonzero(valid, as_tuple=True)[0]
    per_position = listwise_loss(out_all["user"][valid], out_all["pos"][valid], out_all["neg"][rows], temperature=0.2,
                                 reduction="none")
    per_prefix = listwise_loss(out_prefix["user"][:, 0], out_prefix["pos"][:, 0], out_prefix["neg"], temperature=0.2,
                               reduction="none")
    torch.testing.assert_close(per_position, per_prefix, rtol=1e-5, atol=1e-5)
    if (mode, softmax, in_batch) == ("listwise", "sampled", False):  # batch_loss's fused path = the generic softmax
        u, p, n = out_all["user"][valid], out_all["pos"][valid], out_all["neg"][rows]
        logq = tables.log_expected(window[B.NEG], n.shape[1], 0)[rows]
        generic = softmax_from_scores((u * p).sum(-1), [(torch.einsum("md,mnd->mn", u, n), logq, None)], temperature=0.2)
        torch.testing.assert_close(loss_all, generic, rtol=1e-6, atol=1e-6)


def test_chunked_full_softmax_equals_the_unchunked_one():
    g = torch.Generator().manual_seed(0)
    user = torch.randn(37, 8, generator=g, dtype=torch.float64, requires_grad=True)
    items = torch.randn(101, 8, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, 102, (37,), generator=g)
    T = 0.3
    plain = torch.nn.functional.cross_entropy(user @ items.T / T, targets - 1)
    gu, gi = torch.autograd.grad(plain, (user, items))
    for max_logits in (37 * 7, 37 * 40, 1 << 20):  # chunks of 7 items, of 40, and all at once
        chunked = full_softmax_loss(user, items, targets, temperature=T, max_logits=max_logits)
        cu, ci = torch.autograd.grad(chunked, (user, items))
        torch.testing.assert_close(chunked, plain, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(cu, gu, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(ci, gi, rtol=1e-9, atol=1e-12)


def _sampled_gradient_error(n: int, corrected: bool, seeds: int = 40) -> float:
    """Relative error of the sampled softmax's gradient (w.r.t. the user vectors) against the full softmax's,
    the sampled gradient averaged over `seeds` draws of `n` popularity-sampled negatives per row."""
    g = torch.Generator().manual_seed(1)
    num_items, d, m, T = 500, 8, 64, 0.2
    # Unit vectors, as the models' normalized towers give.
    user = torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    items = torch.nn.functional.normalize(torch.randn(num_items, d, generator=g, dtype=torch.float64), dim=-1)
    q = 1.0 / torch.arange(1, num_items + 1, dtype=torch.float64) ** 1.1  # popularity (Zipf)
    q = q / q.sum()
    targets = torch.multinomial(q, m, replacement=True, generator=g) + 1
    full = full_softmax_loss(user, items, targets, temperature=T)
    (g_full,) = torch.autograd.grad(full, user)
    total = torch.zeros_like(user)
    for s in range(seeds):
        neg = torch.multinomial(q, m * n, replacement=True, generator=torch.Generator().manual_seed(100 + s)).view(m, n)
        neg_s = torch.einsum("md,mnd->mn", user, items[neg])
        pos_s = (user * items[targets - 1]).sum(-1)
        logq = torch.log(n * q[neg]) if corrected else None
        # A draw of the target itself is masked (training's sampler never draws a user's own items), so the
        # corrected sum estimates the partition function over the other items.
        loss = softmax_from_scores(pos_s, [(neg_s, logq, neg == targets[:, None] - 1)], temperature=T)
        total += torch.autograd.grad(loss, user)[0]
    return float((total / seeds - g_full).norm() / g_full.norm())


def test_logq_corrected_sampled_softmax_approaches_the_full_softmax():
    errors = {n: (_sampled_gradient_error(n, True), _sampled_gradient_error(n, False)) for n in (10, 100, 1000)}
    corrected = [errors[n][0] for n in (10, 100, 1000)]
    assert corrected[0] > corrected[1] > corrected[2], errors  # shrinks as the negatives grow
    assert corrected[2] < 0.1, errors
    for n, (fixed, plain) in errors.items():
        assert fixed < plain, (n, errors)  # and beats the uncorrected loss at every size


def _rows_table(seqs: list[list[int]], users: list[int]) -> pa.Table:
    return pa.table({"user_idx": pa.array(users, pa.int64()), "items": pa.array(seqs, pa.list_(pa.int32())),
                     "times": pa.array([[float(10 * t) for t in range(len(s))] for s in seqs], pa.list_(pa.float64())),
                     "length": pa.array([len(s) for s in seqs], pa.int32())})


SEQS = [[3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25], [2, 4, 6], [8, 10, 12, 14, 16], [30, 31, 32, 33, 34, 35, 36, 37]]
USERS = [7, 8, 9, 10]


@pytest.mark.parametrize("window", ["tile", "shifted", "last", "random"])
def test_windows_cut_the_train_part_into_next_item_targets(window):
    sampler = NegativeSampler(np.ones(41), "uniform")
    out = SequenceBatchBuilder(sampler, 4, 6, seed=0, epoch=0, targets="all_positions", window=window)(_rows_table(SEQS, USERS))
    train_parts = {u: s[:-2] for u, s in zip(USERS, SEQS)}
    seen = {u: [] for u in USERS}
    for row in range(len(out[B.USER])):
        u, n = int(out[B.USER][row]), int(out[B.HIST_LEN][row])
        hist, pos, times = out[B.HIST][row].tolist(), out[B.POS][row].tolist(), out[B.HIST_TIME][row].tolist()
        part = train_parts[u]
        a = next(i for i in range(len(part)) if part[i:i + n] == hist[:n])
        assert pos[:n] == part[a + 1:a + n + 1] and hist[n:] == [0] * (4 - n) and pos[n:] == [0] * (4 - n)
        assert times[:n] == [10.0 * (a + t) for t in range(n)]
        assert not set(out[B.NEG][row].tolist()) & set(part)  # never one of the user's own items
        seen[u] += pos[:n]
    for u, part in train_parts.items():
        if window in ("tile", "shifted"):  # every target exactly once
            assert sorted(seen[u]) == sorted(part[1:]), (u, seen[u])
        elif window == "last":
            assert seen[u] == part[1:][-4:]
        else:
            assert len(seen[u]) == min(4, len(part) - 1)


def test_window_starts_cover_long_users():
    row, start, length = window_starts(np.array([72, 3, 2, 52, 51, 1]), 50, "tile", np.random.default_rng(0))
    # 71 targets: windows (21, 50) and (0, 21); 2 targets; 1; 51 targets: (1, 50), (0, 1); 50: (0, 50); none.
    assert list(zip(row.tolist(), start.tolist(), length.tolist())) == [
        (0, 21, 50), (0, 0, 21), (1, 0, 2), (2, 0, 1), (3, 1, 50), (3, 0, 1), (4, 0, 50)]


def test_shifted_windows_cover_every_target_once_with_fresh_boundaries():
    m = np.array([72, 3, 2, 52, 51, 1, 160])
    cuts = set()
    for seed in range(40):
        row, start, length = window_starts(m, 50, "shifted", np.random.default_rng(seed))
        assert (length >= 1).all() and (length <= 50).all()
        for r, targets in enumerate(np.maximum(m - 1, 0)):
            covered = np.concatenate([np.arange(a + 1, a + n + 1) for a, n in zip(start[row == r], length[row == r])]
                                     or [np.zeros(0, np.int64)])
            assert sorted(covered.tolist()) == list(range(1, targets + 1)), (seed, r)  # each target once
            if targets <= 50:  # one window's worth: the same single window as tile
                assert length[row == r].tolist() == ([targets] if targets else [])
        cuts.add(tuple(start[row == 6].tolist()))
    assert len(cuts) > 20  # the long user's boundaries move from epoch to epoch


def test_per_prefix_samples_are_every_train_position():
    sampler = NegativeSampler(np.ones(41), "uniform")
    out = SequenceBatchBuilder(sampler, 3, 4, seed=0, epoch=0, targets="per_prefix")(_rows_table(SEQS, USERS))
    got = sorted((int(u), int(t), tuple(h[:n].tolist())) for u, t, h, n in
                 zip(out[B.USER], out[B.POS], out[B.HIST], out[B.HIST_LEN]))
    want = sorted((u, part[p], tuple(part[max(0, p - 3):p])) for u, s in zip(USERS, SEQS)
                  for part in [s[:-2]] for p in range(1, len(part)))
    assert got == want


# ---- two workers -------------------------------------------------------------------------------


def _gather_worker(rank: int, world: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        user = torch.randn(8, 4, generator=g, dtype=torch.float64)
        pos = torch.randn(8, 4, generator=g, dtype=torch.float64)
        neg = torch.randn(8, 3, 4, generator=g, dtype=torch.float64)
        ids = torch.tensor([1, 2, 3, 1, 5, 6, 7, 5])
        logq = torch.log(torch.linspace(0.05, 0.4, 8, dtype=torch.float64))
        lo, hi = rank * 4, rank * 4 + 4
        u, p, n = (t[lo:hi].clone().requires_grad_(True) for t in (user, pos, neg))
        loss = listwise_loss(u, p, n, temperature=0.5, in_batch=True, pos_ids=ids[lo:hi],
                             candidates=(gather_rows(p), gather_rows(ids[lo:hi]), gather_rows(logq[lo:hi]), None))
        loss.backward()
        grads = [t.grad.clone() for t in (u, p, n)]
        total = loss.detach().clone()
        dist.all_reduce(total)
        torch.save({"loss": total / world, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
        gc.collect()
    finally:
        dist.destroy_process_group()


def test_gathered_in_batch_negatives_equal_one_worker_on_the_global_batch(tmp_path):
    run_ranks(_gather_worker, 2, 2, str(tmp_path / "store"), str(tmp_path))
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    g = torch.Generator().manual_seed(0)
    user, pos, neg = (torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(True)
                      for s in ((8, 4), (8, 4), (8, 3, 4)))
    ids = torch.tensor([1, 2, 3, 1, 5, 6, 7, 5])
    logq = torch.log(torch.linspace(0.05, 0.4, 8, dtype=torch.float64))
    want = listwise_loss(user, pos, neg, temperature=0.5, in_batch=True, pos_ids=ids, pos_logq=logq)
    want.backward()
    torch.testing.assert_close(got[0]["loss"], want.detach(), rtol=1e-12, atol=1e-12)
    for rank in range(2):
        lo, hi = rank * 4, rank * 4 + 4
        # DDP averages the workers' gradients: twice each rank's (the mean of two local means) is the global one.
        for local, full in zip(got[rank]["grads"], (user.grad, pos.grad, neg.grad)):
            torch.testing.assert_close(local / 2, full[lo:hi], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["sasrec", "dssm"])
def test_sparse_id_tables_take_the_dense_adam_step_and_touch_only_used_rows(name):
    """A first step of the lazy (sparse) Adam is dense Adam's (but where a gradient is about Adam's eps, which the
    two place differently); later, rows no batch used stay as they were."""
    from ray_recall.stages.train.optim import Optimizers

    tc = TrainConfig(lr=0.01, num_negatives=5)
    counts = np.ones(NUM_ITEMS + 1)
    counts[0] = 0
    tables = ItemTables.build(NegativeSampler(counts, "uniform").probs, counts)
    window = _window(seed=5)
    batch = window if name == "sasrec" else _prefixes(window)
    dense_model, sparse_model = make_model(name, seed=0).eval(), make_model(name, seed=0).eval()
    dense, sparse = Optimizers(dense_model, tc, None), Optimizers(sparse_model, tc, sparse_min_rows=NUM_ITEMS)
    assert dense.sparse is None and sparse.sparse_rows >= NUM_ITEMS + 1
    grads = {}
    for model, opt in ((dense_model, dense), (sparse_model, sparse)):
        loss, _ = batch_loss(model, batch, tc, tables)
        opt.zero_grad()
        loss.backward()
        if model is dense_model:
            grads = {n: p.grad.abs() for n, p in model.named_parameters()}
        opt.step()
    sparse_names = {n + ".weight" for n, m in sparse_model.named_modules() if isinstance(m, torch.nn.Embedding) and m.sparse}
    for (k, a), b in zip(dense_model.state_dict().items(), sparse_model.state_dict().values()):
        if k in sparse_names:
            # SparseAdam adds eps before the bias correction (in effect 1/sqrt(1 - beta2) = 32x larger at step 1):
            # where the gradient is clear of it (> 1e-3), the same update to 0.1% of the step (lr).
            clear = grads[k] > 1e-3
            assert clear.sum() > 100
            torch.testing.assert_close(a[clear], b[clear], rtol=0, atol=1e-3 * tc.lr, msg=k)
        else:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)
    # A second step on a batch that uses only some items: the other rows of the sparse table do not move.
    table = next(m for m in sparse_model.modules() if isinstance(m, torch.nn.Embedding) and m.sparse)
    before = table.weight.detach().clone()
    small = {k: v[:1] for k, v in batch.items()}
    loss, _ = batch_loss(sparse_model, small, tc, tables)
    sparse.zero_grad()
    loss.backward()
    sparse.step()
    used = set(torch.cat([small[B.HIST].flatten(), small[B.POS].flatten(), small[B.NEG].flatten(),
                          small[B.USER].flatten()]).tolist())
    moved = torch.nonzero((table.weight.detach() != before).any(1)).flatten().tolist()
    assert moved and set(moved) <= used | {0}


def test_an_epoch_of_few_steps_gets_a_note_naming_the_batch_and_its_unit():
    """train.batch_size counts windows with all positions (~max_len targets each) and samples per prefix: the default
    1024 is most of a small log's windows, and the fit would barely move. The train stage says so."""
    from ray_recall.stages.train.stage import _few_steps_note

    meta = {"num_sequence_users": 800, "samples": {"train": 17_600}}  # 22 train targets a user
    note = _few_steps_note(TrainConfig(), meta, "all_positions", 50)
    assert note == ("[train] note: an epoch is about 2 step(s) of train.batch_size=1024 windows (~1,152 windows an "
                    "epoch): few updates per pass; the shipped configs take 64 windows or 256 samples a step")
    assert _few_steps_note(TrainConfig(batch_size=64), meta, "all_positions", 50) is None  # 18 steps (1.44 windows a user)
    assert "of train.batch_size=2048 samples (~17,600 samples" in _few_steps_note(TrainConfig(batch_size=2048), meta,
                                                                                  "per_prefix", 50)
    assert _few_steps_note(TrainConfig(), meta, "per_prefix", 50) is None  # 18 steps of 1024 samples
