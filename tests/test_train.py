"""Training: row-sparse against dense updates, exactness, determinism, resuming, fit, predict."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mdcf import checkpoint, data, io, models, train
from mdcf.embeddings import MDSpec, md_rows
from mdcf.train import sparse as row_updates

from conftest import assert_params_close, run_steps
from mdcf.models import ModelConfig

USER = MDSpec((4, 10, 30), (8, 4, 2), 8, loads=(0.4, 0.3, 0.3))
ITEM = MDSpec((6, 34), (8, 3), 8, loads=(0.5, 0.5))


def batch_of(seed, size=64, weights=True):
    rng = np.random.default_rng(seed)
    batch = {
        "users": rng.integers(0, 44, size).astype(np.int32),
        "items": rng.integers(0, 40, size).astype(np.int32),
        "ratings": rng.integers(1, 6, size).astype(np.float32),
    }
    batch["users"][:5] = 3  # duplicates within a batch
    if weights:
        batch["weights"] = (np.arange(size) < size - 3).astype(np.float32)  # three padding entries
    return batch


# Blocks of 300 and 200 rows hold more than two rows per slot in a batch of 64: they are
# routed and updated row by row; the smaller leading blocks form the head (projected and
# updated whole, md_rows.head_size). USER_MIXED has no head (its first block is large) and
# two routed blocks small enough to be differentiated whole (RowPlan.whole).
USER_LARGE = MDSpec((4, 10, 300), (8, 4, 2), 8, loads=(0.4, 0.3, 0.3))
ITEM_LARGE = MDSpec((6, 200), (8, 3), 8, loads=(0.5, 0.5))
USER_MIXED = MDSpec((300, 4, 10), (8, 4, 2), 8, loads=(0.4, 0.3, 0.3))


def _plans(config, batch):
    """The row-sparse step's plan of each side for ``batch`` (padding, weight 0, gets -1)."""
    specs = {"user": config.user, "item": config.item}
    ids = {side: jnp.where(jnp.asarray(batch["weights"]) > 0, jnp.asarray(batch[f"{side}s"]), -1) for side in specs}
    size = len(batch["users"])
    return {side: md_rows.plan(spec, ids[side], md_rows.capacities(spec, size), spec.sizes)
            for side, spec in specs.items()}


def _split(config, size=64):
    """(heads, whole) of the row-sparse step for ``config`` at this batch size."""
    plans = _plans(config, batch_of(0, size=size))
    return ({side: plan.head for side, plan in plans.items()},
            {name: plans[side].whole for name, side, _ in config.embeddings})


@pytest.mark.parametrize("kind, name, specs", [
    ("mf", "sgd", "small"), ("mf", "adagrad", "small"), ("neumf", "sgd", "small"), ("neumf", "adagrad", "small"),
    ("mf", "adagrad", "large"), ("neumf", "sgd", "large"), ("mf", "sgd", "mixed"),
    ("mf", "adagrad", "uniform"), ("neumf", "adagrad", "uniform"),
])
def test_row_sparse_matches_dense(kind, name, specs):
    """Uniform tables of one side and its bias share one plan for their duplicate rows."""
    user, item = {"small": (USER, ITEM), "large": (USER_LARGE, ITEM_LARGE), "mixed": (USER_MIXED, ITEM_LARGE),
                  "uniform": (MDSpec.uniform(44, 8), MDSpec.uniform(40, 8))}[specs]
    config = ModelConfig(kind, user, item, layers=(8, 4))
    heads, whole = _split(config)
    want_heads, want_whole = {
        "small": ({"user": 3, "item": 2}, {"user": (True,) * 3, "item": (True,) * 2}),  # nothing routed
        "large": ({"user": 2, "item": 1}, {"user": (True, True, False), "item": (True, False)}),
        "mixed": ({"user": 0, "item": 1}, {"user": (False, True, True), "item": (True, False)}),
        "uniform": ({"user": 0, "item": 0}, {"user": (False,), "item": (False,)}),
    }[specs]
    assert heads == want_heads
    assert whole == {name: want_whole[side] for name, side, _ in config.embeddings}
    batches = [batch_of(s) for s in range(4)]
    sparse = run_steps(config, train.optimizer(name, 0.05, sparse=True), batches)
    dense = run_steps(config, train.optimizer(name, 0.05, sparse=False), batches)
    assert_params_close(sparse.params, dense.params)


def _overflows(config, batch):
    return not all(bool(plan.fits) for plan in _plans(config, batch).values() if plan.fits is not None)


@pytest.mark.parametrize("user, item, block", [(USER_LARGE, ITEM_LARGE, 2), (USER_MIXED, ITEM_LARGE, 0)])
def test_overflowing_batches_take_the_exact_fallback(user, item, block):
    """A batch that overflows a routed block's slots is redone with a slot per entry in
    every routed block: the dense result. (The head is updated whole either way; with
    USER_MIXED the fallback also updates two routed blocks whole.)"""
    config = ModelConfig("mf", user, item)
    size = 128
    batch = batch_of(0, size=size)
    rng = np.random.default_rng(5)
    batch["users"] = rng.integers(0, user.n_rows, size).astype(np.int32)
    batch["items"] = rng.integers(0, item.n_rows, size).astype(np.int32)
    start = user.offsets[block]
    batch["users"][:100] = start + np.arange(100) % user.sizes[block]  # 100 ids in one routed block
    assert _overflows(config, batch)
    sparse = run_steps(config, train.optimizer("sgd", 0.05, sparse=True), [batch, batch_of(1, size=size)])
    dense = run_steps(config, train.optimizer("sgd", 0.05, sparse=False), [batch, batch_of(1, size=size)])
    assert_params_close(sparse.params, dense.params)


