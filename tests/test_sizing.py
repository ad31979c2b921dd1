"""Popularity-based dimensions (Algorithm 3), dlrm parity and exact budgets."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mdcf import blocking, sizing
from mdcf.embeddings import MDSpec, num_params

CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
          14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


@pytest.mark.parametrize(
    "alpha, round_dim, expected",
    [
        (0.1, False, [9, 9, 4, 4, 10, 13, 7, 9, 16, 6, 8, 4, 8, 13, 7, 4, 14, 8, 8, 16, 4, 13, 14, 5, 11, 5]),
        (0.3, False, [3, 3, 1, 1, 4, 9, 1, 3, 16, 1, 2, 1, 2, 8, 1, 1, 11, 2, 2, 15, 1, 9, 10, 1, 6, 1]),
        (0.3, True, [4, 4, 1, 1, 4, 8, 1, 4, 16, 1, 2, 1, 2, 8, 1, 1, 8, 2, 2, 16, 1, 8, 8, 1, 8, 1]),
    ],
)
def test_md_solver_reproduces_dlrm_on_criteo(alpha, round_dim, expected):
    dims = sizing.md_solver(CRITEO, alpha, d0=16, round_dim=round_dim)
    assert dims.dtype.kind == "i"
    assert dims.tolist() == expected


@pytest.mark.parametrize("alpha, expected", [(0.5, [87, 28, 9, 3]), (0.25, [19, 10, 6, 3]), (0.0, [4, 4, 4, 4])])
def test_md_solver_budget_mode(alpha, expected):
    assert sizing.md_solver([10, 100, 1000, 10000], alpha, B=40000, round_dim=False).tolist() == expected


def test_md_solver_rounding_and_order():
    # Power-of-two rounding in the log domain after integer rounding (dlrm's double rounding).
    assert sizing.md_solver([1, 2], 0.0, d0=6, round_dim=True).tolist() == [8, 8]
    assert sizing.md_solver([1000, 10], 0.5, d0=16, round_dim=False).tolist() == [2, 16]  # input order kept
    with pytest.raises(ValueError, match="Must specify either d0 or B"):
        sizing.md_solver([1, 2], 0.5)


def test_md_solver_lookups_per_example_and_bad_arguments():
    # v = n / k: 10, 50, 250 -> 16 * (10 / v) ** 0.3 = 16, 9.87, 6.09.
    assert sizing.md_solver([10, 100, 1000], 0.3, d0=16, round_dim=False, k=[1, 2, 4]).tolist() == [16, 10, 6]
    # As in dlrm, tables are ordered by n, not by n / k: the smaller table gets d0 even when the
    # larger one has the smaller v (5 against 10), which then gets 16 * (10 / 5) ** 0.5 = 22.6.
    assert sizing.md_solver([100, 10], 0.5, d0=16, round_dim=False, k=[20, 1]).tolist() == [23, 16]
    for k in (2, [1, 2], [1, 0, 2], [1, float("nan"), 2]):
        with pytest.raises(ValueError, match="k must give a positive average number of lookups .* 3 tables"):
            sizing.md_solver([10, 100, 1000], 0.3, d0=16, k=k)
    with pytest.raises(ValueError, match="d0 must be a positive number, got -3"):
        sizing.md_solver([10, 100], 0.3, d0=-3)
    with pytest.raises(ValueError, match="B must be a positive number, got 0"):
        sizing.md_solver([10, 100], 0.3, B=0)


def test_popularity_dims_basics():
    assert sizing.popularity_dims([0.04, 0.01, 0.0025], 0.5, base_dim=32) == (32, 16, 8)
    assert sizing.popularity_dims([0.04, 0.01, 0.0025], 0.0, base_dim=32) == (32, 32, 32)
    assert sizing.popularity_dims([0.04, 0.01], 0.0, budget=300, sizes=(10, 20)) == (10, 10)
    assert sizing.popularity_dims([0.04, 0.01, 0.0025], 0.6, base_dim=32, round_pow2=True) == (32, 16, 8)
    assert sizing.popularity_dims([1.0, 1e-9], 1.0, base_dim=8, min_dim=2) == (8, 2)
    with pytest.raises(ValueError, match="exactly one of base_dim"):
        sizing.popularity_dims([1.0], 0.5)
    with pytest.raises(ValueError, match="budget needs sizes"):
        sizing.popularity_dims([1.0], 0.5, budget=10)
    with pytest.raises(ValueError, match="alpha"):
        sizing.popularity_dims([1.0], -0.1, base_dim=4)


probs_strategy = st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(probs=probs_strategy, alpha=st.floats(0, 1.5), base_dim=st.integers(1, 128), pow2=st.booleans())
def test_popularity_dims_properties(probs, alpha, base_dim, pow2):
    dims = sizing.popularity_dims(probs, alpha, base_dim=base_dim, round_pow2=pow2)
    order = np.argsort(-np.array(probs), kind="stable")
    ordered = np.array(dims)[order]
    assert (np.diff(ordered) <= 0).all()  # non-increasing as popularity falls
    assert max(dims) == base_dim or (pow2 and max(dims) <= base_dim)
    assert min(dims) >= 1 and max(dims) <= base_dim
    if alpha == 0:
        assert set(dims) == {base_dim} or pow2
    if pow2:
        assert all(d & (d - 1) == 0 or d == base_dim for d in dims)


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(1, 10_000), min_size=1, max_size=10), alpha=st.floats(0, 1), scale=st.floats(2, 200))
def test_budget_mode_meets_the_budget_before_rounding(sizes, alpha, scale):
    b = blocking.stack(sizes)
    budget = scale * sum(sizes)
    # The unrounded allocation meets the budget exactly; rounding moves each block by < 0.5.
    dims = np.array(sizing.popularity_dims(b.row_probs, alpha, budget=budget, sizes=sizes))
    relative = (b.row_probs / b.row_probs.max()) ** alpha
    exact = budget / np.sum(np.array(sizes) * relative) * relative
    assert np.sum(np.array(sizes) * exact) == pytest.approx(budget)
    assert np.all(np.abs(dims - np.maximum(exact, 1)) <= 0.5 + 1e-9)


def _near_half(values):
    """Within float32 rounding of a .5 tie (dlrm computes in float32, mdcf in float64)."""
    frac = np.abs(values - np.floor(values) - 0.5)
    return frac < 1e-4 + 4e-6 * np.abs(values)


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(1, 10**7), min_size=1, max_size=12), alpha=st.floats(0, 1), d0=st.integers(2, 64))
def test_popularity_dims_matches_dlrm_on_stacked_tables(sizes, alpha, d0):
    b = blocking.stack(sizes)
    ours = np.array(sizing.popularity_dims(b.row_probs, alpha, base_dim=d0))
    theirs = sizing.md_solver(sizes, alpha, d0=d0, round_dim=False)
    n = np.array(sizes, dtype=float)
    real = d0 * (n.min() / n) ** alpha
    differ = ours != theirs
    assert not differ.any() or _near_half(real[differ]).all()  # only float32 vs float64 ties at .5


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(1, 10**6), min_size=1, max_size=12), alpha=st.floats(0, 1), scale=st.floats(1, 100))
def test_popularity_dims_matches_dlrm_budget_mode(sizes, alpha, scale):
    b = blocking.stack(sizes)
    budget = float(int(scale * sum(sizes)))
    ours = np.array(sizing.popularity_dims(b.row_probs, alpha, budget=budget, sizes=sizes))
    theirs = sizing.md_solver(sizes, alpha, B=budget, round_dim=False)
    n = np.array(sizes, dtype=float)
    real = np.maximum(budget * n**-alpha / np.sum(n ** (1 - alpha)), 1)
    differ = ours != theirs
    assert not differ.any() or _near_half(real[differ]).all()


def test_num_params_by_hand():
    assert num_params(MDSpec((10, 20), (8, 4), 8)) == 10 * 8 + 20 * 4 + 4 * 8
    assert num_params(MDSpec.uniform(100, 16)) == 1600
    assert num_params(MDSpec((5,), (3,), 8)) == 5 * 3 + 3 * 8  # one projected block (low rank)
    assert sizing.num_params is num_params


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 2_000), min_size=1, max_size=10),
    alpha=st.floats(0, 1),
    base_dim=st.sampled_from([4, 8, 16, 32, 64]),
    fraction=st.floats(0.05, 1.0),
    pow2=st.booleans(),
    data=st.data(),
)
def test_solve_budget(sizes, alpha, base_dim, fraction, pow2, data):
    probs = np.sort(np.array(data.draw(st.lists(st.floats(1e-4, 1), min_size=len(sizes), max_size=len(sizes)))))[::-1]
    largest = sum(sizes) * base_dim
    budget = int(fraction * largest)
    smallest = num_params(MDSpec(tuple(sizes), (1,) * len(sizes), base_dim))
    assume(budget >= smallest)
    try:
        spec = sizing.solve_budget(budget, sizes, probs, base_dim, alpha, round_pow2=pow2)
    except ValueError as err:
        assert "budget" in str(err)
        # Only when no block can take one more step without overshooting.
        assert 0.01 * budget < max(sizes) + base_dim or pow2
        return
    total = num_params(spec)
    assert 0.99 * budget <= total <= budget
    assert spec.base_dim == base_dim and spec.sizes == tuple(sizes)
    assert (np.diff(np.array(spec.dims)) <= 0).all()  # popular blocks never get fewer dims
    if pow2:
        assert all(d & (d - 1) == 0 or d == base_dim for d in spec.dims)


def test_solve_budget_alpha_zero_at_natural_budgets_is_uniform():
    sizes, probs = (31, 47, 60, 76, 101, 143, 228, 996), np.linspace(1, 0.1, 8)
    spec = sizing.solve_budget(1682 * 64, sizes, probs, 64, 0.0)
    assert spec.dims == (64,) * 8 and num_params(spec) == 1682 * 64


def test_solve_budget_unreachable_budgets_explain_themselves():
    sizes, probs = (31, 47, 60, 76, 101, 143, 228, 996), np.linspace(1, 0.1, 8)
    with pytest.raises(ValueError, match="below the smallest MD layer"):
        sizing.solve_budget(1_000, sizes, probs, 64, 0.5)
    with pytest.raises(ValueError, match="exceeds the largest layer"):
        sizing.solve_budget(1682 * 64 * 2, sizes, probs, 64, 0.5)
    with pytest.raises(ValueError, match=r"within 1\.0% below budget") as error:
        sizing.solve_budget(2_250, sizes, probs, 64, 0.5)
    # Every block at dimension 1: growing one to 2 costs its rows plus a projection column of 64.
    assert "changes the total by +95, +111, +124, +140, +165, +207, +292, +1,060 parameters" in str(error.value)
    with pytest.raises(ValueError, match=r"dims \(8, 1\); .* by -, \+108 parameters"):
        sizing.solve_budget(120, (1, 100), (1, 0.01), 8, 1.0, tolerance=0.0)


def test_uniform_dim_for_budget():
    assert sizing.uniform_dim_for_budget(1682 * 8, 1682) == 8
    assert sizing.uniform_dim_for_budget(1682 * 8 + 1000, 1682) == 8
    with pytest.raises(ValueError, match="below one dimension per row"):
        sizing.uniform_dim_for_budget(100, 1682)
    with pytest.raises(ValueError, match="n_rows must be a positive integer, got 0"):
        sizing.uniform_dim_for_budget(100, 0)
