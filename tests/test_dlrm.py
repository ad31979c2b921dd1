"""DLRM: the forward pass against a naive reference, its gradient, sizes and counts."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdcf import data, embeddings, sizing
from mdcf.models import dlrm


def naive_logits(params, config, dense, categorical):
    """Loops over examples and pairs, each field's embedding read from its own slice."""
    layer = embeddings.join(config.table, params["tables"]["fields"], params["dense"]["projections"]["fields"])
    table = np.asarray(embeddings.lookup(layer, config.table, jnp.arange(config.table.n_rows), None), np.float64)
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    out = []
    for b in range(len(dense)):
        x = np.asarray(dense[b], np.float64)
        for layer_ in p["dense"]["bottom"]:
            x = np.maximum(x @ layer_["w"] + layer_["b"], 0)
        vectors = [x] + [table[config.offsets[f] + categorical[b, f]] for f in range(config.n_fields)]
        dots = [float(np.dot(vectors[i], vectors[j])) for i in range(len(vectors)) for j in range(i)]
        h = np.concatenate([x, dots])
        for n, layer_ in enumerate(p["dense"]["top"]):
            h = h @ layer_["w"] + layer_["b"]
            if n < len(p["dense"]["top"]) - 1:
                h = np.maximum(h, 0)
        out.append(h[0])
    return np.array(out)


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_forward_matches_naive_reference(alpha):
    examples, _ = data.synthetic_ctr(64, cardinalities=(50, 7, 300, 3), seed=0)
    config = dlrm.dlrm_config(examples.field_rows, dim=8, alpha=alpha, bottom=(16,), top=(12, 6), init_stddev=0.3)
    params = dlrm.init(jax.random.key(1), config)
    rows = dlrm.field_rows_to_stacked(examples.categorical, config)
    got = np.asarray(jax.jit(lambda p, d, r: dlrm.apply(p, config, d, r))(params, examples.dense, rows))
    want = naive_logits(params, config, examples.dense[:, :13], examples.categorical)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    probs = dlrm.predict_proba(params, config, examples.dense, rows)
    np.testing.assert_allclose(np.asarray(probs), 1 / (1 + np.exp(-want)), rtol=1e-4, atol=1e-6)


def test_gradient_matches_finite_differences():
    jax.config.update("jax_enable_x64", True)
    try:
        examples, _ = data.synthetic_ctr(16, cardinalities=(20, 5, 9), seed=2)
        config = dlrm.dlrm_config(examples.field_rows, dim=4, alpha=0.5, bottom=(6,), top=(5,), init_stddev=0.5)
        params = jax.tree.map(lambda x: x.astype(jnp.float64), dlrm.init(jax.random.key(3), config))
        rows = dlrm.field_rows_to_stacked(examples.categorical, config)
        dense = examples.dense.astype(np.float64)

        def loss(p):
            return dlrm.bce_loss(dlrm.apply(p, config, dense, rows, capacity=None), examples.labels)

        grads = jax.grad(loss)(params)
        leaves, tree = jax.tree.flatten(params)
        grad_leaves = jax.tree.leaves(grads)
        rng = np.random.default_rng(0)
        for k, (leaf, grad) in enumerate(zip(leaves, grad_leaves)):
            for _ in range(3):
                index = tuple(rng.integers(0, s) for s in leaf.shape)
                bump = jnp.zeros_like(leaf).at[index].set(1e-6)
                plus = tree.unflatten([x + bump if i == k else x for i, x in enumerate(leaves)])
                minus = tree.unflatten([x - bump if i == k else x for i, x in enumerate(leaves)])
                numeric = (loss(plus) - loss(minus)) / 2e-6
                assert float(grad[index]) == pytest.approx(float(numeric), rel=1e-4, abs=1e-8), (k, index)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_kaggle_default_shapes_and_counts():
    rows = data.KAGGLE_CARDINALITIES
    uniform = dlrm.dlrm_config(rows)
    bottom, top = uniform.layer_sizes()
    assert bottom == (13, 512, 256, 64, 16) and top == (367, 512, 256, 1)
    mlp = sum(a * b + b for a, b in itertools.chain(zip(bottom[:-1], bottom[1:]), zip(top[:-1], top[1:])))
    assert dlrm.num_params(uniform) == sum(rows) * 16 + mlp
    md = dlrm.dlrm_config(rows, alpha=0.3)
    # dlrm's solver in d0 mode without rounding gives the published dims (shared/REFERENCE.md).
    assert list(md.table.dims) == [3, 3, 1, 1, 4, 9, 1, 3, 16, 1, 2, 1, 2, 8, 1, 1, 11, 2, 2, 15, 1, 9, 10, 1, 6, 1]
    assert list(md.table.dims) == list(sizing.md_solver(rows, 0.3, d0=16, round_dim=False))
    expected = sum(n * d + (d * 16 if d < 16 else 0) for n, d in zip(rows, md.table.dims)) + mlp
    assert dlrm.num_params(md) == expected


