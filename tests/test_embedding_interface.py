"""The embedding interface: MD's row-sparse members against its lookup, and a new scheme
dropping in without any change to models or train."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mdcf
from mdcf import checkpoint, data, embeddings, io, models, train
from conftest import assert_params_close, run_steps
from mdcf.embeddings import MDSpec, md_rows


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([8, 40, 64]), st.booleans())
def test_md_row_members_give_lookup_vectors_and_gradients(seed, batch, padded):
    """vectors(gather(plan)) equals lookup for any batch (head, routed, whole and overflowing
    blocks); each leaf's gradient, placed at updated_rows, equals the whole-table gradient."""
    rng = np.random.default_rng(seed)
    spec = MDSpec((4, 12, 60, 300), (8, 6, 4, 2), 8)
    params = embeddings.init(jax.random.key(seed % 1000), spec)
    ids = rng.integers(0, spec.n_rows, batch).astype(np.int32)
    if padded:
        ids[rng.random(batch) < 0.2] = -1
    ids = jnp.asarray(ids)
    w = jnp.asarray(rng.standard_normal((batch, 8)).astype(np.float32))
    tables, dense = embeddings.split(spec, params)
    plan = md_rows.plan(spec, ids, md_rows.capacities(spec, batch), spec.sizes)
    if plan.fits is not None and not bool(plan.fits):
        plan = md_rows.overflow_plan(spec, plan)
    leaves = md_rows.gather(spec, tables, plan)
    got = md_rows.vectors(spec, leaves, dense, plan)
    want = jnp.where((ids >= 0)[:, None], embeddings.lookup(params, spec, jnp.maximum(ids, 0), capacity=None), 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    leaf_grads = jax.grad(lambda t: jnp.sum(md_rows.vectors(spec, t, dense, plan) * w))(leaves)
    table_grads = jax.grad(lambda t: jnp.sum(jnp.where((ids >= 0)[:, None], embeddings.lookup(
        embeddings.join(spec, t, dense), spec, jnp.maximum(ids, 0), capacity=None), 0) * w))(tables)
    rows, kinds = md_rows.updated_rows(spec, plan)
    for table, grad, leaf_rows, kind, want_grad in zip(tables, leaf_grads, rows, kinds, table_grads):
        placed = np.zeros(table.shape, np.float32)
        if kind == "whole":
            touched = np.asarray(leaf_rows) < table.shape[0]
            placed[touched] = np.asarray(grad)[touched]
            assert not np.asarray(want_grad)[~touched].any()  # untouched rows have no gradient
        else:
            inside = np.asarray(leaf_rows) < table.shape[0]
            np.add.at(placed, np.asarray(leaf_rows)[inside], np.asarray(grad)[inside])
        np.testing.assert_allclose(placed, want_grad, rtol=1e-5, atol=1e-5)


def test_md_capacities_are_checked():
    spec = MDSpec((4, 60), (8, 2), 8)
    assert md_rows.check_capacities(spec, "auto") is None and md_rows.check_capacities(spec, (3, 4)) is None
    assert "2 blocks" in md_rows.check_capacities(spec, (3,))
    assert md_rows.check_capacities(spec, (0, 4)) is not None and md_rows.check_capacities(spec, (1.5, 4)) is not None


# ---------------------------------------------------------------- a new scheme
@dataclass(frozen=True)
class PlainSpec:
    """A plain ``[n_rows, base_dim]`` table: a scheme written only against the interface."""

    n_rows: int
    base_dim: int


class _Plan(NamedTuple):
    rows: jax.Array
    fits: None = None


def _plain_scheme() -> embeddings.Scheme:
    def lookup(params, spec, ids, capacity="auto"):
        ids = jnp.asarray(ids)
        return embeddings.take_rows(params, ids.reshape(-1), jnp.nan).reshape(*ids.shape, spec.base_dim)

    def plan(spec, ids, slots, heights):
        return _Plan(jnp.where((ids >= 0) & (ids < spec.n_rows), ids, heights[0]))

    rows = embeddings.RowSparse(
        capacities=lambda spec, batch, requested: None,
        check_capacities=lambda spec, requested: None if requested == "auto" else "'auto' only",
        plan=plan,
        overflow_plan=lambda spec, planned: planned,
        gather=lambda spec, tables, planned: (embeddings.take_rows(tables[0], planned.rows, None),),
        vectors=lambda spec, leaves, dense, planned: jnp.where((planned.rows < spec.n_rows)[:, None], leaves[0], 0),
        updated_rows=lambda spec, planned: ((planned.rows,), ("batch",)),
    )
    return embeddings.Scheme(
        name="plain",
        init=lambda key, spec, stddev, dtype: stddev * jax.random.normal(key, (spec.n_rows, spec.base_dim), dtype),
        lookup=lookup,
        num_params=lambda spec: spec.n_rows * spec.base_dim,
        nbytes=lambda spec, dtype: spec.n_rows * spec.base_dim * jnp.dtype(dtype).itemsize,
        split=lambda params: ((params,), ()),
        join=lambda tables, dense: tables[0],
        row_heights=lambda spec: (spec.n_rows,),
        rows=rows,
    )


embeddings.register(PlainSpec, _plain_scheme())


def test_unregistered_specs_are_refused_by_name():
    with pytest.raises(TypeError, match="no embedding scheme is registered for tuple"):
        embeddings.num_params((3, 4))
    with pytest.raises(TypeError, match="user must be an embedding spec"):
        models.ModelConfig("mf", (3, 4), MDSpec.uniform(5, 4))


@pytest.mark.parametrize("name", ["sgd", "adagrad"])
def test_a_new_scheme_trains_row_sparse_as_dense(name):
    """A scheme registered from outside mdcf trains through make_train_step unchanged: the
    row-sparse step gives the dense step's result, and it counts its parameters."""
    config = models.ModelConfig("mf", PlainSpec(30, 4), PlainSpec(20, 4))
    assert models.num_params(config) == 30 * 4 + 20 * 4 + 30 + 20 + 1
    assert embeddings.nbytes(PlainSpec(30, 4)) == 480
    rng = np.random.default_rng(0)
    batches = [{"users": jnp.asarray(rng.integers(0, 30, 16), jnp.int32),
                "items": jnp.asarray(rng.integers(0, 20, 16), jnp.int32),
                "ratings": jnp.asarray(rng.uniform(1, 5, 16), jnp.float32)} for _ in range(3)]
    sparse, dense = (run_steps(config, train.optimizer(name, 0.1, sparse=s), batches, l2=0.01, seed=1)
                     for s in (True, False))
    assert_params_close(sparse.params, dense.params)


# ---------------------------------------------------------- deprecated names
def test_deprecated_names_warn_and_still_work(tmp_path):
    sys.modules.pop("mdcf.embedding", None)  # imported afresh: the warning comes with the import
    vars(mdcf).pop("embedding", None)
    with pytest.warns(DeprecationWarning, match="mdcf.embedding is deprecated"):
        legacy = mdcf.embedding  # noqa: F841 (the attribute imports the alias module)
    from mdcf import embedding as legacy_module
    assert legacy_module.MDSpec is MDSpec and legacy_module.lookup is embeddings.lookup
    ratings, _ = data.synthetic(40, 30, 400, seed=0)
    model = models.build_model(ratings, "mf", dim=4)
    params = models.init(jax.random.key(0), model.config, 3.0)
    with pytest.warns(DeprecationWarning, match="use mdcf.checkpoint.save"):
        io.save(tmp_path / "a.mdcf", model, params)
    with pytest.warns(DeprecationWarning, match="use mdcf.checkpoint.load"):
        loaded = io.load(tmp_path / "a.mdcf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = checkpoint.load(tmp_path / "a.mdcf")
    for x, y in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(x, y)
    assert io.CheckpointMismatchError is checkpoint.CheckpointMismatchError