@pytest.mark.parametrize("kind", ["mf", "neumf"])
def test_overflow_fallback_with_adam_matches_slots_that_always_fit(kind):
    """Batches that overflow and batches that fit, in one scan, with lazy Adam: the same
    states and losses as a step whose slots can never overflow (the disabled grouped
    update must leave rows, dense parameters, optimiser state and step count alone)."""
    config = ModelConfig(kind, USER_LARGE, ITEM_LARGE, layers=(8, 4))
    batches = [batch_of(s, size=128) for s in range(4)]
    rng = np.random.default_rng(3)
    for b in batches:  # ids over the whole tables, each block getting about its load
        b["users"] = rng.permutation(np.concatenate([rng.integers(0, 4, 51), rng.integers(4, 14, 38),
                                                     rng.integers(14, 314, 39)])).astype(np.int32)
        b["items"] = rng.permutation(np.concatenate([rng.integers(0, 6, 64),
                                                     rng.integers(6, 206, 64)])).astype(np.int32)
    for b in batches[::2]:
        b["users"][:100] = 14 + np.arange(100) % 300  # overflows the routed user block
    assert [_overflows(config, b) for b in batches] == [True, False, True, False]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *batches)
    opt = train.optimizer("adam", 0.05, sparse=True)
    roomy = {"user": (128,) * USER_LARGE.n_blocks, "item": (128,) * ITEM_LARGE.n_blocks}
    results = []
    for capacities in ("auto", roomy):
        step = train.make_train_step(config, opt, l2=0.05, capacities=capacities)
        state = train.init_state(jax.random.key(0), config, opt, global_mean=3.0)
        results.append(jax.jit(lambda s, b: jax.lax.scan(step, s, b))(state, stacked))
    (auto_state, auto_metrics), (roomy_state, roomy_metrics) = results
    assert int(auto_state.step) == int(roomy_state.step) == 4
    assert_params_close(auto_state.params, roomy_state.params)
    assert_params_close((auto_state.dense_state, auto_state.row_state), (roomy_state.dense_state, roomy_state.row_state))
    np.testing.assert_allclose(auto_metrics["loss"], roomy_metrics["loss"], rtol=1e-5)


@pytest.mark.parametrize("opt_name, sparse, specs", [
    ("sgd", True, "uniform"), ("adam", True, "uniform"), ("sgd", True, "large"), ("adam", True, "large"),
    ("sgd", False, "large"),
])
def test_out_of_range_ids_are_skipped_and_flagged_with_nan(opt_name, sparse, specs):
    """Under jit a train step cannot raise: an entry of weight > 0 with an id outside the
    tables makes the metrics NaN, and the row-sparse step skips it (the state is what the
    batch gives with that entry's weight at 0); on a padding entry (weight 0) such an id
    changes nothing."""
    user, item = {"uniform": (MDSpec.uniform(44, 8), MDSpec.uniform(40, 8)), "large": (USER_LARGE, ITEM_LARGE)}[specs]
    config = ModelConfig("mf", user, item)
    opt = train.optimizer(opt_name, 0.05, sparse=sparse)
    step = jax.jit(train.make_train_step(config, opt, l2=0.05))
    state, _ = step(train.init_state(jax.random.key(0), config, opt, global_mean=3.0), batch_of(0))
    for side, bad_id in (("users", user.n_rows), ("items", -1), ("items", item.n_rows + 7)):
        bad = batch_of(1)
        bad[side][10] = bad_id
        skipped = batch_of(1)
        skipped["weights"][10] = 0.0
        got, metrics = step(state, bad)
        want, want_metrics = step(state, skipped)
        assert np.isnan(float(metrics["loss"])) and np.isnan(float(metrics["mse"]))
        assert np.isfinite(float(want_metrics["loss"]))
        if sparse:
            for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_array_equal(x, y)
        padded = batch_of(1)
        padded[side][-1] = bad_id  # a padding entry (weight 0): its ids are ignored
        want, want_metrics = step(state, batch_of(1))
        got, got_metrics = step(state, padded)
        assert float(got_metrics["loss"]) == float(want_metrics["loss"])
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("sparse", [False, True])
def test_train_steps_refuse_malformed_batches_when_traced(sparse):
    config = ModelConfig("mf", USER, ITEM)
    opt = train.optimizer("sgd", 0.1, sparse=sparse)
    state = train.init_state(jax.random.key(0), config, opt)
    step = jax.jit(train.make_train_step(config, opt))
    batch = batch_of(0)
    with pytest.raises(KeyError, match=r"the batch has no \['ratings'\]"):
        step(state, {k: v for k, v in batch.items() if k != "ratings"})
    with pytest.raises(TypeError, match=r"batch\['items'\] must hold integer rows, got dtype float32"):
        step(state, {**batch, "items": batch["items"].astype(np.float32)})
    with pytest.raises(ValueError, match=r"must have shapes .*'ratings': \('B',\).* with one batch size B"):
        step(state, {**batch, "ratings": batch["ratings"][:10]})
    with pytest.raises(ValueError, match=r"'users': \('B',\)"):
        step(state, {**batch, "users": batch["users"][:, None]})
    if sparse:
        for capacities in ("huge", {"user": (8, 8, 8)}, {"user": (8, 8), "item": (8, 8)},
                           {"user": (8, 0, 8), "item": (8, 8)}):
            with pytest.raises(ValueError, match="capacities must be 'auto' or"):
                train.make_train_step(config, opt, capacities=capacities)
    assert np.isfinite(step(state, batch)[1]["loss"])  # the well-formed batch still steps