def test_interaction_pairs_follow_the_lower_triangle():
    i, j = dlrm.interaction_pairs(4)
    assert list(zip(i.tolist(), j.tolist())) == [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]


def test_errors_and_bce():
    with pytest.raises(ValueError, match="the table has 10 rows, the fields 12"):
        dlrm.DLRMConfig(embeddings.MDSpec.uniform(10, 4), (5, 7))
    config = dlrm.dlrm_config((5, 7), dim=4, bottom=(4,), top=(4,), n_dense=2)
    with pytest.raises(ValueError, match=r"field 1: codes must lie in \[0, 7\)"):
        dlrm.field_rows_to_stacked(np.array([[0, 7]]), config)
    with pytest.raises(ValueError, match=r"\[examples, 2\]"):
        dlrm.field_rows_to_stacked(np.array([0, 1]), config)
    logits = jnp.array([100.0, -100.0, 0.0])
    labels = jnp.array([1.0, 1.0, 0.0])
    assert float(dlrm.bce_loss(logits, labels)) == pytest.approx((0 + 100 + np.log(2)) / 3, rel=1e-6)
    assert float(dlrm.bce_loss(logits, labels, jnp.array([1.0, 0.0, 1.0]))) == pytest.approx(np.log(2) / 2, rel=1e-6)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_lookup_columns_equals_the_routed_lookup(batch):
    """Per-field columns read their own blocks: the same vectors and gradients as the
    routed lookup (small blocks projected whole and large ones by rows alike), NaN for
    an id outside its column's block."""
    spec = embeddings.MDSpec((40, 3, 9, 200), (2, 8, 4, 1), 8)
    params = embeddings.init(jax.random.key(1), spec)
    rng = np.random.default_rng(batch)
    ids = jnp.asarray(np.stack([spec.offsets[i] + rng.integers(0, n, (batch, 2))
                                for i, n in enumerate(spec.sizes)], axis=-1).astype(np.int32))  # [B, 2, 4]
    got = embeddings.lookup_columns(params, spec, ids)
    want = embeddings.lookup(params, spec, ids)
    assert got.shape == (batch, 2, 4, 8)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    w = jnp.asarray(rng.normal(size=got.shape), jnp.float32)
    grad_got = jax.grad(lambda p: jnp.sum(embeddings.lookup_columns(p, spec, ids) * w))(params)
    grad_want = jax.grad(lambda p: jnp.sum(embeddings.lookup(p, spec, ids, capacity=None) * w))(params)
    for a, b in zip(jax.tree.leaves(grad_got), jax.tree.leaves(grad_want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    swapped = ids.at[0, 0, 0].set(ids[0, 0, 3])  # block 3's row in block 0's column
    out = np.asarray(jax.jit(embeddings.lookup_columns, static_argnums=1)(params, spec, swapped))
    assert np.isnan(out[0, 0, 0]).all() and np.isfinite(np.delete(out.reshape(-1, 8), 0, axis=0)).all()
    with pytest.raises(ValueError, match=r"one column per block \(4\)"):
        embeddings.lookup_columns(params, spec, ids[..., :3])


def test_dlrm_with_one_block_per_field_predicts_as_the_routed_lookup(monkeypatch):
    clicks, _ = data.synthetic_ctr(300, cardinalities=(500, 40, 7, 3), seed=2)
    config = dlrm.dlrm_config(clicks.field_rows, dim=8, alpha=0.4, bottom=(8,), top=(8,))
    assert config.column_sides == ("rows",)
    params = dlrm.init(jax.random.key(0), config)
    encoded = dlrm.encode(config, clicks)
    columns = dlrm.apply(params, config, encoded["dense"], encoded["rows"])
    monkeypatch.setattr(dlrm.DLRMConfig, "column_sides", property(lambda self: ()))
    routed = dlrm.apply(params, config, encoded["dense"], encoded["rows"])
    np.testing.assert_allclose(np.asarray(columns), np.asarray(routed), rtol=1e-5, atol=1e-6)
