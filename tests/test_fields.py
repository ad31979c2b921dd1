"""Per-field embeddings (``FieldsSpec``): lookups against a naive reference, counts and
budget builders by hand, and DLRM training row-sparse as dense."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_params_close as close
from conftest import click_batch, dense_and_sparse_steps

from mdcf import checkpoint, embeddings, models, train
from mdcf.embeddings import FieldsSpec, HashSpec, MDSpec, QRSpec, fields, tt
from mdcf.models import dlrm

FIELDS = (300, 11, 90, 3, 70)


def mixed_spec(dim=4):
    """Every kind of part: signed hashing, MD with two blocks, tensor-train, QR, and a plain
    table (with more rows than some batches, fewer than others)."""
    return FieldsSpec((HashSpec(FIELDS[0], 40, dim, seed=1, signed=True), MDSpec((5, 6), (dim, 2), dim),
                       tt.tt_spec(FIELDS[2], dim, (2, 2)), QRSpec(FIELDS[3], 2, dim, "mult"),
                       MDSpec.uniform(FIELDS[4], dim)))


def naive(params, spec, ids):
    """Each stacked id read from its field's whole table, as its part alone computes it."""
    layers = [embeddings.join(part, t, d) for part, t, d in zip(spec.parts, *params)]
    tables = [np.asarray(embeddings.lookup(layer, part, jnp.arange(part.n_rows)))
              for layer, part in zip(layers, spec.parts)]
    flat = np.asarray(ids).reshape(-1)
    field = np.searchsorted(spec.offsets, flat, side="right") - 1
    out = np.stack([tables[f][i - spec.offsets[f]] for f, i in zip(field, flat)])
    return out.reshape(*np.shape(ids), spec.base_dim)


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_lookups_match_each_part_alone(seed):
    spec = mixed_spec()
    params = embeddings.init(jax.random.key(seed % 1000), spec)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, spec.n_rows, (7, 3))
    np.testing.assert_allclose(np.asarray(embeddings.lookup(params, spec, jnp.asarray(ids))), naive(params, spec, ids),
                               rtol=1e-6, atol=1e-7)
    columns = np.stack([rng.integers(0, n, 6) for n in FIELDS], axis=1) + spec.offsets
    np.testing.assert_allclose(np.asarray(fields.lookup_columns(params, spec, jnp.asarray(columns))),
                               naive(params, spec, columns), rtol=1e-6, atol=1e-7)


def test_ids_outside_give_nan_and_the_two_lookups_share_gradients():
    spec = mixed_spec()
    params = embeddings.init(jax.random.key(0), spec)
    out = embeddings.lookup(params, spec, jnp.array([-1, spec.n_rows, 0]))
    assert np.isnan(np.asarray(out[:2])).all() and np.isfinite(np.asarray(out[2])).all()
    misplaced = jnp.asarray([[0, 0, 311, 401, 404]])  # field 0's row in field 1's column
    cols = fields.lookup_columns(params, spec, misplaced)
    assert np.isnan(np.asarray(cols[0, 1])).all() and np.isfinite(np.asarray(cols[0, [0, 2, 3, 4]])).all()
    ids = jnp.asarray(np.stack([np.arange(5) * 7 % n for n in FIELDS], axis=1) + spec.offsets)
    weights = jax.random.normal(jax.random.key(1), (5, 5, 4))
    by_columns = jax.grad(lambda p: jnp.sum(fields.lookup_columns(p, spec, ids) * weights))(params)
    by_any = jax.grad(lambda p: jnp.sum(embeddings.lookup(p, spec, ids) * weights))(params)
    for a, b in zip(jax.tree.leaves(by_columns), jax.tree.leaves(by_any), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert any(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(by_columns))


def test_counts_and_round_trip_by_hand():
    spec = mixed_spec()
    # hash 40*4; MD 5*4 + 6*2 + a 2x4 projection; TT 90 rows -> factors (5, 5, 4), dim (1, 2, 2),
    # ranks (2, 2): 5*1*2 + 5*2*2*2 + 4*2*2; QR 3 rows, m=2: (2 + 2) * 4; plain 70 * 4.
    assert tt.factor_rows(90) == (5, 5, 4) and tt.factor_dim(4) == (1, 2, 2)
    assert embeddings.num_params(spec) == 160 + (20 + 12 + 8) + (10 + 40 + 16) + 16 + 280
    assert embeddings.nbytes(spec) == 4 * embeddings.num_params(spec)
    assert spec.sizes == FIELDS and spec.n_rows == sum(FIELDS) and list(spec.offsets) == [0, 300, 311, 401, 404]
    assert embeddings.spec_from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="same base_dim"):
        FieldsSpec((MDSpec.uniform(3, 4), MDSpec.uniform(3, 8)))
    with pytest.raises(ValueError, match="one spec per field"):
        FieldsSpec(())
    with pytest.raises(TypeError, match="itself a FieldsSpec"):
        FieldsSpec((spec,))


