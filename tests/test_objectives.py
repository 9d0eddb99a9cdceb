"""Each objective against the arithmetic written out by hand on a tiny case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ray_recall.objectives import get_objective, listwise_loss, pairwise_loss, pointwise_loss

# B = 2 rows, D = 2, N = 2 sampled negatives. Scores are inner products.
# float64 so the comparisons below can be tight.
USER = torch.tensor([[1.0, 0.0], [0.5, 2.0]], dtype=torch.float64)
POS = torch.tensor([[2.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
NEG = torch.tensor([[[0.0, 3.0], [-1.0, 0.5]], [[2.0, -1.0], [0.0, 0.5]]], dtype=torch.float64)
# s(u, pos):  row 0: 2.0            row 1: 0.5 + 2.0 = 2.5
# s(u, neg):  row 0: 0.0, -1.0      row 1: 1.0 - 2.0 = -1.0, 0.0 + 1.0 = 1.0
POS_S = [2.0, 2.5]
NEG_S = [[0.0, -1.0], [-1.0, 1.0]]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logsumexp(xs) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def test_scores_of_the_tiny_case():
    torch.testing.assert_close((USER * POS).sum(-1), torch.tensor(POS_S, dtype=torch.float64))
    torch.testing.assert_close(torch.einsum("bd,bnd->bn", USER, NEG), torch.tensor(NEG_S, dtype=torch.float64))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_pointwise_bce_with_temperature(temperature):
    terms = []
    for b in range(2):
        terms.append(-math.log(sigmoid(POS_S[b] / temperature)))  # label 1
        terms += [-math.log(1.0 - sigmoid(s / temperature)) for s in NEG_S[b]]  # label 0
    want = sum(terms) / len(terms)  # mean over B * (1 + N) logits
    got = pointwise_loss(USER, POS, NEG, temperature=temperature)
    assert got.item() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_pairwise_bpr_with_temperature(temperature):
    pairs = [-math.log(sigmoid((POS_S[b] - s) / temperature)) for b in range(2) for s in NEG_S[b]]
    want = sum(pairs) / len(pairs)
    assert pairwise_loss(USER, POS, NEG, temperature=temperature).item() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_listwise_softmax_with_temperature(temperature):
    rows = []
    for b in range(2):
        logits = [POS_S[b] / temperature] + [s / temperature for s in NEG_S[b]]
        rows.append(logsumexp(logits) - logits[0])  # -log softmax(logits)[0]
    want = sum(rows) / 2
    assert listwise_loss(USER, POS, NEG, temperature=temperature).item() == pytest.approx(want, rel=1e-9)


def test_listwise_with_neg_logq_correction():
    neg_logq = torch.tensor([[math.log(0.5), math.log(0.1)], [math.log(0.2), math.log(0.05)]], dtype=torch.float64)
    T = 0.5
    rows = []
    for b in range(2):
        # The correction applies to the tempered logit: s / T - log q (so that the sampled softmax estimates
        # the softmax of s / T over the catalog at any temperature).
        logits = [POS_S[b] / T] + [s / T - neg_logq[b, n].item() for n, s in enumerate(NEG_S[b])]
        rows.append(logsumexp(logits) - logits[0])
    want = sum(rows) / 2
    got = listwise_loss(USER, POS, NEG, temperature=T, neg_logq=neg_logq)
    assert got.item() == pytest.approx(want, rel=1e-9)
    # log q < 0 raises every sampled logit (rare draws the most), so here the corrected loss is the larger one.
    assert got.item() > listwise_loss(USER, POS, NEG, temperature=T).item()


def test_in_batch_negatives_with_pos_logq_and_same_item_masking():
    """B = 3, no sampled negatives; rows 0 and 2 share their positive item, so neither is the other's negative."""
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    pos = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    neg = torch.zeros(3, 0, 2, dtype=torch.float64)
    pos_ids = torch.tensor([5, 7, 5])
    pos_logq = torch.tensor([math.log(0.3), math.log(0.1), math.log(0.3)], dtype=torch.float64)
    T = 0.5
    s = np.array([[float(user[i] @ pos[j]) for j in range(3)] for i in range(3)])
    # s = [[1, 3, .5], [2, 0, .5], [3, 3, 1]]
    np.testing.assert_allclose(s, [[1, 3, 0.5], [2, 0, 0.5], [3, 3, 1]])
    lq = pos_logq.tolist()
    row_logits = [  # tempered logits, corrected by log q
        [s[0, 0] / T, s[0, 1] / T - lq[1]],  # row 0: column 2 holds the same item (5): masked
        [s[1, 1] / T, s[1, 0] / T - lq[0], s[1, 2] / T - lq[2]],  # row 1: both other rows are negatives
        [s[2, 2] / T, s[2, 1] / T - lq[1]],  # row 2: column 0 is item 5 again: masked
    ]
    want = sum(logsumexp(r) - r[0] for r in row_logits) / 3
    got = listwise_loss(user, pos, neg, temperature=T, in_batch=True, pos_ids=pos_ids, pos_logq=pos_logq)
    assert got.item() == pytest.approx(want, rel=1e-9)
    # Without ids only the diagonal is masked, and the duplicate item becomes a (false) negative.
    unmasked = listwise_loss(user, pos, neg, temperature=T, in_batch=True, pos_logq=pos_logq)
    assert unmasked.item() > got.item()