@pytest.mark.parametrize("name", ["sgd", "adagrad", "rowwise_adagrad", "adam"])
def test_whole_block_update_matches_row_updates(name):
    """A block updated whole (gradients summed per row, touched rows marked) equals the
    row-by-row update of the batch's rows, duplicates and out-of-range slots included."""
    rng = np.random.default_rng(1)
    opt = train.optimizer(name, 0.05, sparse=True).rows
    table = jnp.asarray(rng.standard_normal((12, 5)).astype(np.float32))
    state = tuple(s + jnp.asarray(rng.uniform(0, 0.5, s.shape).astype(np.float32)) for s in opt.init(table))
    rows = np.array([3, 7, 3, 0, 12, 11, 3, 12, 5], np.int32)  # 12: an unused slot
    grads = rng.standard_normal((len(rows), 5)).astype(np.float32)
    step = jnp.asarray(4)
    want_table, want_state = row_updates.update_rows(table, state, jnp.asarray(rows), jnp.asarray(grads), opt, step)
    summed = np.zeros((12, 5), np.float32)
    np.add.at(summed, rows[rows < 12], grads[rows < 12])
    touched = jnp.asarray([0, 12, 12, 3, 12, 5, 12, 7, 12, 12, 12, 11], jnp.int32)  # j for touched rows, else 12
    got_table, got_state = row_updates.update_whole(table, state, touched, jnp.asarray(summed), opt, step)
    np.testing.assert_allclose(got_table, want_table, rtol=1e-6, atol=1e-7)
    for got, want in zip(got_state, want_state):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    untouched = np.setdiff1d(np.arange(12), rows)
    np.testing.assert_array_equal(np.asarray(got_table)[untouched], np.asarray(table)[untouched])


def test_lazy_adam_leaves_absent_rows_alone():
    config = ModelConfig("mf", MDSpec.uniform(10, 4), MDSpec.uniform(10, 4))
    first = {"users": np.array([1, 2], np.int32), "items": np.array([1, 2], np.int32), "ratings": np.array([5.0, 1.0], np.float32)}
    second = {"users": np.array([3, 3], np.int32), "items": np.array([3, 4], np.int32), "ratings": np.array([2.0, 4.0], np.float32)}
    opt = train.optimizer("adam", 0.1, sparse=True)
    state = train.init_state(jax.random.key(0), config, opt, 3.0)
    step = jax.jit(train.make_train_step(config, opt))
    after_first, _ = step(state, first)
    after_second, _ = step(after_first, second)
    table = lambda s: np.asarray(s.params["tables"]["user"][0])  # noqa: E731
    np.testing.assert_array_equal(table(after_second)[1], table(after_first)[1])  # lazy: row 1 absent in step 2
    assert not np.array_equal(table(after_first)[1], table(state)[1])
    dense_opt = train.optimizer("adam", 0.1, sparse=False)
    dense_step = jax.jit(train.make_train_step(config, dense_opt))
    d1, _ = dense_step(train.init_state(jax.random.key(0), config, dense_opt, 3.0), first)
    d2, _ = dense_step(d1, second)
    assert not np.array_equal(np.asarray(d2.params["tables"]["user"][0])[1], np.asarray(d1.params["tables"]["user"][0])[1])
    # One step from fresh state: lazy and dense Adam agree on the rows of the batch.
    np.testing.assert_allclose(table(after_first)[1], np.asarray(d1.params["tables"]["user"][0])[1], rtol=1e-5, atol=1e-7)


def test_custom_pipeline_jit_scan_vmap_over_seeds():
    """The README's custom-pipeline example, in miniature."""
    config = ModelConfig("mf", USER, ITEM)
    opt = train.optimizer("adam", 1e-2)
    step = train.make_train_step(config, opt, l2=0.05)
    batches = [batch_of(s, weights=False) for s in range(5)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *batches)

    @jax.jit
    def run(key):
        state = train.init_state(key, config, opt, global_mean=3.0)
        state, metrics = jax.lax.scan(step, state, stacked)
        return state, metrics["loss"]

    states, losses = jax.vmap(run)(jax.random.split(jax.random.key(0), 3))
    assert losses.shape == (3, 5) and np.isfinite(losses).all()
    single, single_losses = run(jax.random.split(jax.random.key(0), 3)[1])
    np.testing.assert_allclose(losses[1], single_losses, rtol=1e-5)


