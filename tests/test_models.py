"""Rating models: structure, parameter counts, formulas, and building from data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdcf import data, embeddings, models
from mdcf.embeddings import MDSpec
from mdcf.models import ModelConfig

MD_USER = MDSpec((3, 7, 20), (8, 4, 2), 8)
MD_ITEM = MDSpec((5, 25), (8, 3), 8)


@pytest.mark.parametrize("kind", models.KINDS)
@pytest.mark.parametrize("biases", [True, False])
def test_num_params_counts_every_leaf(kind, biases):
    config = ModelConfig(kind, MD_USER, MD_ITEM, biases=biases, layers=(16, 4))
    params = models.init(jax.random.key(0), config)
    assert models.num_params(config) == sum(x.size for x in jax.tree.leaves(params))


def test_mf_formula():
    config = ModelConfig("mf", MD_USER, MD_ITEM)
    params = models.init(jax.random.key(1), config, global_mean=3.5)
    params["tables"]["user_bias"] = jnp.arange(30, dtype=jnp.float32) / 100
    params["tables"]["item_bias"] = -jnp.arange(30, dtype=jnp.float32) / 50
    users, items = np.array([0, 5, 29]), np.array([4, 29, 7])
    user_table = np.asarray(embeddings.materialize(models.layer_params(params, "user"), MD_USER))
    item_table = np.asarray(embeddings.materialize(models.layer_params(params, "item"), MD_ITEM))
    want = 3.5 + users / 100 - items / 50 + np.sum(user_table[users] * item_table[items], axis=1)
    np.testing.assert_allclose(models.apply(params, config, users, items), want, rtol=1e-5)


def test_gmf_starts_as_mf():
    mf = ModelConfig("mf", MD_USER, MD_ITEM)
    gmf = ModelConfig("gmf", MD_USER, MD_ITEM)
    p = models.init(jax.random.key(2), gmf, 3.0)
    users, items = np.arange(10), np.arange(10) * 2
    np.testing.assert_allclose(models.apply(p, gmf, users, items), models.apply(p, mf, users, items), rtol=1e-6)


def test_mlp_and_neumf_shapes_and_jit():
    for kind in ("mlp", "neumf"):
        config = ModelConfig(kind, MD_USER, MDSpec.uniform(30, 6), layers=(12, 5)) if kind == "mlp" else \
            ModelConfig(kind, MD_USER, MD_ITEM, layers=(12, 5))
        params = models.init(jax.random.key(0), config, 3.0)
        users, items = np.array([0, 1, 29]), np.array([2, 3, 4])
        out = jax.jit(models.apply, static_argnums=1)(params, config, users, items)
        assert out.shape == (3,) and np.isfinite(out).all()
        np.testing.assert_allclose(out, models.apply(params, config, users, items), rtol=1e-6)


def test_config_validation_and_json():
    config = ModelConfig("neumf", MD_USER, MD_ITEM, layers=(16, 8))
    assert ModelConfig.from_json(config.to_json()) == config
    assert hash(config) == hash(ModelConfig.from_json(config.to_json()))
    with pytest.raises(ValueError, match="kind must be one of"):
        ModelConfig("svd", MD_USER, MD_ITEM)
    with pytest.raises(ValueError, match="base dims must match"):
        ModelConfig("mf", MD_USER, MDSpec.uniform(30, 4))
    with pytest.raises(ValueError, match="layers must be positive"):
        ModelConfig("mlp", MD_USER, MD_ITEM, layers=(0,))


def test_budgets_that_cannot_be_met_name_the_table_and_its_share():
    ratings, _ = data.synthetic(50, 30, 400, seed=0)
    with pytest.raises(ValueError, match=r"the user table cannot be sized for its share of budget=4,000 "
                                         r"\(2,500: 50 of the 80 user and item rows\): budget 2,500 exceeds"):
        models.build_model(ratings, "mf", dim=8, budget=4000, alpha=0.3)
    with pytest.raises(ValueError, match=r"the item table cannot be sized for item_budget=5: budget 5 is below"):
        models.build_model(ratings, "mf", dim=8, user_budget=400, item_budget=5, alpha=0.3)
    with pytest.raises(ValueError, match=r"the item table cannot be sized for item_budget=5: budget 5 is below one"):
        models.build_model(ratings, "mf", dim=8, user_budget=400, item_budget=5)  # uniform at a budget


def test_build_model_refuses_ratings_without_any_rating():
    ratings, _ = data.synthetic(30, 20, 100, seed=0)
    with pytest.raises(ValueError, match="build_model: train holds no ratings"):
        models.build_model(ratings.subset(np.zeros(len(ratings), bool)), "mf", dim=4, alpha=0.5)


def test_build_model_uniform_md_and_budget():
    ratings, _ = data.synthetic(300, 200, 6_000, seed=0)
    uniform = models.build_model(ratings, "mf", dim=16)
    assert uniform.config.user == MDSpec.uniform(300, 16)
    counts = ratings.item_counts()
    # Rows are in frequency order even for a uniform table.
    assert (np.diff(counts[np.argsort(uniform.item_rows)]) <= 0).all()
    md = models.build_model(ratings, "mf", dim=16, alpha=0.5, blocks=4)
    assert md.config.item.n_blocks == 4 and md.config.item.dims[0] == 16
    assert md.config.item.dims[-1] < 16 and md.config.item.loads is not None
    budget = (300 + 200) * 4
    sized = models.build_model(ratings, "mf", dim=16, alpha=0.5, blocks=4, budget=budget)
    total = embeddings.num_params(sized.config.user) + embeddings.num_params(sized.config.item)
    assert 0.99 * budget <= total <= budget
    equal = models.build_model(ratings, "mf", dim=16, alpha=0.0, budget=budget)
    assert equal.config.user == MDSpec.uniform(300, 4) and equal.config.item == MDSpec.uniform(200, 4)
    batch = md.encode(ratings)
    np.testing.assert_array_equal(batch["users"], md.user_rows[ratings.users])
    other, _ = data.synthetic(301, 200, 100, seed=1)
    with pytest.raises(ValueError, match="coded differently"):
        md.encode(other)
    assert md.global_mean == pytest.approx(float(np.mean(ratings.ratings)))


def test_apply_with_capacity_none_supports_forward_mode():
    # Tables large enough that the default lookup groups ids by block (custom VJP, reverse
    # mode only); capacity=None gives the same predictions and a jvp that is the adjoint of
    # the default path's gradient.
    spec = MDSpec((10, 40, 1500, 3000), (8, 4, 2, 2), 8)
    config = ModelConfig("mf", spec, spec)
    params = models.init(jax.random.key(0), config, global_mean=3.0)
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 4550, 1000), rng.integers(0, 4550, 1000)
    assert embeddings.head_blocks(spec, embeddings.block_capacities(spec, 1000)) < spec.n_blocks
    weights = jnp.asarray(rng.standard_normal(1000).astype(np.float32))
    np.testing.assert_allclose(models.apply(params, config, users, items, capacity=None),
                               models.apply(params, config, users, items), rtol=1e-5, atol=1e-6)
    keys = iter(jax.random.split(jax.random.key(1), 32))
    direction = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype), params)
    tangent = jax.jvp(lambda p: models.apply(p, config, users, items, capacity=None), (params,), (direction,))[1]
    grads = jax.grad(lambda p: jnp.sum(models.apply(p, config, users, items) * weights))(params)
    adjoint = sum(float(jnp.vdot(g, v)) for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    np.testing.assert_allclose(float(jnp.vdot(tangent, weights)), adjoint, rtol=1e-4)


def test_build_model_names_what_it_needs():
    with pytest.raises(TypeError, match="train must be mdcf.data.Ratings .*got ndarray"):
        models.build_model(np.zeros(3), "mf", dim=4)
    ratings = data.synthetic(40, 30, 300, rank=2, seed=0)[0]
    with pytest.raises(TypeError, match="MDSpec needs integer"):
        models.build_model(ratings, "mf", dim=2.5)  # not silently a 2-dimensional model