def test_builders_fill_their_budget_and_keep_small_fields_plain():
    rows = (20_000, 3_000, 40, 3)
    # hashing: buckets a common share of every field; a field whose share reaches its rows is plain
    spec = fields.hashed(rows, 40_000, 8)
    total = embeddings.num_params(spec)
    assert 40_000 - len(rows) * 8 <= total <= 40_000
    buckets = [p.n_buckets for p in spec.parts]
    # one share s with b_f = ceil(n_f * s) for every field: (b_f - 1) / n_f < s <= b_f / n_f
    assert max((b - 1) / n for b, n in zip(buckets, rows)) < min(b / n for b, n in zip(buckets, rows))
    assert 0.2 < buckets[0] / rows[0] < 0.23
    assert [p.seed for p in spec.parts] == [0, 1, 2, 3]
    big = fields.hashed(rows, 8 * sum(rows), 8)  # the whole table's budget: every field plain
    assert all(isinstance(p, MDSpec) for p in big.parts) and embeddings.num_params(big) == 8 * sum(rows)
    with pytest.raises(ValueError, match="below one bucket per field"):
        fields.hashed(rows, 31, 8)
    # QR: m collisions where ceil(n/m) + m rows are fewer than n; m = 1 is plain tables
    qr = fields.quotient_remainder(rows, 8, 50)
    assert [type(p).__name__ for p in qr.parts] == ["QRSpec", "QRSpec", "MDSpec", "MDSpec"]
    assert embeddings.num_params(qr) == 8 * ((400 + 50) + (60 + 50) + 40 + 3)
    assert all(isinstance(p, MDSpec) for p in fields.quotient_remainder(rows, 8, 1).parts)
    # TT: the largest common rank that fits; one more does not
    spec = fields.tensor_train(rows, 30_000, 8)
    ranks = {p.ranks for p in spec.parts if isinstance(p, tt.TTSpec)}
    assert len(ranks) == 1 and embeddings.num_params(spec) <= 30_000
    (r, _), = ranks
    assert embeddings.num_params(fields.tensor_train(rows, embeddings.num_params(spec), 8)) == \
        embeddings.num_params(spec)
    more = sum(embeddings.num_params(tt.tt_spec(n, 8, (r + 1, r + 1))) if isinstance(p, tt.TTSpec) else
               embeddings.num_params(p) for n, p in zip(rows, spec.parts))
    assert more > 30_000
    assert isinstance(spec.parts[-1], MDSpec)  # 3 rows: cores cannot save
    # per-field low rank: MD with one block per field at one rank
    low = fields.low_rank_fields(rows, 50_000, 8)
    assert low.sizes == rows and len(set(low.dims)) == 1
    rank = low.dims[0]
    assert embeddings.num_params(low) == sum(rows) * rank + len(rows) * rank * 8 <= 50_000
    assert sum(rows) * (rank + 1) + len(rows) * (rank + 1) * 8 > 50_000
    assert fields.low_rank_fields(rows, 8 * sum(rows), 8) == MDSpec.uniform(sum(rows), 8)