@pytest.fixture(scope="module")
def small_data():
    ratings, _ = data.synthetic(200, 120, 6_000, rank=4, noise=0.3, seed=0)
    train_part, test = data.split(ratings, "random", 0.1, seed=0)
    return ratings, train_part, test


def test_fit_is_deterministic_and_learns(small_data):
    _, train_part, test = small_data
    model = models.build_model(train_part, "mf", dim=8, alpha=0.4, blocks=3)
    a = train.fit(model, train_part, epochs=8, batch_size=256, progress=False, seed=3, sparse=True, refit=False)
    b = train.fit(model, train_part, epochs=8, batch_size=256, progress=False, seed=3, sparse=True, refit=False)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    assert a.history[-1]["train_mse"] < a.history[0]["train_mse"]
    metrics = train.evaluate(model, a.params, test)
    baseline = float(np.mean((test.ratings - model.global_mean) ** 2))
    assert metrics["mse"] < baseline  # better than predicting the mean
    assert set(metrics) >= {"mse", "rmse", "mae", "mse_popular", "mse_rare"}


def test_auto_sparse_takes_row_sparse_sgd_at_any_size_and_dense_adam_for_small_tables(small_data):
    _, train_part, _ = small_data
    model = models.build_model(train_part, "mf", dim=8)
    rows = train_part.n_users + train_part.n_items
    assert train.auto_sparse(model, 16, "sgd") and train.auto_sparse(model, 10_000, "sgd")
    assert train.auto_sparse(model, rows // 8, "adam") and not train.auto_sparse(model, rows // 8 + 1, "adam")
    assert not train.auto_sparse(model, rows // 8 + 1, "sgd", weight_decay=1e-4)  # the dense step decays tables
    kwargs = dict(epochs=2, batch_size=256, progress=False, seed=1, validation=None, optimizer_name="sgd",
                  learning_rate=0.5)
    auto, sparse, dense = (train.fit(model, train_part, sparse=s, **kwargs) for s in ("auto", True, False))
    # "auto" took the row-sparse step: its state has the row part, bit for bit the sparse run's.
    assert jax.tree.structure(auto.state) == jax.tree.structure(sparse.state)
    for x, y in zip(jax.tree.leaves(auto.params), jax.tree.leaves(sparse.params)):
        np.testing.assert_array_equal(x, y)
    assert_params_close(auto.params, dense.params, rtol=1e-4, atol=1e-5)  # SGD: the dense result
    # With weight decay the dense step also decays the tables: "auto" keeps it for these small tables.
    auto, dense = (train.fit(model, train_part, sparse=s, weight_decay=1e-3, **kwargs) for s in ("auto", False))
    assert jax.tree.structure(auto.state) == jax.tree.structure(dense.state)
    for x, y in zip(jax.tree.leaves(auto.params), jax.tree.leaves(dense.params)):
        np.testing.assert_array_equal(x, y)


def test_fits_that_differ_in_l2_share_their_compiled_epoch(small_data):
    _, train_part, _ = small_data
    model = models.build_model(train_part, "mf", dim=8, alpha=0.4, blocks=3)
    kwargs = dict(epochs=3, batch_size=256, progress=False, seed=3, sparse=True, refit=False)
    train.cached_epoch_fn.cache_clear()
    weak = train.fit(model, train_part, l2=0.01, **kwargs)
    strong = train.fit(model, train_part, l2=0.5, **kwargs)
    info = train.cached_epoch_fn.cache_info()
    assert (info.misses, info.hits) == (1, 1)  # one compiled epoch for both
    # l2 is applied, and as a run of its own would apply it: nothing carries over from the run before.
    penalty = [r.history[-1]["train_loss"] - r.history[-1]["train_mse"] for r in (weak, strong)]
    assert 0 < 5 * penalty[0] < penalty[1], penalty
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(weak.params), jax.tree.leaves(strong.params)))
    train.cached_epoch_fn.cache_clear()
    alone = train.fit(model, train_part, l2=0.5, **kwargs)
    for x, y in zip(jax.tree.leaves(alone.params), jax.tree.leaves(strong.params)):
        np.testing.assert_array_equal(x, y)
    train.fit(model, train_part, l2=0.0, **kwargs)  # no regularisation term: a step of its own
    assert train.cached_epoch_fn.cache_info().misses == 2