def test_in_batch_mixes_with_sampled_negatives():
    pos_ids = torch.tensor([1, 2])
    pos_logq = torch.tensor([math.log(0.4), math.log(0.2)], dtype=torch.float64)
    T = 1.0
    cross = [[float(USER[i] @ POS[j]) for j in range(2)] for i in range(2)]
    rows = []
    for b in range(2):
        other = 1 - b
        logits = [POS_S[b]] + NEG_S[b] + [cross[b][other] - pos_logq[other].item()]
        rows.append(logsumexp([x / T for x in logits]) - logits[0] / T)
    got = listwise_loss(USER, POS, NEG, temperature=T, in_batch=True, pos_ids=pos_ids, pos_logq=pos_logq)
    assert got.item() == pytest.approx(sum(rows) / 2, rel=1e-9)


def test_in_batch_without_ids_masks_only_the_diagonal():
    got = listwise_loss(USER, POS, torch.zeros(2, 0, 2, dtype=torch.float64), in_batch=True)
    cross = [[float(USER[i] @ POS[j]) for j in range(2)] for i in range(2)]
    want = sum(logsumexp([cross[b][b], cross[b][1 - b]]) - cross[b][b] for b in range(2)) / 2
    assert got.item() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("alias,name,fn", [(0, "pointwise", pointwise_loss), (1, "pairwise", pairwise_loss),
                                           (2, "listwise", listwise_loss)])
def test_get_objective_accepts_aliases_and_names(alias, name, fn):
    assert get_objective(alias) is fn
    assert get_objective(name) is fn


@pytest.mark.parametrize("bad", ["softmax", 3, "Listwise"])
def test_unknown_mode_lists_the_valid_ones(bad):
    with pytest.raises(ValueError) as e:
        get_objective(bad)
    msg = str(e.value)
    assert repr(bad) in msg
    for valid in ("pointwise", "pairwise", "listwise", "0/1/2"):
        assert valid in msg


@pytest.mark.parametrize("corrected", [True, False])
def test_fused_window_softmax_equals_the_generic_softmax_on_the_scored_positions(corrected):
    """window_sampled_softmax (one [E, L, N] pass each way) = softmax_from_scores over the gathered positions:
    the loss and the gradients of user, target and negatives."""
    from ray_recall.objectives import softmax_from_scores, window_sampled_softmax

    g = torch.Generator().manual_seed(7)
    E, L, N, D, T = 5, 6, 9, 4, 0.3
    user = torch.randn(E, L, D, generator=g, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(E, L, D, generator=g, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(E, N, D, generator=g, dtype=torch.float64, requires_grad=True)
    logq = torch.randn(E, N, generator=g, dtype=torch.float64) if corrected else None
    valid = torch.rand(E, L, generator=g) > 0.3
    valid[0] = False  # a row with nothing scored
    rows = torch.nonzero(valid, as_tuple=True)[0]
    u, p = user[valid], pos[valid]
    neg_s = torch.einsum("md,mnd->mn", u, neg[rows])
    want = softmax_from_scores((u * p).sum(-1), [(neg_s, None if logq is None else logq[rows], None)], temperature=T)
    got = window_sampled_softmax(user, pos, neg, logq, valid.double() / valid.sum(), temperature=T)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (user, pos, neg)), torch.autograd.grad(want, (user, pos, neg))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # Large logits (T small): computed from the row's maximum, no overflow.
    big = window_sampled_softmax(user * 50, pos * 50, neg * 50, logq, valid.double() / valid.sum(), temperature=0.01)
    assert torch.isfinite(big)
