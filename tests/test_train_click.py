"""Click prediction through the one train step and ``fit``: DLRM as data to the rating machinery."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_params_close as close
from conftest import click_batch, dense_and_sparse_steps

from mdcf import checkpoint, data, embeddings, metrics, models, train
from mdcf.models import dlrm

FIELDS = (37, 11, 5, 3)


@pytest.fixture(scope="module")
def clicks():
    examples, truth = data.synthetic_ctr(6_000, cardinalities=FIELDS, seed=0)
    return data.split_ctr(examples, "random", seed=0), truth.best(examples.labels)


def small_config(alpha=0.3, **kwargs):
    return dlrm.dlrm_config(FIELDS, dim=4, alpha=alpha, bottom=(8,), top=(8,), n_dense=13, **kwargs)


random_batch = click_batch


def test_dense_step_is_gradient_descent_on_dlrm_logloss():
    """The generic step on a DLRM: one SGD step equals params minus lr times the gradient of the
    weighted BCE of ``dlrm.apply`` (a naive reference), padding ignored."""
    config = small_config()
    batch = random_batch(config, padding=5)
    opt = optax.sgd(0.5)
    state = train.init_state(jax.random.key(1), config, opt)
    new, metrics_ = jax.jit(train.make_train_step(config, opt))(state, batch)
    live = slice(0, -5)

    def reference_loss(params):
        logits = dlrm.apply(params, config, batch["dense"][live], batch["rows"][live])
        return dlrm.bce_loss(logits, batch["labels"][live])

    loss, grads = jax.value_and_grad(reference_loss)(state.params)
    np.testing.assert_allclose(float(metrics_["logloss"]), float(loss), rtol=1e-6)
    close(new.params, jax.tree.map(lambda p, g: p - 0.5 * g, state.params, grads), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_row_sparse_step_matches_dense_step_on_dlrm(alpha):
    """Row-sparse SGD (flat per-field ids routed through the MD blocks) equals dense SGD, l2 included."""
    config = small_config(alpha)
    (a, ma), (b, mb) = dense_and_sparse_steps(config, random_batch(config, seed=3, padding=4), "sgd", 0.3)
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-5)
    close(a.params, b.params, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("optimizer, misplaced", [("sgd", False), ("amsgrad", False), ("amsgrad", True)])
def test_column_plan_step_equals_the_routed_step(monkeypatch, optimizer, misplaced):
    """One MD block per field: the step reads block f from column f (no routing), whole
    blocks and row updates with repeated rows alike, and equals the routed step. Examples
    with an id outside its field (columns swapped) are skipped and flagged by both."""
    config = dlrm.dlrm_config((300, 11, 90, 3), dim=4, alpha=0.3, bottom=(8,), top=(8,), n_dense=13)
    assert config.column_sides == ("rows",)
    assert small_config(alpha=0.0).column_sides == ()  # one block: nothing to gain
    batches = [random_batch(config, seed=seed, padding=3) for seed in range(2)]
    for batch in batches:
        batch["rows"][:5, 0] = batch["rows"][0, 0]  # a repeated row in a routed block
        if misplaced:
            batch["rows"][:6, [0, 2]] = batch["rows"][:6, [2, 0]]
    opt = train.optimizer(optimizer, 0.05, sparse=True)

    def run():
        state = train.init_state(jax.random.key(4), config, opt)
        step = jax.jit(train.make_train_step(config, opt, l2=0.01))
        for batch in batches:
            state, metrics_ = step(state, batch)
        return state, metrics_

    columns, m_columns = run()
    monkeypatch.setattr(dlrm.DLRMConfig, "column_sides", property(lambda self: ()))
    routed, m_routed = run()
    close(columns.params, routed.params, rtol=1e-4, atol=1e-6)
    close(columns.row_state, routed.row_state, rtol=1e-4, atol=1e-7)
    if misplaced:
        assert np.isnan(float(m_columns["loss"])) and np.isnan(float(m_routed["loss"]))
        clean = [dict(b, weights=np.where(np.arange(48) < 6, 0, b["weights"]).astype(np.float32)) for b in batches]
        batches[:] = clean  # the same batches with those examples as padding: the same parameters
        unflagged, m_clean = run()
        assert np.isfinite(float(m_clean["loss"]))
        close(unflagged.params, routed.params, rtol=1e-4, atol=1e-6)
    else:
        np.testing.assert_allclose(float(m_columns["loss"]), float(m_routed["loss"]), rtol=1e-5)


def test_a_field_out_of_its_rows_is_flagged_whatever_the_table():
    config = small_config(alpha=0.0)  # uniform: any stacked row is a table row, but not of every field
    batch = random_batch(config, seed=1)
    batch["rows"][2, 1] = batch["rows"][2, 0]  # field 0's row in field 1's column
    opt = train.optimizer("sgd", 0.1, sparse=True)
    _, m = train.make_train_step(config, opt)(train.init_state(jax.random.key(0), config, opt), batch)
    assert np.isnan(float(m["loss"]))


def test_column_plan_rejects_a_wrong_width():
    spec = embeddings.MDSpec((5, 3), (4, 2), 4)
    with pytest.raises(ValueError, match=r"need one column per block \(2\)"):
        embeddings.md_rows.column_plan(spec, jnp.zeros((4, 3), jnp.int32), (5, 3))


def test_l2_penalises_every_field_vector():
    config = small_config()
    batch = random_batch(config, seed=5)
    opt = train.optimizer("sgd", 0.1, sparse=True)
    state = train.init_state(jax.random.key(0), config, opt)
    _, m = train.make_train_step(config, opt, l2=0.7)(state, batch)
    layer = models.layer_params(state.params, "fields", config.table)
    vectors = np.asarray(embeddings.lookup(layer, config.table, batch["rows"]))  # [B, F, d0]
    penalty = np.mean(np.sum(vectors.astype(np.float64) ** 2, axis=(1, 2)))
    np.testing.assert_allclose(float(m["loss"]) - float(m["logloss"]), 0.7 * penalty, rtol=1e-4)


def test_row_amsgrad_is_optax_amsgrad_when_every_row_is_touched():
    rng = np.random.default_rng(0)
    table = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    rows_opt, dense, adam = train.row_amsgrad(0.01), optax.amsgrad(0.01), train.row_adam(0.01)
    state, dense_state, adam_state = rows_opt.init(table), dense.init(table), adam.init(table)
    reference = adam_table = table
    for step in range(1, 6):  # large gradients, then small ones: the second moment's maximum matters
        grads = jnp.asarray(rng.normal(size=(6, 3)) * (3.0 if step < 3 else 0.2), jnp.float32)
        table, state = rows_opt.update(grads, state, table, step)
        adam_table, adam_state = adam.update(grads, adam_state, adam_table, step)
        updates, dense_state = dense.update(grads, dense_state, reference)
        reference = optax.apply_updates(reference, updates)
    np.testing.assert_allclose(np.asarray(table), np.asarray(reference), rtol=1e-4, atol=1e-6)
    assert np.abs(np.asarray(adam_table) - np.asarray(reference)).max() > 1e-3  # Adam is not Amsgrad here


def test_fit_learns_clicks_and_evaluates(clicks):
    split, best = clicks
    config = dlrm.dlrm_config(split.field_rows, dim=8, alpha=0.3, bottom=(16,), top=(16,))
    result = train.fit(config, split.train, split.validation, epochs=4, batch_size=128, learning_rate=3e-3,
                       progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert {"train_logloss", "val_logloss", "val_auc", "val_accuracy"} <= set(result.history[0])
    assert result.model is config
    found = train.evaluate(config, result.params, split.test)
    prob = np.asarray(dlrm.predict_proba(result.params, config, split.test.dense,
                                         dlrm.field_rows_to_stacked(split.test.categorical, config)))
    expected = metrics.ctr_metrics(prob, split.test.labels)
    for key in ("logloss", "accuracy", "auc"):
        assert found[key] == pytest.approx(expected[key], rel=1e-5)
    rate = split.train.positive_rate
    constant = metrics.logloss(np.full(len(split.test), rate), split.test.labels)
    # Better than the positive rate, short of the Bayes-optimal predictor (on all examples).
    assert found["logloss"] < constant - 0.02 and found["auc"] > 0.6
    assert found["logloss"] > best["logloss"] - 0.03


def test_fit_takes_the_papers_ctr_defaults(clicks, tmp_path):
    split, _ = clicks
    config = small_config()
    result = train.fit(config, split.train, progress=False, checkpoint=str(tmp_path / "run.ckpt"))
    assert len(result.history) == 1 and result.refit_history == []  # one epoch, no validation carved
    saved = checkpoint.load(tmp_path / "run.ckpt")
    settings = saved.meta["settings"]
    assert settings["batch_size"] == 4096 and settings["l2"] == 0.0
    assert settings["optimizer"].startswith("amsgrad(learning_rate=0.001")
    assert isinstance(saved.model, dlrm.DLRMConfig) and saved.model == config


def test_dlrm_checkpoint_resumes_the_same_run(clicks, tmp_path):
    split, _ = clicks
    config = small_config()
    kwargs = dict(batch_size=512, progress=False, seed=3, sparse=True)
    whole = train.fit(config, split.train, split.validation, epochs=3, **kwargs)
    path = str(tmp_path / "dlrm.ckpt")
    train.fit(config, split.train, split.validation, epochs=1, checkpoint=path, **kwargs)
    resumed = train.fit(config, split.train, split.validation, epochs=3, checkpoint=path, **kwargs)
    close(resumed.params, whole.params, rtol=1e-6, atol=1e-8)
    assert [h["val_logloss"] for h in resumed.history] == pytest.approx([h["val_logloss"] for h in whole.history])
    other = small_config(alpha=0.0)
    with pytest.raises(checkpoint.CheckpointMismatchError, match="table"):
        checkpoint.load(path, model=other)


def test_wrong_data_and_batches_are_named(clicks):
    split, _ = clicks
    config = small_config()
    ratings, _ = data.synthetic(30, 20, 200, seed=0)
    with pytest.raises(TypeError, match="dlrm model trains on CTRData, got Ratings"):
        train.fit(config, ratings, progress=False)
    model = models.build_model(ratings, "mf", dim=4)
    with pytest.raises(TypeError, match="mf model trains on Ratings, got CTRData"):
        train.fit(model, split.train, progress=False)
    other = dlrm.dlrm_config((5, 5, 5, 5), dim=4, bottom=(8,), top=(8,))
    with pytest.raises(ValueError, match="build the model from this data's field_rows"):
        train.fit(other, split.train, progress=False)
    opt = train.optimizer("adam", 1e-3)
    state = train.init_state(jax.random.key(0), config, opt)
    step = train.make_train_step(config, opt)
    batch = random_batch(config)
    with pytest.raises(KeyError, match="'dense'"):
        step(state, {k: v for k, v in batch.items() if k != "dense"})
    with pytest.raises(ValueError, match=r"'rows': \('B', 4\)"):
        step(state, dict(batch, rows=batch["rows"][:, 0]))


def test_out_of_range_rows_give_nan_metrics_not_silent_updates():
    config = small_config()
    batch = random_batch(config, seed=1)
    batch["rows"][3, 2] = config.table.n_rows  # past the last row
    opt = train.optimizer("sgd", 0.1, sparse=True)
    state = train.init_state(jax.random.key(0), config, opt)
    new, m = jax.jit(train.make_train_step(config, opt))(state, batch)
    assert np.isnan(float(m["logloss"]))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(new.params))


def test_xavier_embedding_init_uses_each_fields_limit():
    config = dlrm.dlrm_config((4000, 50, 3), dim=8, alpha=0.0, bottom=(8,), top=(8,))
    table = np.asarray(models.init(jax.random.key(0), config)["tables"]["fields"][0])
    offsets = np.concatenate([[0], np.cumsum(config.field_rows)])
    for f, rows in enumerate(config.field_rows):
        part = table[offsets[f]:offsets[f + 1]]
        limit = np.sqrt(6 / (rows + 8))
        assert np.abs(part).max() <= limit
        assert np.abs(part).max() > 0.8 * limit  # uniform over the whole range, not a narrower law
    md = dlrm.dlrm_config((4000, 50, 3), dim=8, alpha=0.4, bottom=(8,), top=(8,))
    params = models.init(jax.random.key(0), md)
    for block, projection in zip(params["tables"]["fields"], params["dense"]["projections"]["fields"]):
        assert np.abs(np.asarray(block)).max() <= np.sqrt(6 / sum(block.shape))
        if projection is not None:
            assert np.abs(np.asarray(projection)).max() <= np.sqrt(6 / sum(projection.shape))
    normal = dlrm.dlrm_config((4000, 50, 3), dim=8, bottom=(8,), top=(8,), embedding_init="normal", init_stddev=0.5)
    drawn = np.asarray(models.init(jax.random.key(0), normal)["tables"]["fields"][0])
    assert drawn.std() == pytest.approx(0.5, rel=0.05)
    with pytest.raises(ValueError, match="embedding_init must be one of"):
        dlrm.dlrm_config((4, 5), dim=4, embedding_init="he")


def test_config_round_trips_through_json_to_its_family():
    config = small_config(round_pow2=True)
    again = models.config_from_dict(config.to_dict())
    assert again == config and isinstance(again, dlrm.DLRMConfig)
    assert dlrm.DLRMConfig.from_json(config.to_json()) == config
    ratings, _ = data.synthetic(30, 20, 200, seed=0)
    rating = models.build_model(ratings, "gmf", dim=4).config
    assert models.config_from_dict(rating.to_dict()) == rating
    assert models.num_params(config) == dlrm.num_params(config)
    with pytest.raises(TypeError, match="expected a model config"):
        models.family("mf")


@settings(deadline=None, max_examples=30)  # every new shape compiles the jitted unpack
@given(st.integers(1, 30), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_pack_round_trips_any_columns(n, width, seed):
    rng = np.random.default_rng(seed)
    encoded = {"a": rng.integers(0, 2**31 - 1, n).astype(np.int64),
               "b": rng.normal(size=(n, width)).astype(np.float32),
               "c": rng.integers(0, 9, (n, width, 2)).astype(np.int32)}
    packed = train.pack(encoded)
    index = rng.permutation(n)[: max(1, n // 2)]
    back = jax.jit(train.unpack)(packed, index)
    assert sorted(back) == ["a", "b", "c"]
    for key, value in encoded.items():
        np.testing.assert_array_equal(np.asarray(back[key]), value[index])
        assert back[key].dtype == (jnp.float32 if key == "b" else jnp.int32)


def test_pack_rejects_what_it_cannot_hold():
    with pytest.raises(ValueError, match="must lie in"):
        train.pack({"a": np.array([-1, 2])})
    with pytest.raises(ValueError, match="one length"):
        train.pack({"a": np.arange(3), "b": np.arange(4)})
    with pytest.raises(TypeError, match="must hold numbers"):
        train.pack({"a": np.array(["x", "y"])})


def test_frequency_blocked_control_trains_checkpoints_and_maps_rows(clicks, tmp_path):
    """The paper's control: blocks cut by frequency across all fields; rows go through the map."""
    split, _ = clicks
    model = dlrm.frequency_blocked(split.field_rows, split.counts, blocks=4, dim=8, alpha=0.3,
                                   budget=4 * sum(split.field_rows), bottom=(8,), top=(8,))
    table = model.config.table
    budget = 4 * sum(split.field_rows)
    assert table.n_blocks == 4 and 0.99 * budget <= embeddings.num_params(table) <= budget
    stacked = np.concatenate(split.counts)
    ordered = stacked[np.argsort(model.rows)]  # counts in table order: non-increasing
    assert np.all(np.diff(ordered) <= 0)
    encoded = models.encode(model, split.test)
    np.testing.assert_array_equal(encoded["rows"], model.rows[dlrm.field_rows_to_stacked(split.test.categorical,
                                                                                         model.config)])
    path = str(tmp_path / "control.ckpt")
    kwargs = dict(epochs=2, batch_size=512, progress=False, sparse=True)
    result = train.fit(model, split.train, split.validation, checkpoint=path, **kwargs)
    assert result.model is model and train.evaluate(model, result.params, split.test)["n"] == len(split.test)
    saved = checkpoint.load(path, model=model)
    assert isinstance(saved.model, dlrm.CTRModel) and np.array_equal(saved.model.rows, model.rows)
    shuffled = dlrm.CTRModel(model.config, np.roll(model.rows, 1))
    with pytest.raises(checkpoint.CheckpointMismatchError, match="block order"):
        checkpoint.load(path, model=shuffled)
    with pytest.raises(ValueError, match="permutation"):
        dlrm.CTRModel(model.config, np.zeros(table.n_rows, np.int32))
