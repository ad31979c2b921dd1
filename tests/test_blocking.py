"""Frequency equipartition (Algorithm 2) and CTR stacking."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdcf import blocking, data

counts_strategy = st.lists(st.integers(0, 1000), min_size=1, max_size=150).map(np.array)


@settings(max_examples=200, deadline=None)
@given(counts=counts_strategy, k=st.integers(1, 20))
def test_equipartition_invariants(counts, k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = blocking.equipartition(counts, k)
    n = len(counts)
    # A valid permutation and its inverse.
    assert sorted(b.order.tolist()) == list(range(n))
    np.testing.assert_array_equal(b.position[b.order], np.arange(n))
    # Most frequent first, ties by row id.
    sorted_counts = counts[b.order]
    assert (np.diff(sorted_counts) <= 0).all()
    for j in range(n - 1):
        if sorted_counts[j] == sorted_counts[j + 1]:
            assert b.order[j] < b.order[j + 1]
    # Non-empty contiguous blocks covering every row.
    assert b.n_blocks == min(k, n) and min(b.sizes) >= 1 and sum(b.sizes) == n
    bounds = np.concatenate([[0], np.cumsum(b.sizes)])
    weights = counts.astype(float) if counts.sum() > 0 else np.ones(n)
    for i in range(b.n_blocks):
        assert b.mass[i] == pytest.approx(weights[b.order[bounds[i]:bounds[i + 1]]].sum())
    # Popularity (per row) never increases from one block to the next.
    assert (np.diff(b.row_probs) <= 1e-12).all()
    np.testing.assert_allclose(b.probs.sum(), 1.0)
    # Balance: within one row's mass of tau / k whenever no row alone exceeds tau / k.
    total = weights.sum()
    if weights.max() <= total / b.n_blocks:
        assert np.all(np.abs(np.array(b.mass) - total / b.n_blocks) <= weights.max())
    # Never-seen rows all sit in the rarest block whenever the seen rows can fill the
    # others (at least one seen row for each block but the last).
    unseen = np.flatnonzero(counts == 0)
    if counts.sum() > 0 and np.count_nonzero(counts) >= b.n_blocks - 1 and unseen.size:
        assert (b.block_of(unseen) == b.n_blocks - 1).all()
    # block_of agrees with the positions.
    rows = np.arange(n)
    np.testing.assert_array_equal(b.block_of(rows), np.searchsorted(bounds[1:], b.position, side="right"))


def test_example_and_unseen_rows_go_last():
    b = blocking.equipartition([0, 5, 1, 0, 2, 2], k=2)
    assert list(b.order) == [1, 4, 5, 2, 0, 3]
    assert b.sizes == (1, 5) and b.mass == (5.0, 5.0)
    assert set(b.order[-2:]) == {0, 3}  # never-seen rows sit in the rarest block
    # One seen row and three blocks: the middle block can only get a never-seen row.
    b = blocking.equipartition([0, 100, 0, 0], k=3)
    assert b.sizes == (1, 1, 2) and list(b.order) == [1, 0, 2, 3] and b.mass == (100.0, 0.0, 0.0)


def test_k_larger_than_rows_warns_and_uses_single_rows():
    with pytest.warns(UserWarning, match="k=10 exceeds the 3 rows"):
        b = blocking.equipartition([3, 1, 2], 10)
    assert b.sizes == (1, 1, 1) and list(b.order) == [0, 2, 1]


def test_all_equal_counts_give_equal_blocks():
    b = blocking.equipartition(np.full(100, 7), 8)
    assert max(b.sizes) - min(b.sizes) <= 1 and sum(b.sizes) == 100
    assert list(b.order) == list(range(100))


def test_one_dominant_row_leaves_no_empty_block():
    b = blocking.equipartition([1_000_000, 1, 1, 1, 1, 1], 4)
    assert b.sizes[0] == 1 and min(b.sizes) >= 1 and b.n_blocks == 4
    assert b.mass[0] == 1_000_000


def test_all_zero_counts_are_treated_as_equal():
    b = blocking.equipartition(np.zeros(9), 3)
    assert b.sizes == (3, 3, 3) and b.mass == (3.0, 3.0, 3.0)


@pytest.mark.parametrize("bad, error", [(np.array([1, -1]), ValueError), (np.array([[1, 2]]), ValueError),
                                         (np.array([]), ValueError), (np.array([1.0, np.nan]), ValueError),
                                         (np.array(["a"]), TypeError)])
def test_bad_counts(bad, error):
    with pytest.raises(error):
        blocking.equipartition(bad, 2)


def test_bad_k():
    with pytest.raises(ValueError, match="k must be a positive integer"):
        blocking.equipartition([1, 2], 0)


def test_ml100k_cuts_match_the_published_popularity(ml100k_dir):
    r = data.load_movielens("ml-100k", data_dir=ml100k_dir, verbose=False)
    items = blocking.equipartition(r.item_counts(), 8)
    users = blocking.equipartition(r.user_counts(), 8)
    assert np.cumsum(items.sizes)[:-1].tolist() == [31, 78, 138, 214, 315, 458, 686]
    assert items.sizes[0] == 31 and items.sizes[-1] == 996
    assert np.cumsum(users.sizes)[:-1].tolist() == [27, 67, 117, 180, 260, 368, 548]


def test_stack():
    b = blocking.stack([10, 1000, 5])
    assert b.sizes == (10, 1000, 5) and b.offsets == (0, 10, 1010)
    np.testing.assert_array_equal(b.order, np.arange(1015))
    np.testing.assert_allclose(b.row_probs, np.array([1 / 10, 1 / 1000, 1 / 5]) / 3)
    twice = blocking.stack([10, 10], queries=[2, 1])
    assert twice.row_probs[0] == pytest.approx(2 * twice.row_probs[1])
    with pytest.raises(ValueError, match="positive row counts"):
        blocking.stack([3, 0])
    with pytest.raises(ValueError, match="one positive value per table"):
        blocking.stack([3, 4], queries=[1])
