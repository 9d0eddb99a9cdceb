"""Negative samplers: draws follow the documented weights, and never hit a user's own positives."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ray_recall.negatives import NegativeSampler, sampling_weights

# Index 0 is padding; item 6 was never seen in training.
COUNTS = np.array([0, 50, 20, 10, 5, 1, 0, 3])
NUM_ITEMS = len(COUNTS) - 1


def formula(method: str) -> np.ndarray:
    """The documented weights over items 1..N, normalized (written out independently of the module)."""
    if method == "uniform":
        w = [1.0 for _ in COUNTS[1:]]
    elif method == "word2vec":
        w = [float(c) ** 0.75 for c in COUNTS[1:]]
    else:
        w = [math.log(1.0 + c) for c in COUNTS[1:]]
    total = sum(w)
    return np.array([x / total for x in w])


def empirical(draws: np.ndarray) -> np.ndarray:
    """Frequencies of items 1..N in `draws`."""
    return np.bincount(draws.ravel(), minlength=NUM_ITEMS + 1)[1:] / draws.size


def assert_matches(draws: np.ndarray, expected: np.ndarray) -> None:
    """Chi-square goodness of fit when scipy is installed, else a total-variation tolerance."""
    observed = np.bincount(draws.ravel(), minlength=NUM_ITEMS + 1)[1:]
    support = expected > 0
    assert observed[~support].sum() == 0, "drew an item whose probability is 0"
    try:
        from scipy.stats import chisquare
    except ImportError:
        tv = 0.5 * np.abs(observed / observed.sum() - expected).sum()
        # Callers draw >= 160k samples over 7 items: the expected TV from sampling noise is < 0.003.
        assert tv < 0.01, f"total variation {tv:.4f} between draws and the formula"
    else:
        p = chisquare(observed[support], draws.size * expected[support]).pvalue
        assert p > 1e-4, f"chi-square p-value {p:.2e}"


@pytest.mark.parametrize("method,alias", [("uniform", 0), ("word2vec", 1), ("log_popularity", 2)])
def test_draws_follow_the_formula(method, alias):
    expected = formula(method)
    np.testing.assert_allclose(NegativeSampler(COUNTS, method).probs[1:], expected, rtol=1e-12)
    sampler = NegativeSampler(COUNTS, alias)
    np.testing.assert_allclose(sampler.probs, NegativeSampler(COUNTS, method).probs)
    draws = sampler.sample(np.arange(2000) % 5, 100, np.random.default_rng(0))
    assert draws.shape == (2000, 100) and draws.dtype == np.int64
    assert draws.min() >= 1 and draws.max() <= NUM_ITEMS
    assert_matches(draws, expected)


def test_popularity_samplers_never_draw_unseen_items():
    for method in ("word2vec", "log_popularity"):
        draws = NegativeSampler(COUNTS, method).sample(np.zeros(1000, np.int64), 50, np.random.default_rng(1))
        assert not (draws == 6).any()
    assert (NegativeSampler(COUNTS, "uniform").sample(np.zeros(1000, np.int64), 50, np.random.default_rng(1)) == 6).any()


def test_log_probs_are_the_logs_of_the_sampling_probabilities():
    sampler = NegativeSampler(COUNTS, "word2vec")
    expected = formula("word2vec")
    np.testing.assert_allclose(np.exp(sampler.log_probs[1:]), expected, rtol=1e-12)
    assert sampler.log_probs[6] == -np.inf


def positive_keys(positives: dict[int, list[int]]) -> np.ndarray:
    return np.unique(np.array([u * (NUM_ITEMS + 1) + i for u, items in positives.items() for i in items], dtype=np.int64))


@pytest.mark.parametrize("method", ["uniform", "word2vec", "log_popularity"])
def test_no_draw_is_a_users_own_positive(method):
    # User 1's positives are the two most popular items, so rejection has real work to do.
    positives = {1: [1, 2], 2: [3], 3: [1, 4, 5, 7], 4: []}
    sampler = NegativeSampler(COUNTS, method, positive_keys(positives))
    users = np.repeat(np.array([1, 2, 3, 4]), 4000)
    draws = sampler.sample(users, 40, np.random.default_rng(2))
    for u, items in positives.items():
        row_draws = draws[users == u]
        assert not np.isin(row_draws, items).any(), f"user {u} drew one of their positives"
        # Rejection leaves the distribution over the remaining items proportional to the weights.
        expected = formula(method)
        expected[np.array(items, dtype=np.int64) - 1] = 0.0
        assert_matches(row_draws, expected / expected.sum())


def test_is_positive_matches_the_sets():
    positives = {1: [1, 2], 3: [7]}
    sampler = NegativeSampler(COUNTS, "uniform", positive_keys(positives))
    users = np.array([1, 1, 3, 3, 2])
    items = np.array([[1, 3], [2, 7], [7, 1], [6, 7], [1, 2]])
    want = np.array([[u in positives and i in positives[u] for i in row] for u, row in zip(users, items)])
    np.testing.assert_array_equal(sampler.is_positive(users, items), want)


def test_user_with_every_item_positive_raises_a_clear_error():
    sampler = NegativeSampler(COUNTS, "uniform", positive_keys({3: list(range(1, NUM_ITEMS + 1))}), max_rounds=5)
    with pytest.raises(ValueError, match="cannot draw a negative for dense user 3"):
        sampler.sample(np.array([1, 3]), 4, np.random.default_rng(3))


def test_every_sampleable_item_positive_raises_too():
    # Under word2vec item 6 has weight 0, so items {1..5, 7} are everything the sampler can draw.
    sampler = NegativeSampler(COUNTS, "word2vec", positive_keys({2: [1, 2, 3, 4, 5, 7]}), max_rounds=5)
    with pytest.raises(ValueError, match="dense user 2"):
        sampler.sample(np.array([2]), 1, np.random.default_rng(4))


def test_sampling_is_seeded():
    sampler = NegativeSampler(COUNTS, "word2vec", positive_keys({1: [1]}))
    users = np.array([1, 2, 1, 2])
    a = sampler.sample(users, 10, np.random.default_rng(5))
    b = sampler.sample(users, 10, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_unknown_sampler_lists_the_valid_ones():
    with pytest.raises(ValueError) as e:
        sampling_weights(COUNTS, "zipf")
    for valid in ("uniform", "word2vec", "log_popularity", "0/1/2"):
        assert valid in str(e.value)
    with pytest.raises(ValueError, match="all zero"):
        sampling_weights(np.zeros(4), "word2vec")


def test_positives_bitmap_and_sorted_keys_agree(monkeypatch):
    """A chunk's positives as a bitmap (small) and as sorted keys (large): the same answers as the key search."""
    import ray_recall.negatives as negatives

    rng = np.random.default_rng(3)
    users, items = rng.integers(1, 30, 400), rng.integers(1, NUM_ITEMS + 1, 400)
    sampler = NegativeSampler(COUNTS, "uniform")
    keys = sampler.positive_keys_of(users, items)
    q_users, q_items = rng.integers(0, 35, (50, 1)), rng.integers(1, NUM_ITEMS + 1, (50, 7))  # some users unknown
    want = sampler.is_positive(q_users[:, 0], q_items, keys)
    bitmap = sampler.positives_of(users, items)
    assert bitmap.bitmap is not None and len(bitmap) == len(keys)
    np.testing.assert_array_equal(sampler.is_positive(q_users[:, 0], q_items, bitmap), want)
    monkeypatch.setattr(negatives, "BITMAP_MAX_CELLS", 10)
    searched = sampler.positives_of(users, items)
    assert searched.bitmap is None and len(searched) == len(keys)
    np.testing.assert_array_equal(sampler.is_positive(q_users[:, 0], q_items, searched), want)
    assert want.any() and not want.all()
