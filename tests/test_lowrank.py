"""Low-rank embeddings: the one-block MD layer, its counts, its budget solver, its training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_params_close, model_on, small_ratings, sparse_and_dense
from mdcf import embeddings
from mdcf.embeddings import lowrank


def test_low_rank_is_a_table_times_a_shared_matrix():
    spec = lowrank.low_rank(50, 3, 8)
    assert spec == embeddings.MDSpec((50,), (3,), 8)  # MD with one block: the special case, by construction
    params = embeddings.init(jax.random.key(0), spec)
    (table,), (matrix,) = embeddings.split(spec, params)
    assert table.shape == (50, 3) and matrix.shape == (3, 8)
    ids = jnp.array([0, 7, 49, 7])
    np.testing.assert_allclose(embeddings.lookup(params, spec, ids), np.asarray(table)[ids] @ np.asarray(matrix),
                               rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(embeddings.lookup(p, spec, ids) ** 2))(params)
    want_table = jax.grad(lambda t: jnp.sum((t[ids] @ matrix) ** 2))(table)
    np.testing.assert_allclose(embeddings.split(spec, grads)[0][0], want_table, rtol=1e-5, atol=1e-6)
    assert embeddings.num_params(spec) == 50 * 3 + 3 * 8
    assert embeddings.nbytes(spec, jnp.bfloat16) == (50 * 3 + 3 * 8) * 2
    full = lowrank.low_rank(50, 8, 8)
    assert embeddings.num_params(full) == 50 * 8  # rank d0: a plain table, no matrix


def test_budget_solver_lands_within_one_percent_below():
    for rank in (1, 4, 12, 31):  # a rank step costs 10,032 params: budgets just above a rank's cost
        budget = 10_000 * rank + 32 * rank + 50
        spec = lowrank.for_budget(budget, 10_000, 32)
        cost = embeddings.num_params(spec)
        assert 0.99 * budget <= cost <= budget and spec.dims == (rank,)
        assert embeddings.num_params(lowrank.low_rank(10_000, spec.dims[0] + 1, 32)) > budget or spec.dims[0] == 32
        assert lowrank.for_budget(budget * 4, 10_000, 32, unit="bytes") == spec
    with pytest.raises(ValueError, match="no rank lands within 1.0% below 15,000 params: rank 1 gives 10,032"):
        lowrank.for_budget(15_000, 10_000, 32)
    with pytest.raises(ValueError, match="below the rank-1 layer"):
        lowrank.for_budget(5_000, 10_000, 32)
    with pytest.raises(ValueError, match="rank must be at most dim"):
        lowrank.low_rank(10, 9, 8)
    with pytest.raises(ValueError, match="unit must be"):
        lowrank.for_budget(10, 10, 4, unit="rows")


def test_a_model_on_low_rank_tables_trains_row_sparse_as_dense():
    ratings = small_ratings()
    model = model_on(ratings, lowrank.low_rank(80, 2, 4), lowrank.low_rank(60, 3, 4))
    sparse, dense = sparse_and_dense(model, ratings)
    assert_params_close(sparse.params, dense.params)
