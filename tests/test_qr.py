"""Quotient-remainder embeddings as a scheme: lookup, special cases, counts, budgets and training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mdcf import checkpoint, embeddings
from conftest import assert_params_close, model_on, small_ratings, sparse_and_dense
from mdcf.embeddings import QRSpec, qr


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 500), st.integers(1, 40), st.sampled_from(qr.OPERATIONS), st.integers(2, 6),
       st.integers(0, 2**31 - 1))
@example(7, 3, "concat", 5, 0)  # an odd dim: the two tables' widths differ
def test_lookup_matches_a_naive_reference(n_rows, collisions, operation, dim, draw):
    spec = QRSpec(n_rows, collisions, dim, operation)
    rng = np.random.default_rng(draw)
    quotient = rng.standard_normal((spec.quotient_rows, spec.dims[0])).astype(np.float32)
    remainder = rng.standard_normal((collisions, spec.dims[1])).astype(np.float32)
    ids = rng.integers(-2, n_rows + 2, 32)
    want = []
    for x in ids:
        if not 0 <= x < n_rows:
            want.append(np.full(dim, np.nan, np.float32))
            continue
        q, r = quotient[x // collisions], remainder[x % collisions]
        combine = {"mult": lambda: q * r, "add": lambda: q + r, "concat": lambda: np.concatenate([q, r])}
        want.append(combine[operation]())
    got = jax.jit(qr.lookup, static_argnums=1)((jnp.asarray(quotient), jnp.asarray(remainder)), spec,
                                               jnp.asarray(ids, jnp.int32))
    np.testing.assert_allclose(np.asarray(got), np.array(want), rtol=1e-6)


@pytest.mark.parametrize("operation", ["mult", "add"])
def test_one_collision_is_a_plain_table_and_every_layer_starts_as_its_quotient_table(operation):
    spec = QRSpec(50, 1, 4, operation)
    params = embeddings.init(jax.random.key(0), spec)
    np.testing.assert_array_equal(embeddings.lookup(params, spec, jnp.arange(50)), params[0])
    wide = QRSpec(50, 7, 4, operation)
    quotient, _ = embeddings.init(jax.random.key(0), wide)
    np.testing.assert_array_equal(embeddings.lookup(embeddings.init(jax.random.key(0), wide), wide, jnp.arange(50)),
                                  quotient[np.arange(50) // 7])


def test_counts_and_budgets_are_exact():
    spec = QRSpec(10_000, 4, 16)
    assert embeddings.num_params(spec) == 2_500 * 16 + 4 * 16
    assert embeddings.num_params(QRSpec(10_001, 4, 7, "concat")) == 2_501 * 4 + 4 * 3
    assert embeddings.nbytes(spec) == 4 * embeddings.num_params(spec)
    for m in (3, 10, 40):
        budget = embeddings.num_params(QRSpec(10_000, m, 16))
        assert qr.for_budget(budget, 10_000, 16).collisions == m
        assert qr.for_budget(budget + budget // 200, 10_000, 16).collisions == m  # within 1% below
        assert qr.for_budget(budget * 4, 10_000, 16, unit="bytes").collisions == m
    with pytest.raises(ValueError, match="no collision count lands within 1.0% below 36,000 params"):
        qr.for_budget(36_000, 10_000, 16)
    with pytest.raises(ValueError, match="below the smallest QR layer"):
        qr.for_budget(100, 10_000, 16)
    with pytest.raises(ValueError, match="operation must be one of"):
        QRSpec(10, 2, 4, "max")


@pytest.mark.parametrize("operation", ["mult", "concat"])
def test_a_model_on_qr_tables_trains_row_sparse_as_dense(operation, tmp_path):
    ratings = small_ratings()
    model = model_on(ratings, QRSpec(80, 6, 4, operation), QRSpec(60, 5, 4, operation))
    config = model.config
    sparse, dense = sparse_and_dense(model, ratings)
    assert_params_close(sparse.params, dense.params)
    checkpoint.save(tmp_path / "qr.mdcf", model, sparse.params)
    assert checkpoint.load(tmp_path / "qr.mdcf", model=model).model.config == config