@pytest.mark.parametrize("sparse", [False, True])
def test_a_traced_l2_steps_as_a_constant_one(small_data, sparse):
    """fit passes l2 to its compiled epochs as an argument; make_train_step's users pass a number."""
    _, train_part, _ = small_data
    model = models.build_model(train_part, "mf", dim=8, alpha=0.4, blocks=3)
    opt = train.optimizer("adam", 1e-2, sparse=sparse)
    state = train.init_state(jax.random.key(0), model, opt)
    batch = jax.tree.map(lambda x: x[:256], model.encode(train_part))
    constant = jax.jit(train.make_train_step(model, opt, l2=0.3))(state, batch)
    traced = jax.jit(lambda s, b, l2: train.make_train_step(model, opt, l2=l2)(s, b))(state, batch, 0.3)
    for x, y in zip(jax.tree.leaves(constant), jax.tree.leaves(traced)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_resuming_is_exact(small_data, tmp_path):
    _, train_part, _ = small_data
    model = models.build_model(train_part, "neumf", dim=8, alpha=0.4, blocks=3, layers=(8, 4))
    kwargs = dict(batch_size=256, progress=False, seed=5, patience=None, sparse=True, refit=False)
    full = train.fit(model, train_part, epochs=6, **kwargs)
    path = tmp_path / "run.mdcf"
    train.fit(model, train_part, epochs=3, checkpoint=str(path), **kwargs)
    resumed = train.fit(model, train_part, epochs=6, checkpoint=str(path), **kwargs)
    assert [h["epoch"] for h in resumed.history] == list(range(1, 7))
    for x, y in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(x, y)


def test_refit_trains_again_on_all_of_train(small_data):
    _, train_part, _ = small_data
    model = models.build_model(train_part, "mf", dim=8)
    kwargs = dict(batch_size=256, progress=False, seed=2, learning_rate=1e-2)
    train.state.compiled_init.cache_clear()
    refit = train.fit(model, train_part, epochs=8, **kwargs)  # validation carved from train: refit by default
    assert "val_mse" in refit.history[0] and len(refit.refit_history) == refit.best_epoch
    info = train.state.compiled_init.cache_info()
    assert (info.misses, info.hits) == (1, 1)  # the refit reuses the first phase's compiled init
    assert all("val_mse" not in h for h in refit.refit_history)
    manual = train.fit(model, train_part, None, epochs=refit.best_epoch, **kwargs)
    for x, y in zip(jax.tree.leaves((refit.params, refit.state)), jax.tree.leaves((manual.params, manual.state))):
        np.testing.assert_array_equal(x, y)
    plain = train.fit(model, train_part, epochs=8, refit=False, **kwargs)
    assert plain.refit_history == [] and plain.best_epoch == refit.best_epoch
    assert not np.array_equal(plain.params["tables"]["user"][0], refit.params["tables"]["user"][0])
    fit_part, val = data.split(train_part, "random", 0.1, seed=1)
    explicit = train.fit(model, fit_part, val, epochs=3, **kwargs)  # an explicit validation set: no refit
    assert explicit.refit_history == []


def test_init_state_with_an_unhashable_optimizer():
    class Unhashable(optax.GradientTransformation):
        __hash__ = None

    config = ModelConfig("mf", USER, ITEM)
    adam = optax.adam(1e-3)
    plain = train.init_state(jax.random.key(3), config, adam)
    odd = train.init_state(jax.random.key(3), config, Unhashable(adam.init, adam.update))
    for x, y in zip(jax.tree.leaves(plain), jax.tree.leaves(odd)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("refit_epochs_before", [1, 7])  # a refit to resume; a longer one to replace
def test_refit_resumes_from_its_checkpoint_and_too_short_runs_are_refused(small_data, tmp_path, refit_epochs_before):
    _, train_part, _ = small_data
    model = models.build_model(train_part, "mf", dim=4)
    kwargs = dict(batch_size=512, progress=False, seed=1, patience=None)
    path = tmp_path / "run.mdcf"
    train.fit(model, train_part, None, epochs=refit_epochs_before, checkpoint=f"{path}.refit", **kwargs)
    fresh = train.fit(model, train_part, epochs=4, **kwargs)
    resumed = train.fit(model, train_part, epochs=4, checkpoint=str(path), **kwargs)
    assert len(resumed.refit_history) == fresh.best_epoch == resumed.best_epoch
    for x, y in zip(jax.tree.leaves((fresh.params, fresh.state)), jax.tree.leaves((resumed.params, resumed.state))):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="holds 4 epochs, more than epochs=2"):
        train.fit(model, train_part, epochs=2, checkpoint=str(path), **kwargs)


def test_early_stopping_restores_the_best_epoch(small_data):
    _, train_part, _ = small_data
    model = models.build_model(train_part, "mf", dim=16)
    result = train.fit(model, train_part, epochs=200, batch_size=64, learning_rate=3e-2, l2=0.0,
                       patience=2, progress=False)
    assert result.stopped_early and len(result.history) < 200
    val_mses = [h["val_mse"] for h in result.history]
    assert result.best_epoch == int(np.argmin(val_mses)) + 1
    assert len(result.history) == result.best_epoch + 2


def test_fit_leaves_initial_state_alone_and_keeps_the_best_params(small_data):
    """Epochs donate their input state: the caller's state and the best epoch's params must survive."""
    _, train_part, _ = small_data
    model = models.build_model(train_part, "mf", dim=8)
    kwargs = dict(batch_size=256, progress=False, seed=4, refit=False, learning_rate=3e-2, l2=0.0, patience=None)
    first = train.fit(model, train_part, epochs=3, restore_best=False, **kwargs)
    before = [np.array(x) for x in jax.tree.leaves(first.state)]
    resumed = train.fit(model, train_part, epochs=8, initial_state=first.state, start_epoch=3, **kwargs)
    for x, y in zip(jax.tree.leaves(first.state), before):
        assert not x.is_deleted()
        np.testing.assert_array_equal(x, y)
    full = train.fit(model, train_part, epochs=8, **kwargs)
    for x, y in zip(jax.tree.leaves((full.state, full.params)), jax.tree.leaves((resumed.state, resumed.params))):
        np.testing.assert_array_equal(x, y)
    assert 1 < full.best_epoch < 8  # overfits: the best epoch is neither the first nor the last
    short = train.fit(model, train_part, epochs=full.best_epoch, restore_best=False, **kwargs)
    for x, y in zip(jax.tree.leaves(full.params), jax.tree.leaves(short.params)):
        np.testing.assert_array_equal(x, y)


def test_callbacks_can_stop(small_data):
    _, train_part, _ = small_data
    model = models.build_model(train_part, "mf", dim=4)
    seen = []
    result = train.fit(model, train_part, epochs=10, progress=False,
                       callbacks=[lambda epoch, logs, state: seen.append(logs) or epoch == 2])
    assert len(result.history) == 2 and len(seen) == 2 and "val_rmse" in seen[0]


def test_divergence_names_epoch_and_step(small_data):
    _, train_part, _ = small_data
    model = models.build_model(train_part, "mf", dim=8)
    with pytest.raises(train.TrainingDivergedError, match=r"epoch 1, step \d+"):
        train.fit(model, train_part, epochs=3, batch_size=512, optimizer_name="sgd", learning_rate=1e4,
                  progress=False)


def test_predict_on_original_ids_with_fallback(small_data):
    ratings, train_part, _ = small_data
    model = models.build_model(train_part, "mf", dim=4)
    params = train.fit(model, train_part, epochs=2, progress=False).params
    users = ratings.user_ids[ratings.users[:5]]
    items = ratings.item_ids[ratings.items[:5]]
    known = train.predict(model, params, users, items)
    rows = model.encode(ratings.subset(np.arange(5)))
    direct = np.clip(np.asarray(models.apply(params, model.config, rows["users"], rows["items"])), 1, 5)
    np.testing.assert_allclose(known, direct, rtol=1e-6)
    with pytest.warns(UserWarning, match=r"2 of 3 pairs involve unknown users or items \(1 unknown users, 1 unknown items\)"):
        out = train.predict(model, params, np.array([users[0], 10_000, users[1]]), np.array([items[0], items[1], 99_999]))
    bias = float(params["dense"]["bias"])
    user_bias = np.asarray(params["tables"]["user_bias"])[model.user_rows[ratings.users[1]]]
    item_bias = np.asarray(params["tables"]["item_bias"])[model.item_rows[ratings.items[1]]]
    np.testing.assert_allclose(out[1], np.clip(bias + item_bias, 1, 5), rtol=1e-6)
    np.testing.assert_allclose(out[2], np.clip(bias + user_bias, 1, 5), rtol=1e-6)
    np.testing.assert_allclose(out[0], known[0], rtol=1e-6)


@pytest.mark.parametrize("argument, value", [
    ("epochs", 0), ("epochs", -1), ("epochs", 2.5), ("batch_size", 0), ("learning_rate", float("nan")),
    ("learning_rate", 0.0), ("l2", -0.1), ("l2", float("inf")), ("weight_decay", -1.0), ("patience", 0),
    ("start_epoch", -1), ("validation", 1.5), ("validation", 0), ("sparse", "yes"), ("seed", -1), ("seed", 1.5),
])
def test_fit_refuses_arguments_out_of_range(small_data, argument, value):
    _, train_part, _ = small_data
    model = models.build_model(train_part, "mf", dim=4)
    with pytest.raises(ValueError, match=rf"fit: {argument} must be .*, got {value!r}"):
        train.fit(model, train_part, progress=False, **{argument: value})


def test_fit_refuses_a_start_past_the_end_and_callbacks_that_cannot_be_called(small_data):
    # Both before any training: a start past the end would return the untrained state, and
    # a bad callback would fail only after the first epoch.
    _, train_part, _ = small_data
    model = models.build_model(train_part, "mf", dim=4)
    with pytest.raises(ValueError, match="start_epoch=5 is past epochs=2"):
        train.fit(model, train_part, epochs=2, start_epoch=5, progress=False)
    with pytest.raises(TypeError, match=r"callbacks must be callables .*got \[1\]"):
        train.fit(model, train_part, epochs=2, callbacks=[print, 1], progress=False)


def test_fit_refuses_empty_training_and_validation_sets(small_data):
    _, train_part, _ = small_data
    model = models.build_model(train_part, "mf", dim=4)
    empty = train_part.subset(np.zeros(len(train_part), bool))
    with pytest.raises(ValueError, match="fit: the training set is empty"):
        train.fit(model, empty, None, progress=False)
    with pytest.raises(ValueError, match="fit: the validation set is empty"):
        train.fit(model, train_part, empty, progress=False)


def test_optimizer_refuses_rates_out_of_range_and_takes_schedules():
    for rate in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="learning_rate must be a finite number > 0 or an optax schedule"):
            train.optimizer("adam", rate)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        train.optimizer("adam", 1e-3, weight_decay=-0.1)
    schedule = optax.linear_schedule(1e-2, 1e-3, 10)
    assert train.optimizer("adam", schedule, sparse=False).rows is None


