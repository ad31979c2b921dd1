"""Splits: disjoint, covering, deterministic, with the promised per-method guarantees."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdcf import data

from conftest import UDATA_ROWS, fake_ml100k_zip


def random_ratings(seed, n_users=30, n_items=20, n=300, timestamps=True):
    rng = np.random.default_rng(seed)
    keys = rng.choice(n_users * n_items, size=n, replace=False)
    return data.from_arrays(
        keys // n_items, keys % n_items, rng.integers(1, 6, n).astype(float),
        rng.integers(0, 50, n) if timestamps else None,  # many ties on purpose
    )


def positions(part, parent):
    """Row positions of ``part`` in ``parent`` (pairs are unique)."""
    key = lambda r: r.users.astype(np.int64) * r.n_items + r.items
    order = np.argsort(key(parent))
    return order[np.searchsorted(key(parent), key(part), sorter=order)]


def check_partition(parent, result):
    train, test = result
    a, b = positions(train, parent), positions(test, parent)
    assert len(np.intersect1d(a, b)) == 0
    assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(len(parent)))
    assert train.n_users == parent.n_users and test.n_items == parent.n_items  # same code space


def naive_cold_counts(train, test):
    train_users, train_items = set(train.users.tolist()), set(train.items.tolist())
    users = {u for u in test.users.tolist() if u not in train_users}
    items = {i for i in test.items.tolist() if i not in train_items}
    rows = sum(1 for u, i in zip(test.users.tolist(), test.items.tolist()) if u in users or i in items)
    return len(users), len(items), rows


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    method=st.sampled_from(data.SPLIT_METHODS),
    fraction=st.floats(0.05, 0.6),
    n=st.integers(2, 400),
)
def test_split_properties(seed, method, fraction, n):
    ratings = random_ratings(seed, n=n)
    result = data.split(ratings, method, test_fraction=fraction, seed=seed)
    check_partition(ratings, result)
    again = data.split(ratings, method, test_fraction=fraction, seed=seed)
    np.testing.assert_array_equal(result.test.users, again.test.users)
    np.testing.assert_array_equal(result.test.items, again.test.items)
    assert (result.cold_users, result.cold_items, result.cold_ratings) == naive_cold_counts(*result)
    train, test = result
    if method in ("random", "temporal"):
        assert len(test) == min(max(round(fraction * n), 1), n - 1)
    if method == "temporal":
        assert train.timestamps.max() <= test.timestamps.min()
    if method in ("user", "user_temporal"):
        counts = ratings.user_counts()
        train_counts = train.user_counts()
        assert (train_counts[counts > 0] >= 1).all()  # every user keeps a training rating
        expected = np.minimum(np.rint(fraction * counts), np.maximum(counts - 1, 0))
        np.testing.assert_array_equal(test.user_counts(), expected)
    if method == "user_temporal":
        for u in np.unique(test.users):
            assert train.timestamps[train.users == u].max() <= test.timestamps[test.users == u].min()


def test_different_seeds_differ():
    ratings = random_ratings(0)
    a = data.split(ratings, "random", seed=1).test
    b = data.split(ratings, "random", seed=2).test
    assert not np.array_equal(a.users, b.users) or not np.array_equal(a.items, b.items)


def test_split_errors():
    ratings = random_ratings(0)
    with pytest.raises(ValueError, match="method must be one of"):
        data.split(ratings, "leave_one_out")
    for fraction in (1.0, 0, "0.5", None, True):
        with pytest.raises(ValueError, match=f"test_fraction must be a number strictly between 0 and 1, got {fraction!r}"):
            data.split(ratings, test_fraction=fraction)
    with pytest.raises(ValueError, match="needs timestamps"):
        data.split(random_ratings(0, timestamps=False), "temporal")
    with pytest.raises(ValueError, match="at least 2 ratings"):
        data.split(ratings.subset([0]))


@pytest.mark.parametrize("k", [2, 3, 7])
def test_kfold_covers_each_rating_once(k):
    ratings = random_ratings(3, n=101)
    folds = data.kfold(ratings, k, seed=4)
    assert len(folds) == k
    seen = np.concatenate([positions(f.test, ratings) for f in folds])
    assert np.array_equal(np.sort(seen), np.arange(len(ratings)))
    for fold in folds:
        check_partition(ratings, fold)
    with pytest.raises(ValueError, match="k must be an integer"):
        data.kfold(ratings, 1)


def test_cold_start_is_reported():
    ratings = data.from_arrays([0, 0, 1, 2], [0, 1, 1, 2], [1.0, 2.0, 3.0, 4.0], [1, 2, 3, 4])
    result = data.split(ratings, "temporal", test_fraction=0.25)
    assert (result.cold_users, result.cold_items, result.cold_ratings) == (1, 1, 1)
    assert "cold start in test: 1 users, 1 items, 1 ratings" in result.summary()


def test_official_split_from_an_archive(tmp_path):
    archive = fake_ml100k_zip(tmp_path / "ml-100k.zip")
    result = data.official_split("u1", archive=archive)
    full = data.read_ratings(archive)
    check_partition(full, result)
    want_test = {(u, i) for j, (u, i, _, _) in enumerate(UDATA_ROWS) if j % 2 == 0}
    got_test = set(zip(result.test.user_ids[result.test.users].tolist(), result.test.item_ids[result.test.items].tolist()))
    assert got_test == want_test


def test_official_split_needs_the_archive():
    with pytest.raises(data.DatasetUnavailableError, match="official ml-100k splits need the GroupLens archive"):
        data.official_split("u1", download=False)
    with pytest.raises(ValueError, match="which must be one of"):
        data.official_split("u9")


def test_split_on_real_ml100k(ml100k_dir):
    ratings = data.load_movielens("ml-100k", data_dir=ml100k_dir, verbose=False)
    result = data.split(ratings, "random", test_fraction=0.1, seed=0)
    assert len(result.test) == 10_000 and len(result.train) == 90_000
    assert result.cold_users == 0  # every ml-100k user has >= 20 ratings
