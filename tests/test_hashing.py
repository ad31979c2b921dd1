"""The hashing trick as an embedding scheme: its hash, lookup, counts, budgets and training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdcf import checkpoint, embeddings, models, train
from conftest import assert_params_close, model_on, small_ratings, sparse_and_dense
from mdcf.embeddings import HashSpec, hashing


def naive_buckets(spec: HashSpec, ids: np.ndarray):
    """The hash in numpy with explicit mod-2**32 arithmetic on Python ints."""
    rows, signs = [], []
    for x in ids.tolist():
        h = (x % 2**32) ^ ((spec.seed * 0x9E3779B9 + 0x7F4A7C15) % 2**32)
        h ^= h >> 16
        h = (h * 0x85EBCA6B) % 2**32
        h ^= h >> 13
        h = (h * 0xC2B2AE35) % 2**32
        h ^= h >> 16
        rows.append(h % spec.n_buckets if 0 <= x < spec.n_rows else spec.n_buckets)
        signs.append(-1.0 if spec.signed and h >> 31 else 1.0)
    return np.array(rows), np.array(signs)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 5_000), st.integers(1, 300), st.integers(0, 2**32 - 1), st.booleans(), st.integers(0, 2**31 - 1))
def test_lookup_matches_a_naive_reference(n_rows, n_buckets, seed, signed, draw):
    spec = HashSpec(n_rows, n_buckets, 3, seed, signed)
    ids = np.random.default_rng(draw).integers(-3, n_rows + 3, 64)
    table = np.random.default_rng(draw + 1).standard_normal((n_buckets, 3)).astype(np.float32)
    rows, signs = naive_buckets(spec, ids)
    want = np.where((rows < n_buckets)[:, None], table[np.minimum(rows, n_buckets - 1)] * signs[:, None], np.nan)
    got = jax.jit(hashing.lookup, static_argnums=1)(jnp.asarray(table), spec, jnp.asarray(ids, jnp.int32))
    np.testing.assert_array_equal(np.asarray(got), want)


def test_the_hash_spreads_ids_and_signs():
    spec = HashSpec(100_000, 64, 2, seed=7, signed=True)
    rows, signs = hashing.buckets(spec, jnp.arange(100_000))
    counts = np.bincount(np.asarray(rows), minlength=64)
    assert counts.min() > 0.9 * 100_000 / 64 and counts.max() < 1.1 * 100_000 / 64
    assert 0.45 < float(np.mean(np.asarray(signs) > 0)) < 0.55
    other = HashSpec(100_000, 64, 2, seed=8)
    assert np.mean(np.asarray(hashing.buckets(other, jnp.arange(1000))[0]) == np.asarray(rows[:1000])) < 0.05


def test_counts_and_budgets_are_exact():
    spec = HashSpec(10_000, 250, 16)
    assert embeddings.num_params(spec) == 250 * 16 and embeddings.nbytes(spec) == 250 * 16 * 4
    assert embeddings.nbytes(spec, jnp.bfloat16) == 250 * 16 * 2
    for budget in (1_600, 99_999, 123_457):
        params = hashing.for_budget(budget, 10_000, 16)
        assert 0.99 * budget <= embeddings.num_params(params) <= budget
        in_bytes = hashing.for_budget(budget * 4, 10_000, 16, unit="bytes")
        assert 0.99 * budget * 4 <= embeddings.nbytes(in_bytes) <= budget * 4
    with pytest.raises(ValueError, match="budget must be a whole number >= one row"):
        hashing.for_budget(15, 10_000, 16)
    with pytest.raises(ValueError, match="HashSpec: n_buckets must be an integer >= 1"):
        HashSpec(10, 0, 4)


@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_a_model_on_hashed_tables_trains_row_sparse_as_dense(name, tmp_path):
    ratings = small_ratings()
    model = model_on(ratings, HashSpec(80, 20, 4, seed=1, signed=True), HashSpec(60, 15, 4, seed=2))
    config = model.config
    assert models.num_params(config) == 20 * 4 + 15 * 4 + 80 + 60 + 1
    sparse, dense = sparse_and_dense(model, ratings, name)
    assert_params_close(sparse.params, dense.params)
    checkpoint.save(tmp_path / "hashed.mdcf", model, sparse.params)
    loaded = checkpoint.load(tmp_path / "hashed.mdcf", model=model)
    assert loaded.model.config == config
    fitted = train.fit(model, ratings, epochs=2, batch_size=256, progress=False, sparse=True)
    assert np.isfinite(train.evaluate(model, fitted.params, ratings)["rmse"])