def test_params_of_another_model_are_refused(small_data):
    ratings, train_part, test = small_data
    model = models.build_model(train_part, "mf", dim=4, alpha=0.3, blocks=3)
    params = models.init(jax.random.key(0), model.config)
    fewer_users = ratings.subset(np.flatnonzero(ratings.users < 150))  # same structure, smaller tables
    other = models.build_model(fewer_users, "mf", dim=4, alpha=0.3, blocks=3)
    other_params = models.init(jax.random.key(0), other.config)
    with pytest.raises(ValueError, match=r"evaluate: params\[.*\] has shape \(\d+(, \d+)?\), the model needs"):
        train.evaluate(model, other_params, test)
    with pytest.raises(ValueError, match=r"predict: params .*another model"):
        train.predict(model, models.init(jax.random.key(0), models.build_model(train_part, "neumf", dim=4).config),
                      ratings.user_ids[:2], ratings.item_ids[:2])
    state = train.init_state(jax.random.key(0), other, train.optimizer("sgd", 0.1))
    with pytest.raises(ValueError, match=r"fit: initial_state.params"):
        train.fit(model, train_part, epochs=1, initial_state=state, progress=False)
    # The model's own parameters pass, and so do tables padded with extra rows (row sharding).
    assert np.isfinite(train.evaluate(model, params, test)["mse"])
    padded = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.concatenate([x, jnp.zeros((3,) + x.shape[1:], x.dtype)])
        if getattr(path[0], "key", None) == "tables" else x, params)
    models.check_params(model.config, padded)


