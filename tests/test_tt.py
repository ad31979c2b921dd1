"""Tensor-train embeddings as a scheme: lookup, full ranks, counts, budgets and training."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdcf import checkpoint, embeddings, train
from conftest import assert_params_close, model_on, small_ratings, sparse_and_dense
from mdcf.embeddings import TTSpec, tt


def naive_row(cores, spec: TTSpec, x: int) -> np.ndarray:
    """Row ``x`` by the defining sum, entry by entry."""
    (_, n2, n3), (d1, d2, d3), (r1, r2) = spec.row_factors, spec.dim_factors, spec.ranks
    i1, i2, i3 = x // (n2 * n3), x // n3 % n2, x % n3
    g1 = cores[0][i1].reshape(d1, r1)
    g2 = cores[1][i2].reshape(r1, d2, r2)
    g3 = cores[2][i3].reshape(r2, d3)
    out = np.zeros((d1, d2, d3))
    for a in range(d1):
        for b in range(d2):
            for c in range(d3):
                out[a, b, c] = sum(g1[a, p] * g2[p, b, q] * g3[q, c] for p in range(r1) for q in range(r2))
    return out.reshape(-1)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 300), st.sampled_from([1, 2, 4, 6, 8]), st.integers(1, 3), st.integers(1, 3),
       st.integers(0, 2**31 - 1))
def test_lookup_matches_the_defining_sum(n_rows, dim, r1, r2, draw):
    spec = tt.tt_spec(n_rows, dim, (r1, r2))
    rng = np.random.default_rng(draw)
    cores = [rng.standard_normal((n, w)).astype(np.float32) for n, w in zip(spec.row_factors, spec.core_widths)]
    for size in (16, 400):  # per-id products, and (400 ids >= n1 n2 pairs) the pairs path
        ids = rng.integers(-2, n_rows + 2, size)
        want = np.array([naive_row(cores, spec, x) if 0 <= x < n_rows else np.full(dim, np.nan) for x in ids])
        got = jax.jit(tt.lookup, static_argnums=1)(tuple(map(jnp.asarray, cores)), spec, jnp.asarray(ids, jnp.int32))
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_the_pairs_path_has_the_per_id_gradient():
    spec = tt.tt_spec(300, 8, (3, 2))
    assert math.prod(spec.row_factors[:2]) > 16
    cores = tt.init(jax.random.key(0), spec)
    ids = jax.random.randint(jax.random.key(1), (256,), 0, 300)
    weights = jax.random.normal(jax.random.key(2), (256, 8))

    def loss(cores, chunk):  # chunks of 16 ids take the per-id products, one chunk of 256 the pairs
        parts = [tt.lookup(cores, spec, ids[i:i + chunk]) for i in range(0, 256, chunk)]
        return jnp.sum(jnp.concatenate(parts) * weights)

    for got, want in zip(jax.grad(loss)(cores, 256), jax.grad(loss)(cores, 16)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_rows, dim", [(50, 8), (7, 6), (120, 4)])
def test_full_ranks_reproduce_any_table_and_lower_ranks_truncate(n_rows, dim):
    table = np.random.default_rng(n_rows).standard_normal((n_rows, dim)).astype(np.float32)
    full = tt.tt_spec(n_rows, dim, tt.tt_spec(n_rows, dim, (1, 1)).full_ranks)
    cores = tt.from_table(table, full)
    np.testing.assert_allclose(np.asarray(tt.lookup(cores, full, jnp.arange(n_rows))), table, atol=1e-4)
    # Ranks above the unfoldings' own are padded with zeros: the same table.
    wide = tt.tt_spec(n_rows, dim, tuple(r + 3 for r in full.ranks))
    np.testing.assert_allclose(np.asarray(tt.lookup(tt.from_table(table, wide), wide, jnp.arange(n_rows))), table,
                               atol=1e-4)
    # Truncated: a worse fit, but the best rank-r1 fit of the first unfolding bounds the error from below.
    low = tt.tt_spec(n_rows, dim, (1, 1))
    error = np.linalg.norm(np.asarray(tt.lookup(tt.from_table(table, low), low, jnp.arange(n_rows))) - table)
    assert 0 < error <= np.linalg.norm(table)
    with pytest.raises(ValueError, match=rf"the table must be \[{n_rows}, {dim}\]"):
        tt.from_table(table[:, :-1], full)


def test_counts_factors_and_budgets_are_exact():
    spec = TTSpec(1_000, 16, (10, 10, 10), (2, 2, 4), (3, 5))
    assert embeddings.num_params(spec) == 10 * 2 * 3 + 10 * 3 * 2 * 5 + 10 * 5 * 4
    assert embeddings.nbytes(spec) == 4 * embeddings.num_params(spec)
    assert embeddings.nbytes(spec, jnp.bfloat16) == 2 * embeddings.num_params(spec)
    assert tt.factor_rows(1_000) == (10, 10, 10) and tt.factor_rows(1_001) == (11, 11, 9)
    assert tt.factor_dim(64) == (4, 4, 4) and tt.factor_dim(16) == (2, 2, 4) and tt.factor_dim(7) == (1, 1, 7)
    assert tt.tt_spec(1, 1, (1, 1)).full_ranks == (1, 1)
    for n_rows, dim, budget in [(10_000, 16, 20_000), (138_493, 64, 138_493 * 8), (5_000, 32, 60_000)]:
        for unit, scale in (("params", 1), ("bytes", 4)):
            found = tt.for_budget(budget * scale, n_rows, dim, unit=unit)
            cost = embeddings.num_params(found) * scale
            assert 0.99 * budget * scale <= cost <= budget * scale, (found, cost)
            assert found.ranks[0] <= found.full_ranks[0] and found.ranks[1] <= found.full_ranks[1]
    with pytest.raises(ValueError, match="below the TT layer of 10,000 rows and dim 16 at ranks"):
        tt.for_budget(100, 10_000, 16)
    with pytest.raises(ValueError, match="full ranks"):
        tt.for_budget(10**7, 10_000, 16)
    with pytest.raises(ValueError, match="cover 990 rows, fewer than n_rows=1,000"):
        TTSpec(1_000, 16, (9, 11, 10), (2, 2, 4), (3, 5))
    with pytest.raises(ValueError, match="multiply to 8, not dim=16"):
        TTSpec(1_000, 16, (10, 10, 10), (2, 2, 2), (3, 5))
    with pytest.raises(ValueError, match="ranks must be 2 integers >= 1"):
        TTSpec(1_000, 16, (10, 10, 10), (2, 2, 4), (0, 5))
    assert embeddings.spec_from_dict(spec.to_dict()) == spec


def test_initial_rows_have_the_table_spread():
    spec = tt.tt_spec(4_000, 16, (6, 6))
    rows = embeddings.lookup(embeddings.init(jax.random.key(3), spec, stddev=0.1), spec, jnp.arange(4_000))
    assert abs(float(jnp.std(rows)) - 0.1) < 0.02  # each coordinate ~ N(0, 0.1**2) as a plain table's


@pytest.mark.parametrize("pairs", [True, False])
def test_a_model_on_tt_tables_trains_row_sparse_as_dense(tmp_path, monkeypatch, pairs):
    # Batches of 512 ids hold every (i1, i2) pair of these cores: the pairs path; the
    # per-id path is forced for the second run.
    ratings = small_ratings()
    model = model_on(ratings, tt.tt_spec(80, 4, (2, 3)), tt.tt_spec(60, 4, (3, 2)))
    config = model.config
    assert tt.uses_pairs(config.user, 512) and tt.uses_pairs(config.item, 512)
    if not pairs:
        monkeypatch.setattr(tt, "uses_pairs", lambda spec, batch: False)
    jax.clear_caches()  # steps compiled with the other path must not be reused
    sparse, dense = sparse_and_dense(model, ratings)
    assert_params_close(sparse.params, dense.params)
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(sparse.params["tables"]),
                                                   jax.tree.leaves(train.init_state(jax.random.key(0), config, train.optimizer("adagrad", 0.05), global_mean=3.0).params["tables"]))]
    assert any(moved)
    checkpoint.save(tmp_path / "tt.mdcf", model, sparse.params)
    assert checkpoint.load(tmp_path / "tt.mdcf", model=model).model.config == config
    assert math.isfinite(train.evaluate(model, sparse.params, ratings)["rmse"])
