"""The synthetic generator: a known low-rank truth, Zipf popularity, determinism."""

import numpy as np
import pytest
from scipy import stats

from mdcf import data


def test_deterministic_and_distinct():
    a, truth_a = data.synthetic(300, 200, 5_000, rank=8, seed=3)
    b, truth_b = data.synthetic(300, 200, 5_000, rank=8, seed=3)
    c, _ = data.synthetic(300, 200, 5_000, rank=8, seed=4)
    for field in ("users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(truth_a.user_factors, truth_b.user_factors)
    assert not np.array_equal(a.ratings, c.ratings)
    keys = a.users.astype(np.int64) * a.n_items + a.items
    assert len(np.unique(keys)) == len(a) == 5_000
    assert (np.diff(keys) > 0).all()  # sorted by user, then item
    assert (a.n_users, a.n_items) == (300, 200)


@pytest.mark.parametrize("n_users, n_items, n_ratings", [(40, 30, 1_000), (2_000, 3_000, 50_000)])
def test_popularity_follows_zipf(n_users, n_items, n_ratings):
    # Both regimes: exact weighted sampling (dense) and rejection (sparse).
    r, truth = data.synthetic(n_users, n_items, n_ratings, user_zipf=0.8, item_zipf=1.1, seed=0)
    for counts, popularity in ((r.user_counts(), truth.user_popularity), (r.item_counts(), truth.item_popularity)):
        rho = stats.spearmanr(counts, popularity).statistic
        assert rho > 0.8
    # Ids are shuffled: the most popular item is not item 0 in general.
    assert np.argmax(truth.item_popularity) != 0 or np.argmax(truth.user_popularity) != 0


def test_noise_free_ratings_equal_the_truth():
    r, truth = data.synthetic(100, 80, 2_000, rank=5, noise=0.0, scale=None, step=None, seed=1)
    np.testing.assert_allclose(r.ratings, truth.score(r.users, r.items), rtol=1e-6)
    naive = truth.mean + np.array([
        np.sum(truth.singular_values * truth.user_factors[u] * truth.item_factors[i])
        for u, i in zip(r.users, r.items)
    ])
    np.testing.assert_allclose(r.ratings, naive, rtol=1e-5, atol=1e-5)


def test_spectrum_and_scale():
    r, truth = data.synthetic(500, 400, 20_000, rank=10, spectrum_decay=1.5, signal_std=1.2, seed=2)
    sigma = truth.singular_values
    np.testing.assert_allclose(sigma[1:] / sigma[:-1], (np.arange(2, 11) / np.arange(1, 10)) ** -1.5)
    assert np.sqrt(np.sum(sigma**2)) == pytest.approx(1.2)
    assert set(np.unique(r.ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    half, _ = data.synthetic(50, 40, 500, step=0.5, scale=(0.5, 5.0), seed=2)
    assert np.all(np.mod(half.ratings * 2, 1) == 0) and half.ratings.min() >= 0.5


def test_temporal_split_works_on_synthetic():
    r, _ = data.synthetic(100, 50, 1_000, seed=0)
    train, test = data.split(r, "temporal")
    assert train.timestamps.max() <= test.timestamps.min()


def test_bad_arguments():
    with pytest.raises(ValueError, match="exceeds the 200 possible"):
        data.synthetic(10, 20, 201)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        data.synthetic(10, 20, 10, rank=0)
    with pytest.raises(ValueError, match="Zipf exponent must be >= 0"):
        data.synthetic(10, 20, 10, user_zipf=-1)


def test_full_matrix_is_possible():
    r, _ = data.synthetic(7, 9, 63, user_zipf=2.0, item_zipf=2.0, seed=0)
    assert len(r) == 63