def test_evaluate_against_numpy(small_data):
    ratings, train_part, test = small_data
    model = models.build_model(train_part, "mf", dim=4)
    params = train.fit(model, train_part, epochs=1, progress=False).params
    got = train.evaluate(model, params, test)
    rows = model.encode(test)
    pred = np.clip(np.asarray(models.apply(params, model.config, rows["users"], rows["items"])), 1, 5)
    err = pred - test.ratings
    assert got["mse"] == pytest.approx(np.mean(err**2), rel=1e-5)
    assert got["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-5)
    n = model.config.item.n_rows
    popular = rows["items"] < n / 3
    rare = rows["items"] >= n - n / 3
    assert got["mse_popular"] == pytest.approx(np.mean(err[popular] ** 2), rel=1e-5)
    assert got["mse_rare"] == pytest.approx(np.mean(err[rare] ** 2), rel=1e-5)
    counts = train_part.item_counts()[np.argsort(model.item_rows)]
    assert counts[: n // 3].min() >= counts[n - n // 3:].max()  # thirds follow training popularity


def test_checkpoint_round_trip_and_errors(small_data, tmp_path):
    _, train_part, _ = small_data
    model = models.build_model(train_part, "mf", dim=8, alpha=0.4, blocks=3)
    opt = train.optimizer("adam", 1e-2, sparse=True)
    state = train.init_state(jax.random.key(0), model, opt)
    path = tmp_path / "ckpt.mdcf"
    checkpoint.save(path, model, state, meta={"note": "x"})
    loaded = checkpoint.load(path, opt=opt)
    assert loaded.model.config == model.config and loaded.meta == {"note": "x"}
    np.testing.assert_array_equal(loaded.model.user_rows, model.user_rows)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(loaded.state)):
        np.testing.assert_array_equal(x, y)
    assert checkpoint.load(path).state is None  # parameters only without an optimiser
    with pytest.raises(checkpoint.CheckpointMismatchError, match="row-sparse"):
        checkpoint.load(path, opt=train.optimizer("adam", 1e-2, sparse=False))
    with pytest.raises(checkpoint.CheckpointMismatchError):
        checkpoint.load(path, opt=train.optimizer("sgd", 1e-2, sparse=True))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(io.CorruptFileError, match="truncated"):
        checkpoint.load(path)
    other = tmp_path / "arrays.mdcf"
    io.write_arrays(other, {"x": np.zeros(2)})
    with pytest.raises(io.CorruptFileError, match="not an mdcf checkpoint"):
        checkpoint.load(other)
    wrong = models.init(jax.random.key(0), models.build_model(train_part, "neumf", dim=8).config)
    for kwargs in ({"state_or_params": wrong}, {"state_or_params": state.params, "best_params": wrong}):
        with pytest.raises(ValueError, match=r"save .*wrong\.mdcf: (best_)?params do not match the mf model"):
            checkpoint.save(tmp_path / "wrong.mdcf", model, **kwargs)
    assert not (tmp_path / "wrong.mdcf").exists()


def test_ml100k_accuracy_with_defaults(ml100k_dir):
    ratings = data.load_movielens("ml-100k", data_dir=ml100k_dir, verbose=False)
    train_part, test = data.split(ratings, "random", 0.1, seed=0)
    model = models.build_model(train_part, "mf")
    result = train.fit(model, train_part, progress=False)  # validation carved from train
    rmse = train.evaluate(model, result.params, test)["rmse"]
    assert rmse <= 0.905, rmse


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.integers(0, 12), min_size=1, max_size=30), big=st.booleans(), seed=st.integers(0, 100))
def test_combine_duplicates_matches_numpy(rows, big, seed):
    n_rows = 2**28 if big else 11  # the large bound takes the sort + binary-search path
    rows = np.array(rows, np.int32)
    grads = np.random.default_rng(seed).standard_normal((len(rows), 3)).astype(np.float32)

    def combine(rows, grads, n_rows):
        unique, summing = row_updates.duplicates(rows, n_rows)
        return unique, summing(grads)

    unique, summed = jax.jit(combine, static_argnums=2)(rows, grads, n_rows)
    unique, summed = np.asarray(unique), np.asarray(summed)
    assert len(set(unique.tolist())) == len(unique)  # distinct, so scatters never collide
    got = {int(u): summed[j] for j, u in enumerate(unique) if u < n_rows}
    want = {}
    for r, g in zip(rows.tolist(), grads):
        if r < n_rows:
            want[r] = want.get(r, 0) + g
    assert set(got) == set(want)
    for r in want:
        np.testing.assert_allclose(got[r], want[r], rtol=1e-5, atol=1e-6)


