"""Ranking metrics by hand, exact ranks with masking and ties, and FAISS retrieval against brute force."""

import math

import numpy as np
import pytest
import torch

from ray_recall.index import VectorIndex, ann_recall, merge_interests
from ray_recall.metrics import metrics_from_ranks, score_items, target_ranks


def test_metrics_by_hand():
    ranks = np.array([0, 3, 9, 10, 50])
    m = metrics_from_ranks(ranks, [10])
    assert m["recall@10"] == pytest.approx(3 / 5)
    assert m["hit_rate@10"] == m["recall@10"]
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(5) + 1 / math.log2(11)) / 5)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 4 + 1 / 10) / 5)


def test_target_ranks_mask_and_ties():
    # items 1..5 (columns 0..4)
    scores = torch.tensor([[0.9, 0.5, 0.5, 0.1, 0.7],
                           [0.2, 0.2, 0.2, 0.2, 0.2]])
    targets = torch.tensor([3, 3])
    # row 0: items 1 (0.9) and 5 (0.7) above; item 2 ties with 3 and has the lower id -> rank 3
    assert target_ranks(scores, targets).tolist() == [3, 2]
    # masking item 1 for row 0 and items 1, 2 for row 1
    ranks = target_ranks(scores, targets, np.array([0, 1, 1]), np.array([1, 1, 2]))
    assert ranks.tolist() == [2, 0]
    # a masked target can never be found
    assert target_ranks(scores, targets, np.array([0]), np.array([3])).tolist()[0] == 5


def test_multi_interest_scores_take_best_interest():
    users = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [1, K=2, D=2]
    items = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    assert score_items(users, items).tolist() == [[1.0, 2.0, -1.0]]


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_flat_index_equals_brute_force(metric):
    rng = np.random.default_rng(0)
    items = rng.normal(size=(300, 16)).astype(np.float32)
    ids = np.arange(1000, 1300)
    q = rng.normal(size=(5, 16)).astype(np.float32)
    index = VectorIndex("Flat", metric).fit(items, ids)
    got, scores = index.search(q, 10)
    if metric == "ip":
        s = q @ items.T
    elif metric == "cosine":
        s = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (items / np.linalg.norm(items, axis=1, keepdims=True)).T
    else:
        s = -((q[:, None, :] - items[None]) ** 2).sum(-1)
    expect = ids[np.argsort(-s, axis=1)[:, :10]]
    assert (got == expect).all()
    assert np.allclose(scores, np.take_along_axis(s, np.argsort(-s, axis=1)[:, :10], 1), atol=1e-4)


def test_ann_index_recall_and_round_trip(tmp_path):
    from ray_recall.rundir import RunDir

    rng = np.random.default_rng(1)
    items = rng.normal(size=(2000, 16)).astype(np.float32)
    q = rng.normal(size=(50, 16)).astype(np.float32)
    exact = VectorIndex("Flat").fit(items)
    hnsw = VectorIndex("HNSW16").fit(items)
    assert ann_recall(hnsw, exact, q, 10) > 0.8
    ivf = VectorIndex("IVF16,Flat").fit(items)
    ivf.set_search_params(nprobe=16)  # every list probed -> exact
    assert ann_recall(ivf, exact, q, 10) == pytest.approx(1.0)
    run = RunDir(str(tmp_path / "run"))
    hnsw.save(run)
    loaded = VectorIndex.load(run)
    assert (loaded.search(q, 5)[0] == hnsw.search(q, 5)[0]).all()


def test_bad_factory_string():
    with pytest.raises(ValueError, match="not valid for FAISS"):
        VectorIndex("IVFxyz").fit(np.zeros((10, 4), np.float32))


def test_merge_interests_dedupes_by_best_score():
    ids = np.array([[1, 2, 3], [2, 4, 1]])
    scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.7, 0.2]])
    got_ids, got_scores = merge_interests(ids, scores, 3)
    assert got_ids.tolist() == [1, 2, 4] and got_scores.tolist() == [0.9, 0.8, 0.7]


def test_query_single_vector():
    items = np.eye(4, dtype=np.float32)
    index = VectorIndex(metric="angular").fit(items, np.array([10, 11, 12, 13]))
    ids, _ = index.query(np.array([0, 0, 1, 0.1], np.float32), n=2)
    assert ids.tolist() == [12, 13]


def test_blocked_ranks_equal_unblocked_ones():
    """Exact ranks over item blocks (bounded memory) equal the ranks over the whole score matrix, masking included."""
    import numpy as np
    import torch

    from ray_recall.metrics import score_items, target_ranks
    from ray_recall.ranking import blocked_target_ranks

    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        for multi in (False, True):
            users = torch.randn(7, 3, 4, generator=g) if multi else torch.randn(7, 4, generator=g)
            items = torch.randn(53, 4, generator=g)
            items[10] = items[11]  # an exact tie, broken by id
            targets = torch.randint(1, 54, (7,), generator=g)
            rows = np.array([0, 0, 1, 2, 2, 2, 5, 6, 6])  # a repeated seen item; row 2 has seen its own target
            seen = np.array([3, 3, 9, int(targets[2]), 5, 40, 11, 12, 1])
            want = target_ranks(score_items(users, items), targets, rows, seen)
            assert want[2] == 53
            for max_scores in (7, 14, 70):  # blocks of 1, 2 and 10 items
                assert torch.equal(blocked_target_ranks(users, items, targets, rows, seen, max_scores), want)


def test_standard_errors_of_the_metrics():
    import numpy as np

    from ray_recall.metrics import metrics_from_ranks, standard_errors

    ranks = np.array([0, 3, 12, 1, 50, 7, 9, 2])
    se = standard_errors(ranks, [10])
    hits = (ranks < 10).astype(float)
    assert se["recall@10"] == pytest.approx(hits.std(ddof=1) / np.sqrt(8))
    assert se["hit_rate@10"] == se["recall@10"]
    ndcg = np.where(ranks < 10, 1 / np.log2(ranks + 2), 0)
    assert se["ndcg@10"] == pytest.approx(ndcg.std(ddof=1) / np.sqrt(8))
    assert metrics_from_ranks(ranks, [10])["ndcg@10"] == pytest.approx(ndcg.mean())


def test_fixed_score_ranks_equal_the_score_matrix_ranks():
    """Most-popular's ranks from each item's place in the popularity order: the same as over a [B, N] matrix."""
    import numpy as np
    import torch

    from ray_recall.metrics import target_ranks
    from ray_recall.ranking import fixed_score_ranks, score_order

    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        popularity = torch.randint(0, 5, (40,), generator=g).float()  # many ties
        targets = torch.randint(1, 41, (6,), generator=g)
        rows = np.array([0, 0, 1, 2, 3, 3, 5])
        seen = np.array([4, 4, int(targets[1]), 7, 1, 2, 30])
        want = target_ranks(popularity[None].expand(6, -1), targets, rows, seen)
        assert torch.equal(fixed_score_ranks(score_order(popularity), targets, rows, seen), want)