def dlrm_on(spec):
    return dlrm.DLRMConfig(spec, FIELDS, n_dense=13, bottom=(8,), top=(8,))


def random_batch(config, n=48, seed=0, padding=0):
    return click_batch(config, n, seed, padding, repeat=True)


def test_dense_step_is_gradient_descent_through_the_naive_lookup():
    config = dlrm_on(mixed_spec())
    assert config.column_sides == ("rows",)
    batch = random_batch(config, padding=5)
    opt = optax.sgd(0.5)
    state = train.init_state(jax.random.key(1), config, opt)
    new, metrics_ = jax.jit(train.make_train_step(config, opt))(state, batch)
    live = slice(0, -5)

    def reference(params):  # every vector through the general lookup (each part on every id)
        layer = models.layer_params(params, "fields", config.table)
        vectors = embeddings.lookup(layer, config.table, jnp.asarray(batch["rows"][live]))
        logits = dlrm.forward(params["dense"], config, {"fields": vectors}, {}, {"dense": batch["dense"][live]})
        return dlrm.bce_loss(logits, batch["labels"][live])

    loss, grads = jax.value_and_grad(reference)(state.params)
    np.testing.assert_allclose(float(metrics_["logloss"]), float(loss), rtol=1e-6)
    close(new.params, jax.tree.map(lambda p, g: p - 0.5 * g, state.params, grads), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("optimizer, columns", [("sgd", True), ("sgd", False), ("amsgrad", True)])
def test_row_sparse_training_equals_dense(monkeypatch, optimizer, columns):
    """Each part trains its rows as its scheme does (column plans, or every part planning
    every id), and the result is the dense step's."""
    config = dlrm_on(mixed_spec())
    if not columns:
        monkeypatch.setattr(dlrm.DLRMConfig, "column_sides", property(lambda self: ()))
    (a, ma), (b, mb) = dense_and_sparse_steps(config, random_batch(config, seed=3, padding=4), optimizer, 0.05)
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-5)
    # The same batch each step: rows it misses never have a gradient, and dense Amsgrad leaves them too.
    close(a.params, b.params, rtol=2e-4, atol=1e-6)


def test_xavier_init_gives_each_field_its_tables_spread(tmp_path):
    rows = (20_000, 3_000, 40)
    spec = FieldsSpec((fields.hashed(rows, 16_000, 8).parts[0], QRSpec(3_000, 30, 8), MDSpec.uniform(40, 8)))
    config = dlrm.DLRMConfig(spec, rows, n_dense=13, bottom=(8,), top=(8,))
    params = dlrm.init(jax.random.key(0), config)
    layer = models.layer_params(params, "fields", spec)
    for f, n in enumerate(rows[:2]):  # hashed and QR rows: N(0, 2 / (n + d)), Xavier-uniform's variance
        values = fields.lookup_columns(layer, spec, jnp.asarray(
            np.stack([np.arange(2_000) % m for m in rows], axis=1) + spec.offsets))[:, f]
        assert abs(float(jnp.std(values)) - math.sqrt(2 / (n + 8))) < 0.15 * math.sqrt(2 / (n + 8))
    plain = params["tables"]["fields"][2][0]
    limit = math.sqrt(6 / (40 + 8))
    assert float(jnp.max(jnp.abs(plain))) <= limit and float(jnp.max(jnp.abs(plain))) > 0.8 * limit
    assert np.all(np.asarray(params["tables"]["fields"][1][1]) == 1)  # QR's mult remainder starts at ones
    checkpoint.save(tmp_path / "fields.mdcf", config, params)
    loaded = checkpoint.load(tmp_path / "fields.mdcf")
    assert loaded.model == config
    close(loaded.params, params, rtol=0, atol=0)