def test_rowwise_adagrad_step_matches_numpy():
    config = ModelConfig("mf", MDSpec.uniform(6, 3), MDSpec.uniform(5, 3), biases=False)
    opt = train.optimizer("rowwise_adagrad", 0.5, sparse=True)
    state = train.init_state(jax.random.key(0), config, opt, 3.0)
    batch = {"users": np.array([1, 1, 4], np.int32), "items": np.array([0, 2, 2], np.int32),
             "ratings": np.array([5.0, 1.0, 4.0], np.float32)}
    new, _ = jax.jit(train.make_train_step(config, opt))(state, batch)
    users = np.asarray(state.params["tables"]["user"][0], np.float64)
    items = np.asarray(state.params["tables"]["item"][0], np.float64)
    err = 3.0 + np.sum(users[batch["users"]] * items[batch["items"]], 1) - batch["ratings"]
    grad = np.zeros_like(users)
    for j, (u, i) in enumerate(zip(batch["users"], batch["items"])):
        grad[u] += 2 * err[j] * items[i] / 3
    acc = 0.1 + np.mean(grad**2, axis=1)
    want = users - 0.5 * grad / np.sqrt(acc + 1e-7)[:, None]
    touched = [1, 4]
    np.testing.assert_allclose(np.asarray(new.params["tables"]["user"][0])[touched], want[touched], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(new.params["tables"]["user"][0])[[0, 2]], users[[0, 2]].astype(np.float32))
    with pytest.raises(ValueError, match="row-sparse updates only"):
        train.optimizer("rowwise_adagrad", 0.1, sparse=False)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 300), batch=st.integers(1, 64), seed=st.integers(0, 5), epoch=st.integers(0, 3))
def test_epoch_order_sorts_within_batches_of_the_seeded_shuffle(n, batch, seed, epoch):
    order = train.epoch_order(seed, epoch, n, batch)
    n_batches = -(-n // batch)
    assert order.shape == (n_batches, batch) and order.dtype == np.int32
    shuffle = np.zeros(n_batches * batch, np.int64)
    shuffle[:n] = np.random.default_rng([seed, epoch]).permutation(n)
    flat = order.reshape(-1)
    for j in range(n_batches):  # the same ratings share a batch as in the plain shuffle
        real = min(batch, n - j * batch)
        np.testing.assert_array_equal(order[j, :real], np.sort(shuffle[j * batch:j * batch + real]))
    np.testing.assert_array_equal(np.sort(flat[:n]), np.arange(n))  # every rating once, padding last
    assert not flat[n:].any()


def test_packed_training_arrays_read_back_exactly():
    rng = np.random.default_rng(0)
    n = 40
    ratings = rng.normal(size=n).astype(np.float32)
    ratings[:4] = [-0.0, 1e-38, np.float32(3.4e38), 0.5]  # signed zero, tiny and huge values keep their bits
    encoded = {"users": rng.integers(0, 2**31 - 1, n), "items": rng.integers(0, 1000, n).astype(np.int32),
               "ratings": ratings}
    packed = train.pack(encoded)
    assert packed.array.shape == (n, 3) and packed.array.dtype == jnp.int32  # 12 bytes per rating
    index = rng.permutation(n)[:25].astype(np.int32)
    back = jax.jit(train.unpack)(packed, jnp.asarray(index))
    users, items, read = back["users"], back["items"], back["ratings"]
    np.testing.assert_array_equal(np.asarray(users), encoded["users"][index])
    np.testing.assert_array_equal(np.asarray(items), encoded["items"][index])
    assert read.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(read).view(np.int32), ratings[index].view(np.int32))


@pytest.mark.parametrize("side, rows", [("users", [0, 2**31]), ("items", [-1, 3])])
def test_pack_refuses_rows_outside_int32(side, rows):
    encoded = {"users": np.array([0, 1]), "items": np.array([0, 1]), "ratings": np.array([1.0, 2.0])}
    encoded[side] = np.array(rows, np.int64)
    with pytest.raises(ValueError, match=rf"pack: {side} must lie in \[0, 2\*\*31\)"):
        train.pack(encoded)


def test_training_arrays_are_ordered_by_user():
    rng = np.random.default_rng(0)
    encoded = {"users": rng.integers(0, 9, 50).astype(np.int32), "items": rng.integers(0, 7, 50).astype(np.int32),
               "ratings": rng.random(50).astype(np.float32)}
    ordered = train.by_user(encoded)
    assert np.all(np.diff(ordered["users"]) >= 0)
    key = lambda d: sorted(zip(d["users"].tolist(), d["items"].tolist(), d["ratings"].tolist()))  # noqa: E731
    assert key(ordered) == key(encoded)
